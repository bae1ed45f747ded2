//! Self-training with a curriculum (STC, the PIPNet paper's third part): the model being trained
//! labels unlabeled faces, and those pseudo-labels teach the coarse curriculum heads first,
//! where a wrong cell costs least, moving to finer heads in later rounds. The main head learns
//! from human labels only, so pseudo-label noise reaches it only through the shared backbone.
//!
//! Each round's pseudo-labels are saved as JSON lines (`pseudo/round-<r>.jsonl` in the run
//! folder) with their scores, so a round can be inspected, and a resumed run reuses them
//! instead of labeling again.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use pipnet_core::{Point, SecondPass};
use pipnet_infer::detect::FaceDetector;
use pipnet_infer::files::write_atomic;
use pipnet_infer::{Face, Faces, LandmarkModel, Pipeline, PipelineOptions, SessionOptions};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One pseudo-labeled face: the largest face the detector found in an unlabeled image, with
/// the landmarks the model gave it (refined pass, image pixels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PseudoLabel {
    pub image: PathBuf,
    /// The round that made it (1-based).
    pub round: usize,
    pub points: Vec<Point>,
    /// Per-landmark scores (the `cls` value of the winning cell).
    pub scores: Vec<f32>,
    /// Mean of `scores`: the label's confidence.
    pub score: f32,
    pub detection_score: f32,
}

/// An unlabeled image held in memory for pseudo-labeling and training.
#[derive(Debug, Clone)]
pub struct UnlabeledImage {
    pub path: PathBuf,
    pub image: Arc<RgbImage>,
}

/// The curriculum: the levels (0 = main head, 1.. = ever coarser heads) that round `round`'s
/// pseudo-labels train. Round 0 (supervised) uses none; round 1 the coarsest head only; each
/// later round adds the next finer curriculum head, never the main one.
pub fn pseudo_levels(round: usize, coarse_levels: usize) -> RangeInclusive<usize> {
    // Round 0, or no curriculum heads, gives an empty range; never below level 1.
    let first = coarse_levels + 1 - round.min(coarse_levels);
    first..=coarse_levels
}

/// The levels a round's pseudo-labels train: with the teacher's labels (`[stc]
/// teacher_labels`) every level from the first round on, the main head included; else the
/// curriculum's [`pseudo_levels`].
pub fn trained_levels(
    teacher_labels: bool,
    round: usize,
    coarse_levels: usize,
) -> RangeInclusive<usize> {
    if teacher_labels && round > 0 {
        0..=coarse_levels
    } else {
        pseudo_levels(round, coarse_levels)
    }
}

/// The round in force at `epoch` (epochs completed): how many round starts are at or before it.
pub fn round_at(starts: &[usize], epoch: usize) -> usize {
    starts.iter().filter(|&&s| s <= epoch).count()
}

/// The run folder's file of round `round`.
pub fn round_path(run: &Path, round: usize) -> PathBuf {
    run.join("pseudo").join(format!("round-{round}.jsonl"))
}

/// Labels `images` with `model`: the builtin detector finds faces (down to `min_face` pixels),
/// the largest is kept, and its landmarks come from the refined two-pass pipeline (labels are
/// made once, so the more accurate pass pays), as `pipnet annotate --refine` would give them.
/// Images without a face get no label.
pub fn pseudo_label(
    model: LandmarkModel,
    images: &[UnlabeledImage],
    round: usize,
    min_face: f32,
    mut progress: impl FnMut(usize),
) -> Result<Vec<PseudoLabel>> {
    let detector = FaceDetector::builtin(&SessionOptions::default())?;
    let options = PipelineOptions {
        min_face: Some(min_face),
        second_pass: SecondPass::Always,
        ..PipelineOptions::keep_every_face()
    };
    let mut pipeline = Pipeline::with_options(model, Some(detector), options)?;
    let mut labels = Vec::new();
    for (chunk_index, chunk) in images.chunks(32).enumerate() {
        let batch: Vec<(&RgbImage, &Faces)> = chunk
            .iter()
            .map(|u| (u.image.as_ref(), &Faces::Detect))
            .collect();
        let found = pipeline.faces(&batch)?;
        for (unlabeled, faces) in chunk.iter().zip(found) {
            let largest = faces.into_iter().max_by(|a, b| {
                let area = |f: &Face| {
                    let b = f.face_box();
                    (b.x1 - b.x0) * (b.y1 - b.y0)
                };
                area(a).total_cmp(&area(b))
            });
            if let Some(face) = largest {
                let scores = face.landmarks.scores();
                labels.push(PseudoLabel {
                    image: unlabeled.path.clone(),
                    round,
                    score: scores.iter().sum::<f32>() / scores.len().max(1) as f32,
                    scores,
                    points: face.landmarks.in_image.clone(),
                    detection_score: face.score(),
                });
            }
        }
        progress((chunk_index * 32 + chunk.len()).min(images.len()));
    }
    Ok(labels)
}

/// Writes `labels` as JSON lines, atomically.
pub fn save_pseudo_labels(path: &Path, labels: &[PseudoLabel]) -> Result<()> {
    let mut text = String::new();
    for label in labels {
        let line = serde_json::to_string(label).map_err(|e| Error::Checkpoint(e.to_string()))?;
        text.push_str(&line);
        text.push('\n');
    }
    Ok(write_atomic(path, text.as_bytes())?)
}

/// Reads a file written by [`save_pseudo_labels`].
pub fn load_pseudo_labels(path: &Path) -> Result<Vec<PseudoLabel>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| {
                Error::Checkpoint(format!(
                    "{} line {}: {e} (delete the file to label the round again)",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

/// Pairs each label with its image among `images`; a label naming an image that is not there
/// means the unlabeled set changed since the round was labeled.
pub fn attach_images(
    labels: &[PseudoLabel],
    images: &[UnlabeledImage],
    source: &Path,
) -> Result<Vec<(Arc<RgbImage>, Vec<Point>)>> {
    let by_path: HashMap<&Path, &Arc<RgbImage>> = images
        .iter()
        .map(|u| (u.path.as_path(), &u.image))
        .collect();
    labels
        .iter()
        .map(|label| {
            let image = by_path.get(label.image.as_path()).ok_or_else(|| {
                Error::Checkpoint(format!(
                    "{} labels {}, which is not among the unlabeled images: the data changed \
                     since that round; delete the file to label the round again",
                    source.display(),
                    label.image.display()
                ))
            })?;
            Ok((Arc::clone(image), label.points.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_curriculum_moves_pseudo_labels_from_coarse_to_finer_heads() {
        assert!(pseudo_levels(0, 2).is_empty());
        assert_eq!(pseudo_levels(1, 2), 2..=2);
        assert_eq!(pseudo_levels(2, 2), 1..=2);
        // Never the main head (level 0), however many rounds.
        assert_eq!(pseudo_levels(5, 2), 1..=2);
        assert_eq!(pseudo_levels(1, 3), 3..=3);
        assert!(pseudo_levels(1, 0).is_empty());
        // The teacher's labels train every level once their round has started.
        assert!(trained_levels(true, 0, 2).is_empty());
        assert_eq!(trained_levels(true, 1, 2), 0..=2);
        assert_eq!(trained_levels(true, 1, 0), 0..=0);
        assert_eq!(trained_levels(false, 1, 2), pseudo_levels(1, 2));
    }

    #[test]
    fn test_rounds_start_at_their_epochs() {
        let starts = [10, 15];
        assert_eq!(round_at(&starts, 0), 0);
        assert_eq!(round_at(&starts, 9), 0);
        assert_eq!(round_at(&starts, 10), 1);
        assert_eq!(round_at(&starts, 15), 2);
        assert_eq!(round_at(&[], 99), 0);
    }

    #[test]
    fn test_pseudo_labels_round_trip_and_attach_to_their_images() {
        let dir = tempfile::tempdir().unwrap();
        let labels = vec![
            PseudoLabel {
                image: PathBuf::from("lfw/a.jpg"),
                round: 2,
                points: vec![[1.5, 2.25], [3.0, -0.5]],
                scores: vec![0.9, 0.7],
                score: 0.8,
                detection_score: 0.95,
            },
            PseudoLabel {
                image: PathBuf::from("lfw/b.jpg"),
                round: 2,
                points: vec![[f32::MIN_POSITIVE, 1e7]],
                scores: vec![0.1],
                score: 0.1,
                detection_score: 0.61,
            },
        ];
        let path = round_path(dir.path(), 2);
        save_pseudo_labels(&path, &labels).unwrap();
        assert_eq!(load_pseudo_labels(&path).unwrap(), labels);

        let image = |p: &str| UnlabeledImage {
            path: PathBuf::from(p),
            image: Arc::new(RgbImage::new(2, 2)),
        };
        let images = [image("lfw/b.jpg"), image("lfw/a.jpg")];
        let attached = attach_images(&labels, &images, &path).unwrap();
        assert!(Arc::ptr_eq(&attached[0].0, &images[1].image));
        assert_eq!(attached[1].1, labels[1].points);
        let err = attach_images(&labels, &images[..1], &path).unwrap_err();
        assert!(err.to_string().contains("lfw/a.jpg"), "{err}");

        std::fs::write(&path, "{\"image\": 3}\n").unwrap();
        let err = load_pseudo_labels(&path).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
