//! Shards: one folder run split over the processes of a cluster array job.

use crate::error::{Error, Result};

/// A deterministic slice of a folder run, for N processes (cluster array jobs) that together
/// cover a folder exactly once: image `name` belongs to shard `index` of `count` when a hash of
/// its relative path is `index` modulo `count`. The hash (SHA-256) is the same on every machine
/// and in every run, so resuming a shard finds its own images again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based.
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub fn new(index: u32, count: u32) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(Error::InvalidInput(format!(
                "shard {index}/{count}: expected K/N with N >= 1 and 0 <= K < N"
            )));
        }
        Ok(Self { index, count })
    }

    pub fn contains(&self, name: &str) -> bool {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(name.as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(head) % u64::from(self.count) == u64::from(self.index)
    }

    /// The shard a cluster scheduler gave this process, from its environment (`var` looks a
    /// variable up): a Slurm job array (`SLURM_ARRAY_TASK_ID`, `..._COUNT`, and `..._MIN`,
    /// `..._STEP` for arrays that do not start at 0 or step by more than 1), or a Kubernetes
    /// Indexed Job (`JOB_COMPLETION_INDEX`; Kubernetes does not expose the number of
    /// completions, so it comes from `count`, else `PIPNET_SHARD_COUNT`). `count`, else
    /// `PIPNET_SHARD_COUNT`, also overrides Slurm's count. `None` outside both.
    pub fn from_scheduler(
        var: impl Fn(&str) -> Option<String>,
        count: Option<u32>,
    ) -> Result<Option<Self>> {
        let number = |key: &str| -> Result<Option<u32>> {
            var(key)
                .map(|v| {
                    v.trim().parse::<u32>().map_err(|_| {
                        Error::InvalidInput(format!("{key}={v:?} is not a whole number"))
                    })
                })
                .transpose()
        };
        let count = match count {
            Some(n) => Some(n),
            None => number("PIPNET_SHARD_COUNT")?,
        };
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let tasks = match count {
                Some(n) => n,
                None => number("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                    Error::InvalidInput(
                        "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: \
                         give the number of shards with --shard-count"
                            .into(),
                    )
                })?,
            };
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let index = id.checked_sub(min).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
                ))
            })? / step;
            return Self::new(index, tasks).map(Some);
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = count.ok_or_else(|| {
                Error::InvalidInput(
                    "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but the number of \
                     shards is not: pass --shard-count N or set PIPNET_SHARD_COUNT to the \
                     Job's completions"
                        .into(),
                )
            })?;
            return Self::new(index, count).map(Some);
        }
        Ok(None)
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidInput(format!("shard {s:?}: expected K/N, e.g. 0/4"));
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        Self::new(
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        )
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_name_exactly_once() {
        let names: Vec<String> = (0..500).map(|i| format!("dir/{i}.jpg")).collect();
        let shards: Vec<Shard> = (0..4).map(|k| Shard::new(k, 4).unwrap()).collect();
        let mut sizes = [0usize; 4];
        for name in &names {
            let owners: Vec<usize> = (0..4).filter(|&k| shards[k].contains(name)).collect();
            assert_eq!(owners.len(), 1, "{name} is in shards {owners:?}");
            sizes[owners[0]] += 1;
        }
        // A hash split, not a round robin: roughly even, never empty at this size.
        assert!(sizes.iter().all(|&n| (80..=170).contains(&n)), "{sizes:?}");
        assert!(Shard::new(0, 1).unwrap().contains("anything"));
    }

    #[test]
    fn shard_text_is_checked() {
        assert_eq!(
            "2/5".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 5 }
        );
        for bad in ["5/5", "1/0", "1", "a/3", "-1/3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad:?} accepted");
        }
    }

    fn env<'a>(pairs: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn schedulers_name_the_shard() {
        let shard = |pairs: &[(&str, &str)], count| Shard::from_scheduler(env(pairs), count);
        assert_eq!(shard(&[], None).unwrap(), None);
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ];
        assert_eq!(
            shard(&slurm, None).unwrap(),
            Some(Shard { index: 3, count: 8 })
        );
        // `--array=1-8` counts from 1; `--array=0-14:2` steps by 2.
        let from_one = [
            ("SLURM_ARRAY_TASK_ID", "8"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ];
        assert_eq!(
            shard(&from_one, None).unwrap(),
            Some(Shard { index: 7, count: 8 })
        );
        let stepped = [
            ("SLURM_ARRAY_TASK_ID", "14"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
        ];
        assert_eq!(
            shard(&stepped, None).unwrap(),
            Some(Shard { index: 7, count: 8 })
        );
        let k8s = [("JOB_COMPLETION_INDEX", "2")];
        assert_eq!(
            shard(&k8s, Some(3)).unwrap(),
            Some(Shard { index: 2, count: 3 })
        );
        let with_count = [("JOB_COMPLETION_INDEX", "2"), ("PIPNET_SHARD_COUNT", "5")];
        assert_eq!(
            shard(&with_count, None).unwrap(),
            Some(Shard { index: 2, count: 5 })
        );
        let bad_count = [("JOB_COMPLETION_INDEX", "0"), ("PIPNET_SHARD_COUNT", "x")];
        assert!(shard(&bad_count, None).is_err());
        let err = shard(&k8s, None).unwrap_err().to_string();
        assert!(err.contains("PIPNET_SHARD_COUNT"), "{err}");
        assert!(shard(&k8s, Some(2)).is_err(), "index 2 of 2 shards");
        assert!(shard(&[("SLURM_ARRAY_TASK_ID", "x")], Some(2)).is_err());
    }
}
