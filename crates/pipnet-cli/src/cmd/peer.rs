//! `pipnet bench --peer dlib`: our whole pipeline and dlib's on the same photos in one run,
//! with the same number of threads, and optionally both scored on the same labeled faces, each
//! with its own face detector. dlib runs in Python (`python-export`'s `peer_dlib`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{Context, anyhow, bail};
use pipnet_core::Scheme;
use pipnet_core::metrics::{Summary, nme};
use pipnet_infer::bench::{MachineLoad, Throughput, bench_photos};
use pipnet_infer::eval::{EvalCrops, evaluate, landmark_box, pipeline_detector_crops};
use pipnet_infer::image_io::DEFAULT_MAX_PIXELS;
use pipnet_infer::labeled::{LabeledFace, read_labeled, split_validation};
use pipnet_infer::{Pipeline, PipelineOptions};
use serde_json::{Value, json};

use super::python_reference::export_package;

/// Accuracy of one pipeline on labeled faces with its own detector.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scored {
    /// Faces its detector found (IoU > 0.3 with the true landmark box), of all faces.
    pub found: usize,
    pub faces: usize,
    /// Over the faces it found.
    pub nme: f32,
    pub failure_rate: f32,
    /// NME over the faces both pipelines' detectors found, the like-for-like figure.
    pub nme_on_common: f32,
    pub common: usize,
}

/// Scores both pipelines from their per-face NMEs (None: that detector missed the face).
fn score_both(ours: &[Option<f32>], theirs: &[Option<f32>]) -> (Scored, Scored) {
    let common: Vec<(f32, f32)> = ours
        .iter()
        .zip(theirs)
        .filter_map(|(a, b)| Some(((*a)?, (*b)?)))
        .collect();
    let score = |nmes: &[Option<f32>], on_common: Vec<f32>| {
        let found: Vec<f32> = nmes.iter().flatten().copied().collect();
        let summary = Summary::new(&found, 0.1);
        Scored {
            found: found.len(),
            faces: nmes.len(),
            nme: summary.nme,
            failure_rate: summary.failure_rate,
            nme_on_common: Summary::new(&on_common, 0.1).nme,
            common: on_common.len(),
        }
    };
    (
        score(ours, common.iter().map(|c| c.0).collect()),
        score(theirs, common.iter().map(|c| c.1).collect()),
    )
}

/// What the comparison measured; serialised as `pipnet bench --json`'s `peer` object.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerReport {
    pub peer: String,
    pub threads: usize,
    /// Which of our faces got a second landmark pass: `off`, `auto` or `always`.
    pub second_pass: String,
    /// Whether each crop was also run mirrored and averaged (`--flip`).
    pub flip: bool,
    pub ours: Throughput,
    pub dlib: Throughput,
    /// The median over rounds of ours / dlib's photos/s, each of our rounds paired with the
    /// dlib round run right after it.
    pub photos_per_s_over_dlib: f64,
    /// The lowest and highest of those rounds' ratios.
    pub photos_per_s_over_dlib_range: [f64; 2],
    pub faces_per_s_over_dlib: f64,
    /// How loaded the machine was around the timed rounds.
    pub load: Option<MachineLoad>,
    pub ours_labeled: Option<Scored>,
    pub dlib_labeled: Option<Scored>,
}

/// The labeled faces of `data` (the `split` validation side only, when given).
fn labeled_faces(data: &Path, split: Option<(f64, u64)>) -> anyhow::Result<Vec<LabeledFace>> {
    let faces = read_labeled(data, None)?;
    Ok(match split {
        Some((fraction, seed)) => split_validation(faces, fraction, seed).1,
        None => faces,
    })
}

/// How the comparison runs.
pub struct PeerRun {
    /// Threads for each pipeline.
    pub threads: usize,
    /// Measured rounds over the photos.
    pub repeat: usize,
    /// Ours, as `annotate` would run with them.
    pub options: PipelineOptions,
    /// Labeled faces to score both on: their folder, and the validation split to keep.
    pub labeled: Option<(PathBuf, Option<(f64, u64)>)>,
    /// The Python that runs dlib.
    pub python: PathBuf,
}

/// Runs the comparison. `pipeline` must have its detector.
pub fn compare_with_dlib(
    run: &PeerRun,
    pipeline: &mut Pipeline,
    images: &[PathBuf],
) -> anyhow::Result<PeerReport> {
    let labeled = match &run.labeled {
        Some((data, split)) => labeled_faces(data, *split)?,
        None => Vec::new(),
    };
    pipeline.set_options(run.options)?;
    let mut peer = DlibProcess::start(run, images, &labeled)?;
    let (ours, load) = MachineLoad::around(|| {
        bench_photos(pipeline, images, run.repeat, || peer.round())
            .context("timing our pipeline against dlib")
    });
    let ours = ours?;
    let answer = peer.finish()?;
    let dlib: Throughput = serde_json::from_value(answer["timing"].clone())
        .context("reading dlib's timing from peer_dlib")?;
    // Same photos each round: the photos/s ratio is dlib's seconds over ours.
    let mut ratios: Vec<f64> = dlib
        .rounds
        .iter()
        .zip(&ours.rounds)
        .map(|(theirs, ours)| theirs / ours)
        .collect();
    ratios.sort_by(f64::total_cmp);
    let (Some(&low), Some(&high)) = (ratios.first(), ratios.last()) else {
        bail!("peer_dlib timed no round");
    };
    let photos_ratio = ratios[ratios.len() / 2];
    let (ours_labeled, dlib_labeled) = if labeled.is_empty() {
        (None, None)
    } else {
        let points: Vec<Option<Vec<[f32; 2]>>> = serde_json::from_value(answer["labeled"].clone())
            .context("reading dlib's landmarks from peer_dlib")?;
        let (ours, theirs) = score_both(
            &nmes_of_ours(pipeline, &labeled)?,
            &nmes_of_points(&labeled, &points)?,
        );
        (Some(ours), Some(theirs))
    };
    Ok(PeerReport {
        peer: "dlib".into(),
        threads: run.threads,
        second_pass: pipeline.options().second_pass.to_string(),
        flip: pipeline.options().flip,
        photos_per_s_over_dlib: photos_ratio,
        photos_per_s_over_dlib_range: [low, high],
        faces_per_s_over_dlib: photos_ratio * ours.faces as f64 / dlib.faces.max(1) as f64,
        load,
        ours,
        dlib,
        ours_labeled,
        dlib_labeled,
    })
}

/// Our detector, then landmarks (refined with `--refine`): each labeled face's NME, None
/// where the detector missed it.
fn nmes_of_ours(
    pipeline: &mut Pipeline,
    faces: &[LabeledFace],
) -> anyhow::Result<Vec<Option<f32>>> {
    let detected = pipeline_detector_crops(pipeline, faces, DEFAULT_MAX_PIXELS)?;
    let crops = EvalCrops::Given(&detected.located);
    let (results, _) = evaluate(pipeline, &detected.found, crops, 0.1, DEFAULT_MAX_PIXELS)?;
    let mut nmes = vec![None; faces.len()];
    for (&i, r) in detected.index.iter().zip(results) {
        nmes[i] = Some(r.nme);
    }
    Ok(nmes)
}

/// NME of dlib's points against the truth, None where its detector missed the face.
fn nmes_of_points(
    faces: &[LabeledFace],
    points: &[Option<Vec<[f32; 2]>>],
) -> anyhow::Result<Vec<Option<f32>>> {
    if points.len() != faces.len() {
        bail!(
            "peer_dlib answered for {} faces, asked for {}",
            points.len(),
            faces.len()
        );
    }
    faces
        .iter()
        .zip(points)
        .map(|(face, p)| {
            p.as_ref()
                .map(|p| nme(p, &face.points, Scheme::W300_68))
                .transpose()
        })
        .collect::<Result<_, _>>()
        .context("scoring dlib's landmarks")
}

/// dlib's pipeline in its own Python process (`python -m pipnet_export.peer_dlib`), warmed up
/// once and then timed a round at a time, so its rounds can be interleaved with ours.
struct DlibProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The request file and the process's stderr.
    dir: tempfile::TempDir,
    python: PathBuf,
}

impl DlibProcess {
    /// Starts the process and waits until it has loaded dlib and warmed up.
    fn start(run: &PeerRun, images: &[PathBuf], labeled: &[LabeledFace]) -> anyhow::Result<Self> {
        let package = export_package()
            .context("python-export/src not found: run `pipnet bench --peer` from the checkout")?;
        let cache = pipnet_infer::runtime::cache_dir()
            .context("no cache folder: set PIPNET_CACHE_DIR")?
            .join("dlib");
        let faces: Vec<Value> = labeled
            .iter()
            .map(|f| {
                let b = landmark_box(f)?;
                Ok(json!({"image": f.image, "box": [b.x0, b.y0, b.x1, b.y1]}))
            })
            .collect::<anyhow::Result<_>>()?;
        let dir = tempfile::tempdir()?;
        let request = dir.path().join("request.json");
        let body = json!({"images": images, "threads": run.threads, "faces": faces});
        std::fs::write(&request, body.to_string())?;
        // A file, not a pipe: a chatty stderr cannot fill a pipe nobody reads and stall it.
        let stderr = std::fs::File::create(dir.path().join("stderr.txt"))?;
        let python = run.python.clone();
        let mut child = Command::new(&python)
            .args(["-m", "pipnet_export.peer_dlib"])
            .arg(&request)
            .arg("--cache")
            .arg(&cache)
            .env("PYTHONPATH", &package)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("running {}", python.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("running {}: no pipes to the dlib process", python.display());
        };
        let mut process = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            dir,
            python,
        };
        process.answer()?;
        Ok(process)
    }

    /// One timed pass of dlib over the photos.
    fn round(&mut self) -> anyhow::Result<()> {
        self.send("round")?;
        self.answer().map(drop)
    }

    /// Ends the rounds; dlib's timing over them and its landmarks for the labeled faces.
    fn finish(&mut self) -> anyhow::Result<Value> {
        self.send("done")?;
        let answer = self.answer()?;
        self.child.wait()?;
        Ok(answer)
    }

    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|_| self.failed())
    }

    /// The process's next line that is a JSON object.
    fn answer(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                return Err(self.failed());
            }
            if let Ok(value @ Value::Object(_)) = serde_json::from_str(&line) {
                return Ok(value);
            }
        }
    }

    /// Why the process stopped answering: its exit status and the last line of its stderr.
    fn failed(&mut self) -> anyhow::Error {
        let status = self.child.wait().map_or("?".into(), |s| s.to_string());
        let stderr =
            std::fs::read_to_string(self.dir.path().join("stderr.txt")).unwrap_or_default();
        anyhow!(
            "the dlib pipeline failed ({}, {status}): {}",
            self.python.display(),
            stderr.trim().lines().last().unwrap_or("no output")
        )
    }
}

impl Drop for DlibProcess {
    /// A comparison that fails on our side does not leave dlib running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_faces_are_scored_alike() {
        let ours = [Some(0.02), None, Some(0.04), Some(0.2)];
        let theirs = [Some(0.03), Some(0.01), None, Some(0.1)];
        let (a, b) = score_both(&ours, &theirs);
        assert_eq!((a.found, b.found, a.faces, a.common), (3, 3, 4, 2));
        assert!((a.nme_on_common - 0.11).abs() < 1e-6, "{a:?}");
        assert!((b.nme_on_common - 0.065).abs() < 1e-6, "{b:?}");
        assert!((a.failure_rate - 1.0 / 3.0).abs() < 1e-6, "{a:?}");
    }
}
