//! Distillation: a trained PIPNet graph (the teacher, run by ONNX Runtime beside training)
//! sees each augmented sample at its own input size, and its score maps and offsets join the
//! labels as soft targets. The student must share the teacher's grid and neighbour index, so
//! its offsets mean what the teacher's mean; it adopts the teacher's mean face to be sure.

use std::path::{Path, PathBuf};

use pipnet_core::CropRule;
use pipnet_core::contract::{ModelMetadata, OutputForm};
use pipnet_infer::{LandmarkModel, SessionOptions};
use serde::{Deserialize, Serialize};

use crate::network::NetworkSpec;
use crate::targets::PipTargets;
use crate::{Error, Result};

/// `[distill]` of a train config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// The teacher: a contract ONNX graph with raw outputs (e.g. the shipped default).
    pub teacher: PathBuf,
    /// The teacher's share of every main-head target: 0 trains on labels alone, 1 on the
    /// teacher alone.
    #[serde(default = "default_weight")]
    pub weight: f32,
}

fn default_weight() -> f32 {
    0.5
}

/// A loaded teacher.
pub struct Teacher {
    model: LandmarkModel,
    weight: f32,
}

impl std::fmt::Debug for Teacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Teacher")
            .field("model", &self.model)
            .field("weight", &self.weight)
            .finish()
    }
}

impl Teacher {
    /// Loads the teacher and checks it can teach a student of `spec` and `scheme`.
    pub fn load(
        config: &DistillConfig,
        spec: &NetworkSpec,
        scheme: &str,
        rule: &CropRule,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&config.weight) {
            return Err(Error::Config(format!(
                "[distill] weight {} must lie in 0..=1",
                config.weight
            )));
        }
        let model = LandmarkModel::load(&config.teacher, &SessionOptions::default())?;
        check_teacher(model.metadata(), &config.teacher, spec, scheme, rule)?;
        Ok(Self {
            model,
            weight: config.weight,
        })
    }

    pub fn metadata(&self) -> &ModelMetadata {
        self.model.metadata()
    }

    /// The teacher's name and SHA-256, for the run's provenance and resume check.
    pub fn describe(&self) -> String {
        let id = self.model.id();
        format!("{} (sha256 {})", id.name, id.sha256)
    }

    /// Runs the teacher on `batch` samples rendered at its input size and blends its outputs
    /// into each sample's targets (`targets[b]`, main head).
    pub fn teach(&mut self, input: &[f32], batch: usize, targets: &mut [PipTargets]) -> Result<()> {
        let outputs = self.model.run_raw(input, batch)?;
        let [cls, off_x, off_y, nb_x, nb_y] = <[Vec<f32>; 5]>::try_from(outputs)
            .map_err(|o| Error::Checkpoint(format!("teacher gave {} outputs, not 5", o.len())))?;
        for (b, t) in targets.iter_mut().enumerate() {
            let (own, nb) = (t.cls.len(), t.nb_x.len());
            let soft = TeacherMaps {
                cls: sample_part(&cls, b, own)?,
                off_x: sample_part(&off_x, b, own)?,
                off_y: sample_part(&off_y, b, own)?,
                nb_x: sample_part(&nb_x, b, nb)?,
                nb_y: sample_part(&nb_y, b, nb)?,
            };
            blend(t, &soft, self.weight)?;
        }
        Ok(())
    }
}

/// Sample `b`'s `len` values of a batch-major output.
fn sample_part(output: &[f32], b: usize, len: usize) -> Result<&[f32]> {
    output
        .get(b * len..(b + 1) * len)
        .ok_or_else(|| Error::Checkpoint("teacher output shorter than its batch".into()))
}

/// Refuses a teacher whose outputs cannot mean what the student's do.
fn check_teacher(
    meta: &ModelMetadata,
    path: &Path,
    spec: &NetworkSpec,
    scheme: &str,
    rule: &CropRule,
) -> Result<()> {
    match misfit(meta, spec, scheme, rule, true) {
        Some(why) => Err(Error::Checkpoint(format!(
            "[distill] teacher {} cannot teach this network: {why}",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Why a trained graph's outputs cannot mean what those of the network `spec` describes do
/// (landmark scheme, crop, neighbours and, with `same_grid`, the grid), or `None`.
pub(crate) fn misfit(
    meta: &ModelMetadata,
    spec: &NetworkSpec,
    scheme: &str,
    rule: &CropRule,
    same_grid: bool,
) -> Option<String> {
    if meta.outputs != OutputForm::Raw {
        Some("its outputs are decoded in the graph; raw score maps are needed".to_string())
    } else if meta.scheme.name() != scheme {
        Some(format!(
            "it predicts {}, this network {scheme}",
            meta.scheme.name()
        ))
    } else if meta.crop != *rule {
        Some(format!(
            "it crops faces by {:?}, this network by {rule:?}",
            meta.crop
        ))
    } else if same_grid && meta.input_size / meta.stride != spec.grid() {
        Some(format!(
            "its grid is {0}x{0}, this network's {1}x{1}",
            meta.input_size / meta.stride,
            spec.grid()
        ))
    } else if meta.neighbors.num_neighbors() != spec.num_neighbors {
        Some(format!(
            "it has {} neighbours per landmark, this network {}",
            meta.neighbors.num_neighbors(),
            spec.num_neighbors
        ))
    } else {
        None
    }
}

/// One sample's teacher outputs, in the layouts of [`PipTargets`]' maps.
#[derive(Debug, Clone, Copy)]
pub struct TeacherMaps<'a> {
    pub cls: &'a [f32],
    pub off_x: &'a [f32],
    pub off_y: &'a [f32],
    pub nb_x: &'a [f32],
    pub nb_y: &'a [f32],
}

/// `hard = (1 - w) hard + w soft` for the score maps everywhere and for the offsets where the
/// label's mask selects them (elsewhere the loss ignores offsets). For the squared score-map
/// loss this equals weighting the label's and the teacher's losses `1 - w` and `w`.
pub fn blend(hard: &mut PipTargets, soft: &TeacherMaps<'_>, w: f32) -> Result<()> {
    let lengths_match = hard.cls.len() == soft.cls.len()
        && hard.off_x.len() == soft.off_x.len()
        && hard.off_y.len() == soft.off_y.len()
        && hard.nb_x.len() == soft.nb_x.len()
        && hard.nb_y.len() == soft.nb_y.len();
    if !lengths_match {
        return Err(Error::Checkpoint(
            "teacher outputs do not match the student's target layout".into(),
        ));
    }
    let mix = |h: &mut f32, s: f32| *h = (1.0 - w) * *h + w * s;
    for (h, &s) in hard.cls.iter_mut().zip(soft.cls) {
        if !s.is_finite() {
            return Err(Error::Checkpoint(
                "the teacher produced a non-finite score".into(),
            ));
        }
        mix(h, s);
    }
    let masked = |h: &mut [f32], s: &[f32], mask: &[f32]| {
        for ((h, &s), &m) in h.iter_mut().zip(s).zip(mask) {
            if m > 0.0 && s.is_finite() {
                mix(h, s);
            }
        }
    };
    masked(&mut hard.off_x, soft.off_x, &hard.mask);
    masked(&mut hard.off_y, soft.off_y, &hard.mask);
    masked(&mut hard.nb_x, soft.nb_x, &hard.nb_mask);
    masked(&mut hard.nb_y, soft.nb_y, &hard.nb_mask);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(cls: [f32; 2], off: [f32; 2], mask: [f32; 2]) -> PipTargets {
        PipTargets {
            cls: cls.to_vec(),
            off_x: off.to_vec(),
            off_y: off.to_vec(),
            nb_x: off.to_vec(),
            nb_y: off.to_vec(),
            mask: mask.to_vec(),
            nb_mask: mask.to_vec(),
        }
    }

    /// The teacher's maps with `cls` for scores and `off` for every offset map.
    fn maps<'a>(cls: &'a [f32], off: &'a [f32]) -> TeacherMaps<'a> {
        TeacherMaps {
            cls,
            off_x: off,
            off_y: off,
            nb_x: off,
            nb_y: off,
        }
    }

    #[test]
    fn test_blend_mixes_scores_everywhere_and_offsets_at_the_label_cell() {
        let mut hard = targets([1.0, 0.0], [0.5, 0.0], [1.0, 0.0]);
        blend(&mut hard, &maps(&[0.6, 0.2], &[0.3, 0.9]), 0.25).unwrap();
        let close = |a: &[f32], b: [f32; 2]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(&hard.cls, [0.9, 0.05]), "{:?}", hard.cls);
        // 0.75 x 0.5 + 0.25 x 0.3 at the positive cell; the other cell keeps its 0.
        assert!(close(&hard.off_x, [0.45, 0.0]), "{:?}", hard.off_x);
        assert!(close(&hard.nb_y, [0.45, 0.0]), "{:?}", hard.nb_y);
        assert_eq!(hard.mask, vec![1.0, 0.0]);
    }

    #[test]
    fn test_blend_refuses_other_layouts_and_nan_scores() {
        let mut hard = targets([1.0, 0.0], [0.5, 0.0], [1.0, 0.0]);
        let short = TeacherMaps {
            nb_x: &[0.3],
            ..maps(&[0.6, 0.2], &[0.3, 0.9])
        };
        assert!(blend(&mut hard, &short, 0.5).is_err());
        assert!(blend(&mut hard, &maps(&[f32::NAN, 0.2], &[0.3, 0.9]), 0.5).is_err());
    }
}
