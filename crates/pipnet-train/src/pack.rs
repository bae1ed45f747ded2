//! A run packed for another machine (a lent GPU, reached by copying at most a few tens of
//! megabytes): the training faces cut down to what augmentation can reach at the network's
//! input scale, the face detector's crops of them when the run trains on those (found on the
//! full photos), the ImageNet weights when the run starts from them, and a `train.toml` that
//! trains on exactly those faces. The validation faces stay behind: the packed run has none,
//! and its graph is measured where the full data is, with `pipnet eval`.

use std::path::{Path, PathBuf};

use pipnet_core::{CropRule, FaceBox, FaceCrop, Scheme};
use pipnet_infer::dataset::{CutSize, write_face_crops};

use crate::config::{Pretrained, TrainConfig};
use crate::data::{NamedCrop, detector_crops_of, split_labeled};
use crate::imagenet::{WEIGHTS_FILE, mobilenet_v2_weights_path};
use crate::run::io_err;
use crate::{Error, Result};

/// The packed faces' folder and config inside a pack.
pub const FACES_DIR: &str = "faces";
pub const CONFIG_FILE: &str = "train.toml";
/// The run folder the packed config names, inside the pack.
pub const RUN_DIR: &str = "run";
/// The detector crops of the packed faces, moved into their cuts (`[data] detector_crops`).
pub const DETECTOR_CROPS_FILE: &str = "detector-crops.json";

/// How finely to pack: `resolution` is packed pixels per network input pixel at the base
/// crop (1.0 keeps everything the network can see; less trades detail for bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PackOptions {
    pub resolution: f32,
    pub jpeg_quality: u8,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            resolution: 1.0,
            jpeg_quality: 90,
        }
    }
}

/// What a pack holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Pack {
    pub faces: usize,
    /// Bytes of the packed faces (JPEG and `.pts`).
    pub face_bytes: u64,
    /// Faces packed with their detector crop (`detector_crop_probability`).
    pub detector_crops: usize,
    /// The ImageNet weights copied in, if the run starts from them.
    pub weights: Option<PathBuf>,
    pub config: PathBuf,
}

/// Packs `config`'s training faces into `out` (see the module docs). Self-training runs are
/// refused: their unlabeled photos would have to travel too.
pub fn pack_run(config: &TrainConfig, out: &Path, options: PackOptions) -> Result<Pack> {
    if config.stc.is_some() || config.data.label_fraction.is_some() {
        return Err(Error::Config(
            "a self-training run cannot be packed (its unlabeled photos would travel too); \
             pack a supervised config"
                .into(),
        ));
    }
    if config.distill.is_some() {
        return Err(Error::Config(
            "a distilled run cannot be packed (its teacher graph would travel too, and the \
             teacher would see faces cut at the student's resolution); pack a config without \
             [distill]"
                .into(),
        ));
    }
    if !(options.resolution > 0.0 && options.resolution.is_finite()) {
        return Err(Error::Config(format!(
            "pack resolution {} must be a positive number",
            options.resolution
        )));
    }
    let scheme = Scheme::from_name(&config.data.scheme)?;
    let (mut train, _) = split_labeled(config, scheme)?;
    if let Some(n) = config.data.max_train_faces {
        train.truncate(n);
    }
    let reach = config.augment.reach();
    // DatasetCrop's context is in units of the landmark box's longer side, as the crop rule's.
    let context = CropRule::default().scale * reach;
    let max_side = config.network.input_size as f32 * reach * options.resolution;
    // Detector crops are found on the full photos and travel with the faces; a face is cut
    // wide enough for augmentation around its detector crop too, at the same resolution.
    let detected = detector_crops_of(config, &train)?;
    let sizes = train
        .iter()
        .zip(&detected)
        .map(|(face, detected)| {
            let landmarks = FaceBox::around(&face.points)?;
            let longer = landmarks.width().max(landmarks.height());
            let [cx, cy] = landmarks.center();
            let wide = detected.map_or(context, |d| {
                let off = (d.center[0] - cx).abs().max((d.center[1] - cy).abs());
                context.max((2.0 * off + reach * d.side) / longer)
            });
            Ok(CutSize {
                context: wide,
                max_side: ((max_side * wide / context).round() as u32).max(1),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let faces_dir = out.join(FACES_DIR);
    let (cuts, face_bytes) = write_face_crops(&train, &sizes, &faces_dir, options.jpeg_quality)?;
    let moved: Vec<NamedCrop> = train
        .iter()
        .zip(&cuts)
        .zip(&detected)
        .filter_map(|((face, cut), detected)| {
            detected.map(|d| {
                let crop = FaceCrop::new(cut.to_crop(d.center), d.side * cut.scale(), d.angle);
                NamedCrop::new(&face.name, &crop)
            })
        })
        .collect();
    let weights = match config.network.pretrained {
        Some(Pretrained::Imagenet) => {
            let to = out.join(WEIGHTS_FILE);
            std::fs::copy(mobilenet_v2_weights_path()?, &to).map_err(io_err(&to))?;
            Some(to)
        }
        None => None,
    };
    let mut packed = config.clone();
    packed.data.labeled = PathBuf::from(FACES_DIR);
    packed.data.images = None;
    packed.data.val_fraction = 0.0;
    packed.data.max_train_faces = None;
    packed.data.detector_crops = None;
    if config.augment.detector_crop_probability > 0.0 {
        let path = out.join(DETECTOR_CROPS_FILE);
        let json = serde_json::to_string(&moved)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?;
        pipnet_infer::files::write_atomic(&path, json.as_bytes())?;
        packed.data.detector_crops = Some(PathBuf::from(DETECTOR_CROPS_FILE));
    }
    packed.train.out = PathBuf::from(RUN_DIR);
    let config_path = out.join(CONFIG_FILE);
    let text = format!(
        "# Packed by `pipnet train --pack` from {} faces of {}; relative paths are resolved\n\
         # against this file's folder. No validation faces: evaluate the graph where the data is.\n\
         {}",
        train.len(),
        config.data.labeled.display(),
        packed.to_toml()
    );
    pipnet_infer::files::write_atomic(&config_path, text.as_bytes())?;
    Ok(Pack {
        faces: train.len(),
        face_bytes,
        detector_crops: moved.len(),
        weights,
        config: config_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a detector crop lies against its face's landmark box: centre offset and side, in
    /// units of the box's longer side (unchanged by cutting and scaling the photo).
    fn relative(points: &[pipnet_core::Point], crop: &FaceCrop) -> [f32; 3] {
        let b = FaceBox::around(points).unwrap();
        let longer = b.width().max(b.height());
        let [cx, cy] = b.center();
        [
            (crop.center[0] - cx) / longer,
            (crop.center[1] - cy) / longer,
            crop.side / longer,
        ]
    }

    /// A run with detector crops packed from a few real faces: the crops found on the full
    /// photos travel, moved into the cuts, and each cut holds what augmentation can reach
    /// around its detector crop.
    #[test]
    fn test_detector_crops_travel_with_the_packed_faces() {
        let labeled =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/face68-train");
        let mut config: TrainConfig = toml::from_str("[data]\nlabeled = \"x\"\n").unwrap();
        config.data.labeled = labeled;
        config.data.max_train_faces = Some(6);
        config.augment.detector_crop_probability = 0.5;
        let dir = tempfile::tempdir().unwrap();
        let pack = pack_run(&config, dir.path(), PackOptions::default()).unwrap();
        assert_eq!(pack.faces, 6);
        assert!(
            pack.detector_crops >= 5,
            "{} of 6 found",
            pack.detector_crops
        );

        let scheme = Scheme::W300_68;
        let (mut train, _) = split_labeled(&config, scheme).unwrap();
        train.truncate(6);
        let found = detector_crops_of(&config, &train).unwrap();
        let packed_config = TrainConfig::load(&pack.config).unwrap();
        assert!(packed_config.data.detector_crops.is_some());
        let (packed, val) = split_labeled(&packed_config, scheme).unwrap();
        assert!(val.is_empty());
        let moved = detector_crops_of(&packed_config, &packed).unwrap();
        assert_eq!(moved.iter().flatten().count(), pack.detector_crops);
        let reach = config.augment.reach();
        for (face, crop) in train.iter().zip(&found) {
            let (i, twin) = packed
                .iter()
                .enumerate()
                .find(|(_, p)| p.name == face.name)
                .unwrap();
            let (Some(crop), Some(twin_crop)) = (crop, &moved[i]) else {
                assert!(crop.is_none() && moved[i].is_none(), "{}", face.name);
                continue;
            };
            let (a, b) = (
                relative(&face.points, crop),
                relative(&twin.points, twin_crop),
            );
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 0.01, "{}: {a:?} became {b:?}", face.name);
            }
            // Unless the cut met the photo's edge, it holds the widest augmented crop.
            let (w, h) = image::image_dimensions(&twin.image).unwrap();
            if w.abs_diff(h) <= 1 {
                let half = reach * twin_crop.side / 2.0;
                for (c, limit) in twin_crop.center.iter().zip([w, h]) {
                    assert!(
                        c - half > -1.5 && c + half < limit as f32 + 0.5,
                        "{}",
                        face.name
                    );
                }
            }
        }
    }

    /// A crops file that names none of the run's faces is an error, not a run without them.
    #[test]
    fn test_a_crops_file_of_other_faces_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let crops = dir.path().join(DETECTOR_CROPS_FILE);
        let other = NamedCrop::new("other", &FaceCrop::new([1.0, 2.0], 3.0, 0.0));
        std::fs::write(&crops, serde_json::to_string(&[other]).unwrap()).unwrap();
        let labeled =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/face68-train");
        let mut config: TrainConfig = toml::from_str("[data]\nlabeled = \"x\"\n").unwrap();
        config.data.labeled = labeled;
        config.data.detector_crops = Some(crops);
        config.augment.detector_crop_probability = 0.5;
        let (train, _) = split_labeled(&config, Scheme::W300_68).unwrap();
        let err = detector_crops_of(&config, &train[..3]).unwrap_err();
        assert!(err.to_string().contains("name none of the 3"), "{err}");
        config.augment.detector_crop_probability = 0.0;
        assert!(
            detector_crops_of(&config, &train[..3])
                .unwrap()
                .iter()
                .all(Option::is_none)
        );
    }

    #[test]
    fn test_a_distilled_run_is_not_packed() {
        let config: TrainConfig =
            toml::from_str("[data]\nlabeled = \"x\"\n[distill]\nteacher = \"t.onnx\"\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = pack_run(&config, dir.path(), PackOptions::default()).unwrap_err();
        assert!(err.to_string().contains("[distill]"), "{err}");
    }
}
