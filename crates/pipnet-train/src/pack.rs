//! A run packed for another machine (a lent GPU, reached by copying at most a few tens of
//! megabytes): the training faces cut down to what augmentation can reach at the network's
//! input scale, the ImageNet weights when the run starts from them, and a `train.toml` that
//! trains on exactly those faces. The validation faces stay behind: the packed run has none,
//! and its graph is measured where the full data is, with `pipnet eval`.

use std::path::{Path, PathBuf};

use pipnet_core::{CropRule, Scheme};
use pipnet_infer::dataset::write_face_crops;

use crate::config::{Pretrained, TrainConfig};
use crate::data::split_labeled;
use crate::imagenet::{WEIGHTS_FILE, mobilenet_v2_weights_path};
use crate::run::io_err;
use crate::{Error, Result};

/// The packed faces' folder and config inside a pack.
pub const FACES_DIR: &str = "faces";
pub const CONFIG_FILE: &str = "train.toml";
/// The run folder the packed config names, inside the pack.
pub const RUN_DIR: &str = "run";

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
    /// The ImageNet weights copied in, if the run starts from them.
    pub weights: Option<PathBuf>,
    pub config: PathBuf,
}

/// Packs `config`'s training faces into `out` (see the module docs). Self-training runs are
/// refused: their unlabeled photos would have to travel too.
pub fn pack_run(config: &TrainConfig, out: &Path, options: PackOptions) -> Result<Pack> {
    if config.stc.is_some() || config.data.label_fraction.is_some() {
        return Err(Error::Spec(
            "a self-training run cannot be packed (its unlabeled photos would travel too); \
             pack a supervised config"
                .into(),
        ));
    }
    if !(options.resolution > 0.0 && options.resolution.is_finite()) {
        return Err(Error::Spec(format!(
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
    let max_side = (config.network.input_size as f32 * reach * options.resolution).round() as u32;
    let faces_dir = out.join(FACES_DIR);
    let face_bytes = write_face_crops(
        &train,
        &faces_dir,
        context,
        max_side.max(1),
        options.jpeg_quality,
    )?;
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
    pipnet_infer::folder::write_atomic(&config_path, text.as_bytes())?;
    Ok(Pack {
        faces: train.len(),
        face_bytes,
        weights,
        config: config_path,
    })
}
