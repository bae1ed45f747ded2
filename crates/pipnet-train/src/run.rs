//! A run folder: its progress and provenance (`RunState`), the per-epoch records
//! (`metrics.csv`), and the checkpoint that lets a run resume or be exported.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;
use pipnet_core::contract::{IMAGENET_MEAN, IMAGENET_STD, ModelMetadata, OutputForm};
use pipnet_core::{CropRule, NeighborIndex, Point, Scheme};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::emit::write_model;
use crate::model::PipNet;
use crate::network::NetworkSpec;
use crate::{Error, Result};

/// One line of `metrics.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    pub train_loss: f32,
    pub val_nme: f32,
    pub val_failure_rate: f32,
    pub lr: f64,
    /// Wall time of training in this epoch (validation excluded).
    pub seconds: f64,
    pub images_per_second: f64,
    /// Self-training round in force (0: labeled faces only).
    #[serde(default)]
    pub round: usize,
    /// With `train.ema`, `val_nme` is the weight average's and this the trained network's own.
    #[serde(default)]
    pub raw_val_nme: Option<f32>,
}

/// Everything besides the weights needed to continue a run or export it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs completed.
    pub epoch: usize,
    pub step: usize,
    pub spec: NetworkSpec,
    pub scheme: String,
    pub crop_scale: f32,
    pub meanface: Vec<Point>,
    pub neighbors: Vec<u32>,
    pub history: Vec<EpochRecord>,
    pub train_faces: usize,
    pub val_faces: usize,
    /// Curriculum heads of the trained network (not exported).
    #[serde(default)]
    pub coarse_levels: usize,
    /// Unlabeled images offered to self-training (0 without it).
    #[serde(default)]
    pub unlabeled_images: usize,
    /// Where they came from: the names of the `[stc]` folders or files, and the training
    /// photos whose labels `label_fraction` left out.
    #[serde(default)]
    pub unlabeled_sources: Vec<String>,
    /// Where the backbone's initial weights came from (`None`: random).
    #[serde(default)]
    pub pretrained: Option<String>,
    /// The run's length in epochs when `max_minutes` cut it short of the config's.
    #[serde(default)]
    pub planned_epochs: Option<usize>,
    /// The graph that taught the run (`[distill]`): name and SHA-256.
    #[serde(default)]
    pub teacher: Option<String>,
    /// The checkpoint the run started from (`train.init`), and its epoch.
    #[serde(default)]
    pub init: Option<String>,
}

impl RunState {
    /// Contract metadata for graphs exported from this run.
    pub fn metadata(&self, metrics: Option<String>) -> Result<ModelMetadata> {
        let scheme = Scheme::from_name(&self.scheme)?;
        Ok(ModelMetadata {
            scheme,
            input_size: self.spec.input_size,
            stride: self.spec.stride(),
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            meanface: self.meanface.clone(),
            neighbors: NeighborIndex::from_rows(
                self.spec.num_landmarks,
                self.spec.num_neighbors,
                self.neighbors.clone(),
            )?,
            crop: CropRule {
                scale: self.crop_scale,
                ..CropRule::default()
            },
            outputs: OutputForm::Raw,
            backbone: Some(match &self.pretrained {
                Some(weights) => format!("{} init={weights}", self.spec.describe()),
                None => self.spec.describe(),
            }),
            train_data: Some(self.train_data()),
            metrics,
            precision: None,
        })
    }
}

impl RunState {
    fn train_data(&self) -> String {
        let mut text = format!(
            "face68-train (300-W AFW+HELEN+LFPW, research use only): {} train faces, {} validation",
            self.train_faces, self.val_faces
        );
        if self.unlabeled_images > 0 {
            text.push_str(&format!(
                "; self-trained (STC) on pseudo-labels of {} unlabeled images from {}",
                self.unlabeled_images,
                self.unlabeled_sources.join(", ")
            ));
        }
        if let Some(teacher) = &self.teacher {
            text.push_str(&format!("; distilled from {teacher}"));
        }
        if let Some(init) = &self.init {
            text.push_str(&format!("; fine-tuned from {init}"));
        }
        text
    }
}

/// Names of the unlabeled data a self-training run draws on, for the graph's provenance.
pub(crate) fn unlabeled_sources(config: &TrainConfig) -> Vec<String> {
    let Some(stc) = &config.stc else {
        return Vec::new();
    };
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or(p.as_os_str())
            .to_string_lossy()
            .into_owned()
    };
    let mut names: Vec<String> = stc.unlabeled.iter().map(|p| name(p)).collect();
    if config.data.label_fraction.is_some() {
        names.push(format!(
            "{} photos with their labels withheld",
            name(&config.data.labeled)
        ));
    }
    names
}

/// The files of a run folder.
pub struct RunPaths {
    pub root: PathBuf,
}

impl RunPaths {
    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }
    pub fn last_model(&self) -> PathBuf {
        self.root.join("last.onnx")
    }
    pub fn best_model(&self) -> PathBuf {
        self.root.join("best.onnx")
    }
    /// With `train.ema`, the trained network's own graph (`last.onnx` is the average's).
    pub fn last_raw_model(&self) -> PathBuf {
        self.root.join("last-raw.onnx")
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The weight average's file in a checkpoint (`train.ema`).
pub(crate) const AVERAGE_FILE: &str = "average.bpk";

/// Saves model, its weight average if any, optimizer and state into `checkpoint/` atomically:
/// everything is written to `checkpoint.new/`, which then replaces the old folder.
pub(crate) fn save_checkpoint(
    paths: &RunPaths,
    model: &PipNet,
    average: Option<&PipNet>,
    optimizer_bytes: &[u8],
    state: &RunState,
) -> Result<()> {
    let dir = paths.checkpoint();
    let staging = paths.root.join("checkpoint.new");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
    // `valid()` folds pending BatchNorm running-statistic updates in, so the record is current.
    model
        .valid()
        .save_file(staging.join("model.bpk"))
        .map_err(|e| Error::Checkpoint(format!("saving model: {e:?}")))?;
    if let Some(average) = average {
        average
            .clone()
            .save_file(staging.join(AVERAGE_FILE))
            .map_err(|e| Error::Checkpoint(format!("saving the weight average: {e:?}")))?;
    }
    std::fs::write(staging.join("optimizer.bpk"), optimizer_bytes).map_err(io_err(&staging))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Checkpoint(e.to_string()))?;
    std::fs::write(staging.join("state.json"), json).map_err(io_err(&staging))?;
    let old = paths.root.join("checkpoint.old");
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(&dir, &old).map_err(io_err(&dir))?;
    }
    std::fs::rename(&staging, &dir).map_err(io_err(&dir))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Reads a run's progress (`checkpoint/state.json`).
pub fn load_state(checkpoint: &Path) -> Result<RunState> {
    let path = checkpoint.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))
}

/// Loads a checkpoint's network (described by its `state`) onto `device`.
pub fn load_network(checkpoint: &Path, state: &RunState, device: &Device) -> Result<PipNet> {
    load_weights(&checkpoint.join("model.bpk"), state, device)
}

/// Loads a checkpoint's weight average (`train.ema`), if it has one.
pub fn load_average(
    checkpoint: &Path,
    state: &RunState,
    device: &Device,
) -> Result<Option<PipNet>> {
    let path = checkpoint.join(AVERAGE_FILE);
    path.is_file()
        .then(|| load_weights(&path, state, device))
        .transpose()
}

fn load_weights(path: &Path, state: &RunState, device: &Device) -> Result<PipNet> {
    // Seeded only so the draw takes the init lock; the loaded weights replace it.
    PipNet::seeded(&state.spec, state.coarse_levels, device, 0)?
        .try_load_file(path)
        .map_err(|e| Error::Checkpoint(format!("loading {}: {e:?}", path.display())))
}

/// A checkpoint's state and network, refused unless the network is `spec` with
/// `coarse_levels` curriculum heads (what a config asks for); `what` names the checkpoint's
/// role in the error (`checkpoint`, `train.init`).
pub(crate) fn load_matching(
    checkpoint: &Path,
    spec: &NetworkSpec,
    coarse_levels: usize,
    device: &Device,
    what: &str,
) -> Result<(RunState, PipNet)> {
    let state = load_state(checkpoint)?;
    if state.spec != *spec || state.coarse_levels != coarse_levels {
        return Err(Error::Checkpoint(format!(
            "{what} {}: its network {:?} with {} curriculum heads differs from the config's \
             {spec:?} with {coarse_levels}",
            checkpoint.display(),
            state.spec,
            state.coarse_levels
        )));
    }
    let model = load_network(checkpoint, &state, device)?;
    Ok((state, model))
}

/// Writes the checkpoint's network as a contract ONNX graph (its weight average when the run
/// kept one: what the run validated); returns its metadata.
pub fn export_checkpoint(checkpoint: &Path, out: &Path) -> Result<ModelMetadata> {
    let state = load_state(checkpoint)?;
    let device = Device::flex();
    let model = match load_average(checkpoint, &state, &device)? {
        Some(average) => average,
        None => load_network(checkpoint, &state, &device)?,
    };
    let metrics = state.history.last().map(|r| {
        format!(
            "val_nme_ip={:.4} (epoch {}, own split of face68-train)",
            r.val_nme, r.epoch
        )
    });
    let meta = state.metadata(metrics)?;
    write_model(&model.to_weights(&state.spec)?, &meta, out)?;
    Ok(meta)
}

pub(crate) fn write_metrics(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut csv = String::from(
        "epoch,train_loss,val_nme,val_fr,lr,seconds,images_per_second,round,raw_val_nme\n",
    );
    for r in history {
        let raw = r.raw_val_nme.map(|v| format!("{v:.6}")).unwrap_or_default();
        csv.push_str(&format!(
            "{},{:.6},{:.6},{:.4},{:.3e},{:.1},{:.1},{},{raw}\n",
            r.epoch,
            r.train_loss,
            r.val_nme,
            r.val_failure_rate,
            r.lr,
            r.seconds,
            r.images_per_second,
            r.round
        ));
    }
    Ok(pipnet_infer::files::write_atomic(path, csv.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed run must see the history it saved: serde_json's default float parser is off
    /// by one ulp for values like these (hence its `float_roundtrip` feature).
    #[test]
    fn test_epoch_record_reads_back_bit_for_bit() {
        let record = EpochRecord {
            epoch: 1,
            train_loss: 2.643083,
            val_nme: 0.6624774,
            val_failure_rate: 1.0,
            lr: 0.003,
            seconds: 18.865084376975894,
            images_per_second: 9.187391571124515,
            round: 0,
            raw_val_nme: Some(0.6624775),
        };
        let json = serde_json::to_string(&record).unwrap();
        let back: EpochRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.seconds.to_bits(), record.seconds.to_bits());
        assert_eq!(back, record);
    }
}
