//! Accuracy on labeled faces. The 300-W protocol crops each face from its true landmark box
//! with the model's own crop rule; [`detect_labeled`] instead finds each face with the detector,
//! which is what annotating real photos does, and is also what the box calibration is fitted on;
//! [`detector_crops`] crops the faces it found as `annotate` would.

use image::RgbImage;
use pipnet_core::detection::Detection;
use pipnet_core::metrics::{Summary, nme};
use pipnet_core::{CropRule, FaceBox, FaceCrop, Point};

use crate::detect::FaceDetector;
use crate::error::{Error, Result};
use crate::image_io::load_rgb;
use crate::labeled::LabeledFace;
use crate::pipeline::Pipeline;

/// One evaluated face.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceResult {
    pub name: String,
    pub nme: f32,
    pub predicted: Vec<Point>,
    /// Mean landmark score ([`pipnet_core::presence`]).
    pub presence: f32,
    /// The crop of the first landmark pass (a refined pass re-crops from its landmarks).
    pub crop: FaceCrop,
}

/// How each labeled face is cropped for evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EvalCrops<'a> {
    /// From the tight box around the true landmarks, with the model's crop rule.
    TrueBox,
    /// The given crop per face (e.g. from detections), in the order of the faces.
    Given(&'a [FaceCrop]),
}

/// The true landmark box of a labeled face.
pub fn landmark_box(face: &LabeledFace) -> Result<FaceBox> {
    FaceBox::around(&face.points).map_err(|e| Error::InvalidInput(format!("{}: {e}", face.name)))
}

/// Runs the pipeline's landmark stage on every face and returns per-face results and the
/// summary at `threshold` (0.1 for FR@0.1 and AUC@0.1).
pub fn evaluate(
    pipeline: &mut Pipeline,
    faces: &[LabeledFace],
    crops: EvalCrops<'_>,
    threshold: f32,
    max_pixels: u64,
) -> Result<(Vec<FaceResult>, Summary)> {
    let meta = pipeline.model.metadata().clone();
    if let EvalCrops::Given(given) = crops
        && given.len() != faces.len()
    {
        return Err(Error::InvalidInput(format!(
            "{} crops for {} faces",
            given.len(),
            faces.len()
        )));
    }
    let mut results = Vec::with_capacity(faces.len());
    let batch = pipeline.model.batch_size();
    for (k, chunk) in faces.chunks(batch).enumerate() {
        let images = chunk
            .iter()
            .map(|f| load_rgb(&f.image, max_pixels))
            .collect::<Result<Vec<RgbImage>>>()?;
        let crops: Vec<FaceCrop> = match crops {
            EvalCrops::TrueBox => chunk
                .iter()
                .map(|f| landmark_box(f).map(|b| meta.crop.crop(&b)))
                .collect::<Result<_>>()?,
            EvalCrops::Given(given) => given[k * batch..][..chunk.len()].to_vec(),
        };
        let pairs: Vec<_> = images.iter().zip(crops.iter().copied()).collect();
        for ((face, found), crop) in chunk.iter().zip(pipeline.landmarks(&pairs)?).zip(crops) {
            let error = nme(&found.in_image, &face.points, meta.scheme)
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", face.name)))?;
            results.push(FaceResult {
                name: face.name.clone(),
                nme: error,
                presence: pipnet_core::presence(&found.scores()),
                predicted: found.in_image,
                crop,
            });
        }
    }
    let nmes: Vec<f32> = results.iter().map(|r| r.nme).collect();
    Ok((results, Summary::new(&nmes, threshold)))
}

/// Runs the detector on each labeled face's image and keeps the detection that overlaps the
/// face's true landmark box most (intersection over union above `min_iou`), or `None` when no
/// detection does: the share of `Some` is the detector's recall.
pub fn detect_labeled(
    detector: &mut FaceDetector,
    faces: &[LabeledFace],
    min_iou: f32,
    max_pixels: u64,
) -> Result<Vec<Option<Detection>>> {
    faces
        .iter()
        .map(|face| {
            let image = load_rgb(&face.image, max_pixels)?;
            let truth = Detection {
                face_box: landmark_box(face)?,
                score: 1.0,
                keypoints: Default::default(),
            };
            let found = detector.detect(&image, None)?;
            Ok(found
                .into_iter()
                .map(|d| (truth.iou(&d), d))
                .filter(|(iou, _)| *iou > min_iou)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, d)| d))
        })
        .collect()
}

/// The faces the detector found ([`detect_labeled`]) and their landmark crops, made from each
/// detection with the model's crop `rule`: what `annotate` would crop. Faces it missed are left
/// out; `found.len()` against `faces.len()` is the recall.
#[derive(Debug, Clone, Default)]
pub struct DetectedFaces {
    pub found: Vec<LabeledFace>,
    pub crops: Vec<FaceCrop>,
    /// Index into the labeled faces of each found face.
    pub index: Vec<usize>,
}

/// Finds each labeled face with `detector` and crops it as [`DetectedFaces`] says.
pub fn detector_crops(
    detector: &mut FaceDetector,
    faces: &[LabeledFace],
    rule: &CropRule,
    min_iou: f32,
    max_pixels: u64,
) -> Result<DetectedFaces> {
    let mut detected = DetectedFaces::default();
    for (i, d) in detect_labeled(detector, faces, min_iou, max_pixels)?
        .into_iter()
        .enumerate()
    {
        if let Some(d) = d {
            detected.found.push(faces[i].clone());
            detected.crops.push(detector.crop(&d, rule));
            detected.index.push(i);
        }
    }
    Ok(detected)
}
