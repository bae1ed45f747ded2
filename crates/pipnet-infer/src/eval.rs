//! Accuracy on labeled faces. The 300-W protocol crops each face from its true landmark box
//! with the model's own crop rule; [`detect_labeled`] instead finds each face with the detector,
//! which is what annotating real photos does, and is also what the box calibration is fitted on;
//! [`detector_crops`] crops the faces it found as `annotate` would.

use image::RgbImage;
use pipnet_core::detection::Detection;
use pipnet_core::metrics::{Summary, nme};
use pipnet_core::{CropRule, FaceBox, FaceCrop, HeadPose, Point, head_pose};

use crate::detect::{FaceDetector, FoundFace, RollSearch};
use crate::error::{Error, Result};
use crate::labeled::LabeledFace;
use crate::pipeline::{FirstPass, LocatedFace, Pipeline};

/// One evaluated face.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceResult {
    pub name: String,
    pub nme: f32,
    pub predicted: Vec<Point>,
    /// Mean landmark score ([`pipnet_core::presence`]).
    pub presence: f32,
    /// The crop of the first landmark pass (a second pass re-crops from its landmarks).
    pub crop: FaceCrop,
    /// What the first pass said, and whether the face got the second.
    pub first_pass: FirstPass,
    /// The yaw of the true landmarks' head pose ([`head_pose`]), degrees.
    pub true_yaw: Option<f32>,
    /// The head pose of the predicted landmarks.
    pub pose: Option<HeadPose>,
}

/// How each labeled face is cropped for evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EvalCrops<'a> {
    /// From the tight box around the true landmarks, with the model's crop rule.
    TrueBox,
    /// The given crop per face with the detection it came from, if any (e.g.
    /// [`DetectedFaces::located`]), in the order of the faces.
    Given(&'a [LocatedFace]),
}

/// Every face on its photo turned by `angle` radians ([`LabeledFace::turned`]); 0 leaves them
/// as read.
pub fn turn_faces(faces: &[LabeledFace], angle: f32, max_pixels: u64) -> Result<Vec<LabeledFace>> {
    if angle == 0.0 {
        return Ok(faces.to_vec());
    }
    faces.iter().map(|f| f.turned(angle, max_pixels)).collect()
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
            .map(|f| f.load(max_pixels))
            .collect::<Result<Vec<RgbImage>>>()?;
        let located: Vec<LocatedFace> = match crops {
            EvalCrops::TrueBox => chunk
                .iter()
                .map(|f| landmark_box(f).map(|b| (None, meta.crop.crop(&b))))
                .collect::<Result<_>>()?,
            EvalCrops::Given(given) => given[k * batch..][..chunk.len()].to_vec(),
        };
        let pairs: Vec<_> = images.iter().zip(located.iter().copied()).collect();
        let found = pipeline.landmarks_with_passes(&pairs)?;
        for ((face, (found, first_pass)), (_, crop)) in chunk.iter().zip(found).zip(located) {
            let found = found.landmarks;
            let pose = head_pose(meta.scheme, &found.in_image);
            let error = nme(&found.in_image, &face.points, meta.scheme)
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", face.name)))?;
            results.push(FaceResult {
                name: face.name.clone(),
                nme: error,
                presence: pipnet_core::presence(&found.scores()),
                predicted: found.in_image,
                crop,
                first_pass,
                true_yaw: head_pose(meta.scheme, &face.points).map(|p| p.yaw),
                pose,
            });
        }
    }
    let nmes: Vec<f32> = results.iter().map(|r| r.nme).collect();
    Ok((results, Summary::new(&nmes, threshold)))
}

/// The faces split into thirds by how far their true landmarks turn the head (the size of
/// [`FaceResult::true_yaw`]): frontal, middle, most turned; each third's summary at
/// `threshold` with the largest |yaw| in it, degrees. Faces without a pose are left out.
pub fn by_head_turn(results: &[FaceResult], threshold: f32) -> Vec<(f32, Summary)> {
    let mut turned: Vec<(f32, f32)> = results
        .iter()
        .filter_map(|r| Some((r.true_yaw?.abs(), r.nme)))
        .collect();
    turned.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = turned.len();
    (0..3)
        .map(|k| &turned[k * n / 3..(k + 1) * n / 3])
        .filter(|third| !third.is_empty())
        .map(|third| {
            let nmes: Vec<f32> = third.iter().map(|t| t.1).collect();
            (third[third.len() - 1].0, Summary::new(&nmes, threshold))
        })
        .collect()
}

/// How the predicted head poses of the same faces (by name) differ between two evaluations of
/// one set of faces, `changed` on photos turned by `roll` radians and, with `mirrored`, also
/// mirrored: per face [`HeadPose::change_from`], the `[yaw, pitch, roll]` differences in
/// degrees after undoing what the change should do. Faces without a pose in either are left
/// out.
pub fn pose_changes(
    base: &[FaceResult],
    changed: &[FaceResult],
    roll: f32,
    mirrored: bool,
) -> Vec<[f32; 3]> {
    let by_name: std::collections::HashMap<&str, &HeadPose> = base
        .iter()
        .filter_map(|r| Some((r.name.as_str(), r.pose.as_ref()?)))
        .collect();
    changed
        .iter()
        .filter_map(|r| {
            let (before, after) = (by_name.get(r.name.as_str())?, r.pose.as_ref()?);
            Some(after.change_from(before, roll.to_degrees(), mirrored))
        })
        .collect()
}

/// Runs the detector on each labeled face's image (turning it as `search` says) and keeps the
/// face whose detections (in any turn of the photo) overlap its true landmark box most
/// (intersection over union above `min_iou`), or `None` when none does: the share of `Some` is
/// the detector's recall.
pub fn detect_labeled(
    detector: &mut FaceDetector,
    faces: &[LabeledFace],
    (min_iou, search): (f32, RollSearch),
    max_pixels: u64,
) -> Result<Vec<Option<FoundFace>>> {
    faces
        .iter()
        .map(|face| {
            let image = face.load(max_pixels)?;
            let truth = Detection {
                face_box: landmark_box(face)?,
                score: 1.0,
                keypoints: Default::default(),
            };
            let found = detector.detect_any_roll(&image, None, search)?;
            Ok(found
                .into_iter()
                .map(|f| (f.detections().map(|d| truth.iou(&d)).fold(0.0, f32::max), f))
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
    /// Each found face's detection and crop.
    pub located: Vec<LocatedFace>,
    /// Index into the labeled faces of each found face.
    pub index: Vec<usize>,
}

/// [`detector_crops`] with the pipeline's own detector and roll search: the faces `annotate`
/// would find and crop. With [`RollSearch::WhereNeeded`], whose turned search the landmark
/// stage decides on, a face the detector missed is looked for among the faces the whole
/// pipeline finds in its photo ([`Pipeline::landmarks_of`]), cropped from the detection that
/// pipeline ended with.
pub fn pipeline_detector_crops(
    pipeline: &mut Pipeline,
    faces: &[LabeledFace],
    max_pixels: u64,
) -> Result<DetectedFaces> {
    let rule = pipeline.model.metadata().crop;
    let search = (0.3, pipeline.options.roll_search);
    let detector = pipeline.detector.as_mut().ok_or_else(|| {
        Error::InvalidInput("detector crops asked for, but the pipeline has no detector".into())
    })?;
    let mut detected = detector_crops(detector, faces, &rule, search, max_pixels)?;
    if pipeline.options.roll_search != RollSearch::WhereNeeded {
        return Ok(detected);
    }
    for (i, face) in faces.iter().enumerate() {
        if detected.index.contains(&i) {
            continue;
        }
        let truth = landmark_box(face)?;
        let image = face.load(max_pixels)?;
        let located = pipeline.locate(&image, &crate::Faces::Detect)?;
        let found = pipeline.landmarks_of(&[&image], &[&located])?;
        let best = found
            .iter()
            .flatten()
            .filter_map(|f| f.detection)
            .map(|d| (d.face_box.iou(&truth), d))
            .filter(|(iou, _)| *iou > search.0)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let crop = best.and_then(|(_, d)| Some((d, pipeline.detector.as_ref()?.crop(&d, &rule))));
        if let Some((d, crop)) = crop {
            detected.found.push(face.clone());
            detected.located.push((Some(FoundFace::from(d)), crop));
            detected.index.push(i);
        }
    }
    Ok(detected)
}

/// Finds each labeled face with `detector` and crops it as [`DetectedFaces`] says.
pub fn detector_crops(
    detector: &mut FaceDetector,
    faces: &[LabeledFace],
    rule: &CropRule,
    search: (f32, RollSearch),
    max_pixels: u64,
) -> Result<DetectedFaces> {
    let mut detected = DetectedFaces::default();
    for (i, d) in detect_labeled(detector, faces, search, max_pixels)?
        .into_iter()
        .enumerate()
    {
        if let Some(d) = d {
            detected.found.push(faces[i].clone());
            detected
                .located
                .push((Some(d), detector.crop(&d.detection, rule)));
            detected.index.push(i);
        }
    }
    Ok(detected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, [yaw, pitch, roll]: [f32; 3]) -> FaceResult {
        FaceResult {
            name: name.into(),
            nme: 0.0,
            predicted: Vec::new(),
            presence: 1.0,
            crop: FaceCrop::new([0.0, 0.0], 1.0, 0.0),
            first_pass: FirstPass {
                change: None,
                presence: 1.0,
                second_pass: false,
            },
            true_yaw: None,
            pose: Some(HeadPose {
                yaw,
                pitch,
                roll,
                rotation: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                translation: [0.0; 2],
                scale: 1.0,
                residual: 0.0,
            }),
        }
    }

    #[test]
    fn pose_changes_undo_the_turn_and_the_mirror_and_match_faces_by_name() {
        let base = [
            result("a", [10.0, 5.0, 20.0]),
            result("b", [0.0, 0.0, 170.0]),
        ];
        let turned = [
            result("b", [1.0, -2.0, -160.0]),
            result("a", [10.5, 5.0, 50.0]),
            result("lost", [0.0; 3]),
        ];
        let changes = pose_changes(&base, &turned, 30f32.to_radians(), false);
        let close = |a: [f32; 3], b: [f32; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
        assert_eq!(
            changes.len(),
            2,
            "the face missing from the base is left out"
        );
        assert!(
            close(changes[0], [1.0, -2.0, 0.0]),
            "{changes:?}: roll wraps round"
        );
        assert!(close(changes[1], [0.5, 0.0, 0.0]), "{changes:?}");
        let mirrored = [result("a", [-10.0, 6.0, -20.0])];
        let changes = pose_changes(&base, &mirrored, 0.0, true);
        assert!(close(changes[0], [0.0, 1.0, 0.0]), "{changes:?}");
    }
}
