//! The faces a run trains and validates on: labeled photos split by photo, optional
//! label withholding and unlabeled images for self-training, each photo decoded once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use pipnet_core::{CropRule, FaceBox, FaceCrop, NeighborIndex, Point, Scheme, mean_face};
use pipnet_infer::SessionOptions;
use pipnet_infer::detect::{FaceDetector, RollSearch};
use pipnet_infer::eval::detector_crops;
use pipnet_infer::folder::image_paths;
use pipnet_infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet_infer::labeled::{LabeledFace, read_labeled, split_validation};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::run::io_err;
use crate::stc::UnlabeledImage;
use crate::{Error, Result};

/// A training face held in memory, labeled or pseudo-labeled; a photo is loaded once however
/// many faces it holds.
pub(crate) struct Face {
    pub(crate) image: Arc<RgbImage>,
    pub(crate) points: Vec<Point>,
    /// The face detector's landmark crop of this face (`detector_crop_probability`).
    pub(crate) detected: Option<FaceCrop>,
}

/// The data a run trains and validates on.
pub(crate) struct Data {
    pub(crate) train: Vec<Face>,
    pub(crate) val: Vec<LabeledFace>,
    /// Images for self-training to label (empty without `[stc]`).
    pub(crate) unlabeled: Vec<UnlabeledImage>,
}

/// Decodes each photo once.
#[derive(Default)]
struct PhotoCache(HashMap<PathBuf, Arc<RgbImage>>);

impl PhotoCache {
    fn get(&mut self, path: &Path) -> Result<Arc<RgbImage>> {
        if let Some(image) = self.0.get(path) {
            return Ok(Arc::clone(image));
        }
        let image = Arc::new(load_rgb(path, DEFAULT_MAX_PIXELS)?);
        self.0.insert(path.to_path_buf(), Arc::clone(&image));
        Ok(image)
    }
}

/// Seed mixed into `split_seed` to choose the photos that keep their labels under
/// `label_fraction`, so that choice is independent of the validation split.
const LABEL_FRACTION_SEED: u64 = 0x5eed_1abe;

/// The config's labeled faces, split into (train, validation), every face checked to have the
/// scheme's number of points.
pub(crate) fn split_labeled(
    config: &TrainConfig,
    scheme: Scheme,
) -> Result<(Vec<LabeledFace>, Vec<LabeledFace>)> {
    let all = read_labeled(&config.data.labeled, config.data.images.as_deref())?;
    if let Some(face) = all
        .iter()
        .find(|f| f.points.len() != scheme.num_landmarks())
    {
        return Err(Error::Config(format!(
            "{}: face {} has {} points, but data.scheme {:?} has {}: set data.scheme to the \
             data's layout",
            config.data.labeled.display(),
            face.name,
            face.points.len(),
            config.data.scheme,
            scheme.num_landmarks()
        )));
    }
    Ok(split_validation(
        all,
        config.data.val_fraction,
        config.data.split_seed,
    ))
}

pub(crate) fn load_data(config: &TrainConfig, scheme: Scheme) -> Result<Data> {
    let (mut train, val) = split_labeled(config, scheme)?;
    let mut unlabeled_photos = Vec::new();
    if let Some(fraction) = config.data.label_fraction {
        // The held-out side of a split is the lowest `fraction` of photos: those keep labels.
        let (rest, kept) = split_validation(
            train,
            fraction,
            config.data.split_seed ^ LABEL_FRACTION_SEED,
        );
        train = kept;
        unlabeled_photos = rest.into_iter().map(|f| f.image).collect();
        unlabeled_photos.dedup();
    }
    if let Some(n) = config.data.max_train_faces {
        train.truncate(n);
    }
    let detected = detector_crops_of(config, &train)?;
    let mut cache = PhotoCache::default();
    let train = train
        .into_iter()
        .zip(detected)
        .map(|(f, detected)| {
            Ok(Face {
                image: cache.get(&f.image)?,
                points: f.points,
                detected,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if train.is_empty() {
        return Err(Error::Config("no training faces".into()));
    }
    let unlabeled = match &config.stc {
        None => Vec::new(),
        Some(stc) => {
            let mut paths = image_paths(&stc.unlabeled)?;
            paths.extend(unlabeled_photos);
            paths
                .into_iter()
                .map(|path| {
                    Ok(UnlabeledImage {
                        image: cache.get(&path)?,
                        path,
                    })
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    Ok(Data {
        train,
        val,
        unlabeled,
    })
}

/// One face's detector crop in a `[data] detector_crops` file (a JSON array of these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NamedCrop {
    pub(crate) name: String,
    pub(crate) center: Point,
    pub(crate) side: f32,
    pub(crate) angle: f32,
}

impl NamedCrop {
    pub(crate) fn new(name: &str, crop: &FaceCrop) -> Self {
        Self {
            name: name.to_string(),
            center: crop.center,
            side: crop.side,
            angle: crop.angle,
        }
    }
}

/// Reads a `[data] detector_crops` file into crops by face name.
fn read_detector_crops(path: &Path) -> Result<HashMap<String, FaceCrop>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let crops: Vec<NamedCrop> = serde_json::from_str(&text).map_err(|e| {
        Error::Config(format!(
            "{}: not a detector crops file ({e}); repack the run with `pipnet train --pack`",
            path.display()
        ))
    })?;
    Ok(crops
        .into_iter()
        .map(|c| (c.name, FaceCrop::new(c.center, c.side, c.angle)))
        .collect())
}

/// The detector crop of each of `faces` when the run trains on them
/// (`detector_crop_probability`; `None` for a face the detector misses, and for every face
/// otherwise): read from `[data] detector_crops` when the config names a file, else found by
/// the built-in face detector (by the contract's default crop rule, which every trained
/// network uses) with the same detection, match and calibration as `pipnet eval --crops
/// detector`.
pub(crate) fn detector_crops_of(
    config: &TrainConfig,
    faces: &[LabeledFace],
) -> Result<Vec<Option<FaceCrop>>> {
    let mut detected = vec![None; faces.len()];
    if config.augment.detector_crop_probability <= 0.0 {
        return Ok(detected);
    }
    if let Some(path) = &config.data.detector_crops {
        let mut by_name = read_detector_crops(path)?;
        let listed = by_name.len();
        for (face, crop) in faces.iter().zip(&mut detected) {
            *crop = by_name.remove(&face.name);
        }
        if listed > 0 && by_name.len() == listed {
            return Err(Error::Config(format!(
                "{}: its {listed} detector crops name none of the {} training faces of {}; \
                 pack the run again with `pipnet train --pack`",
                path.display(),
                faces.len(),
                config.data.labeled.display()
            )));
        }
        return Ok(detected);
    }
    let mut detector = FaceDetector::builtin(&SessionOptions::default())?;
    let found = detector_crops(
        &mut detector,
        faces,
        &CropRule::default(),
        (0.3, RollSearch::Off),
        DEFAULT_MAX_PIXELS,
    )?;
    for (i, (_, crop)) in found.index.into_iter().zip(found.located) {
        detected[i] = Some(crop);
    }
    Ok(detected)
}

/// Mean face (crop-normalised, from each face's un-augmented crop) and its neighbour index.
pub(crate) fn mean_face_of(
    faces: &[Face],
    rule: &CropRule,
    neighbors: usize,
) -> Result<(Vec<Point>, NeighborIndex)> {
    let normalised = faces
        .iter()
        .map(|f| {
            let crop = rule.crop(&FaceBox::around(&f.points)?);
            Ok(f.points.iter().map(|&p| crop.to_crop(p)).collect())
        })
        .collect::<Result<Vec<Vec<Point>>>>()?;
    let mean = mean_face(&normalised)?;
    let index = NeighborIndex::from_mean_face(&mean, neighbors)?;
    Ok((mean, index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DataConfig;

    /// Detector-error crops on a few real training faces: the detector finds them, and each
    /// detector crop lies near (not on) the face's landmark crop.
    #[test]
    fn test_training_faces_carry_their_detector_crops() {
        let labeled =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/face68-train");
        let mut config: TrainConfig = toml::from_str("[data]\nlabeled = \"x\"\n").unwrap();
        config.data = DataConfig {
            labeled,
            max_train_faces: Some(6),
            ..config.data
        };
        config.augment.detector_crop_probability = 0.5;
        let scheme = Scheme::W300_68;
        let data = load_data(&config, scheme).unwrap();
        let found: Vec<(&Face, &FaceCrop)> = data
            .train
            .iter()
            .filter_map(|f| f.detected.as_ref().map(|d| (f, d)))
            .collect();
        assert!(found.len() >= 5, "{} of 6 faces found", found.len());
        for (face, detected) in found {
            let truth = CropRule::default().crop(&FaceBox::around(&face.points).unwrap());
            let dx = (detected.center[0] - truth.center[0]) / truth.side;
            let dy = (detected.center[1] - truth.center[1]) / truth.side;
            let ds = detected.side / truth.side;
            assert!(
                dx.abs() < 0.25 && dy.abs() < 0.25,
                "centre off by {dx}, {dy}"
            );
            assert!((0.7..1.4).contains(&ds), "side ratio {ds}");
            assert!(detected != &truth);
        }
        config.augment.detector_crop_probability = 0.0;
        let plain = load_data(&config, scheme).unwrap();
        assert!(plain.train.iter().all(|f| f.detected.is_none()));
    }
}
