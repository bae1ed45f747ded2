//! Training end to end on a handful of real faces: the loss falls, a resumed run matches an
//! uninterrupted one (with and without self-training rounds), and the exported graph computes
//! what the burn network computes.

mod common;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use pipnet_infer::{LandmarkModel, SessionOptions};
use pipnet_train::augment::Augmentation;
use pipnet_train::config::{
    DataConfig, NetworkConfig, Schedule, StcConfig, TrainConfig, TrainOptions,
};
use pipnet_train::distill::DistillConfig;
use pipnet_train::model::PipNet;
use pipnet_train::network::BackboneWeights;
use pipnet_train::stc::{UnlabeledImage, load_pseudo_labels, pseudo_label, round_path};
#[cfg(feature = "wgpu")]
use pipnet_train::trainer::training_device;
use pipnet_train::trainer::{
    Event, RunState, export_checkpoint, load_average, load_network, load_state, train,
};

/// burn's CPU backend splits reductions across the shared rayon pool adaptively, so two
/// trainings running at once in one process are not bit-reproducible; these tests take turns.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn labeled_faces() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/face68-train")
}

/// A small network on 8 real faces, no augmentation, constant learning rate.
fn tiny_config(out: &Path, epochs: usize) -> TrainConfig {
    TrainConfig {
        data: DataConfig {
            labeled: labeled_faces(),
            images: None,
            scheme: "300w-68".into(),
            val_fraction: 0.01,
            split_seed: 1,
            max_train_faces: Some(8),
            label_fraction: None,
            detector_crops: None,
        },
        network: NetworkConfig {
            input_size: 64,
            widths: [8, 16, 16, 32],
            last_stage_stride: 1,
            num_neighbors: 10,
            ..Default::default()
        },
        train: TrainOptions {
            epochs,
            batch_size: 4,
            lr: 3e-3,
            schedule: Schedule::Steps {
                milestones: vec![],
                gamma: 1.0,
            },
            seed: 5,
            out: out.to_path_buf(),
            ..Default::default()
        },
        augment: Augmentation {
            rotation_deg: 10.0,
            flip_probability: 0.5,
            ..Default::default()
        },
        stc: None,
        distill: None,
    }
}

#[test]
fn test_tiny_run_lowers_the_loss_on_real_faces() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let state = train(&tiny_config(dir.path(), 8), false, |_| {}).unwrap();
    let first = state.history.first().unwrap().train_loss;
    let last = state.history.last().unwrap().train_loss;
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    assert!(state.history.iter().all(|r| r.val_nme.is_finite()));
    for file in [
        "best.onnx",
        "last.onnx",
        "metrics.csv",
        "checkpoint/state.json",
    ] {
        assert!(dir.path().join(file).is_file(), "{file}");
    }
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 9, "header + 8 epochs");
}

fn all_weights(checkpoint: &Path) -> Vec<f32> {
    let state = load_state(checkpoint).unwrap();
    let net = load_network(checkpoint, &state, &Device::flex()).unwrap();
    network_weights(&net, &state)
}

fn network_weights(net: &PipNet, state: &RunState) -> Vec<f32> {
    let w = net.to_weights(&state.spec).unwrap();
    let BackboneWeights::Resnet18 { stem, stages } = &w.backbone else {
        panic!("the tiny network is a ResNet");
    };
    let mut values = stem.weight.clone();
    for stage in stages {
        for block in stage {
            values.extend(&block.conv1.weight);
            values.extend(&block.conv2.bias);
        }
    }
    for head in &w.heads {
        values.extend(&head.weight);
        values.extend(&head.bias);
    }
    values
}

fn assert_same_weights(a: &Path, b: &Path) {
    assert_close(
        &all_weights(&a.join("checkpoint")),
        &all_weights(&b.join("checkpoint")),
    );
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-6, "largest weight difference {worst}");
}

#[test]
fn test_resume_continues_exactly() {
    let _turn = one_at_a_time();
    let straight = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();
    train(&tiny_config(straight.path(), 4), false, |_| {}).unwrap();
    train(&tiny_config(split.path(), 2), false, |_| {}).unwrap();
    let resumed = train(&tiny_config(split.path(), 4), true, |_| {}).unwrap();
    assert_eq!(resumed.epoch, 4);
    assert_eq!(resumed.history.len(), 4);
    assert_same_weights(straight.path(), split.path());
}

/// The tiny run plus self-training on six real unlabeled faces: rounds start at epochs 1 and
/// 2, and each epoch after them adds 4 pseudo-labeled samples to the 8 labeled ones.
fn stc_config(out: &Path, epochs: usize) -> TrainConfig {
    let lfw = labeled_faces().join("../lfw-unlabeled");
    let mut unlabeled: Vec<PathBuf> = std::fs::read_dir(&lfw)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    unlabeled.sort();
    unlabeled.truncate(6);
    TrainConfig {
        stc: Some(StcConfig {
            unlabeled,
            coarse_levels: 2,
            rounds: vec![1, 2],
            pseudo_ratio: 0.5,
            ..Default::default()
        }),
        ..tiny_config(out, epochs)
    }
}

#[test]
fn test_stc_rounds_keep_their_pseudo_labels_and_resume_exactly() {
    let _turn = one_at_a_time();
    let straight = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();
    let state = train(&stc_config(straight.path(), 4), false, |_| {}).unwrap();
    let rounds: Vec<usize> = state.history.iter().map(|r| r.round).collect();
    assert_eq!(rounds, [0, 1, 2, 2]);
    assert_eq!((state.coarse_levels, state.unlabeled_images), (2, 6));

    for round in [1, 2] {
        let labels = load_pseudo_labels(&round_path(straight.path(), round)).unwrap();
        assert!(!labels.is_empty() && labels.len() <= 6, "round {round}");
        for label in &labels {
            assert_eq!(label.round, round);
            assert_eq!((label.points.len(), label.scores.len()), (68, 68));
            assert!(label.points.iter().flatten().all(|v| v.is_finite()));
        }
    }

    // Stop after the second round was labeled; the resumed sitting reads its labels back.
    train(&stc_config(split.path(), 3), false, |_| {}).unwrap();
    let mut reused = Vec::new();
    train(&stc_config(split.path(), 4), true, |event| {
        if let Event::PseudoLabels {
            round, reused: r, ..
        } = event
        {
            reused.push((round, r));
        }
    })
    .unwrap();
    assert_eq!(reused, [(2, true)]);
    assert_same_weights(straight.path(), split.path());

    // Only the main head is exported: the graph passes the contract checks at the 4x4 grid.
    let onnx = straight.path().join("exported.onnx");
    export_checkpoint(&straight.path().join("checkpoint"), &onnx).unwrap();
    let mut model = LandmarkModel::load(&onnx, &SessionOptions::default()).unwrap();
    let maps = model.run_raw(&vec![0.0; 3 * 64 * 64], 1).unwrap();
    assert_eq!(maps[0].len(), 68 * 4 * 4);
    assert_eq!(maps[3].len(), 68 * 10 * 4 * 4);
    let meta = model.metadata();
    let data = meta.train_data.as_deref().unwrap_or_default();
    assert!(
        data.contains("6 unlabeled images from Aaron_Eckhart_0001.jpg"),
        "{data}"
    );
}

#[test]
fn test_exported_graph_matches_the_burn_network() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    train(&tiny_config(dir.path(), 2), false, |_| {}).unwrap();
    let checkpoint = dir.path().join("checkpoint");
    let onnx = dir.path().join("exported.onnx");
    let meta = export_checkpoint(&checkpoint, &onnx).unwrap();
    assert_eq!(meta.input_size, 64);

    let state = load_state(&checkpoint).unwrap();
    let net = load_network(&checkpoint, &state, &Device::flex()).unwrap();
    common::assert_graph_matches_network(&net, &onnx, 2, 64);
}

/// With `train.ema` the run validates and writes the weight average, records the trained
/// network's own figure beside it, exports the average, starts a `train.init` run from it, and
/// a resumed run continues the same average; a run that kept none cannot resume into one.
#[test]
fn test_weight_average_is_what_the_run_validates_writes_and_resumes() {
    let _turn = one_at_a_time();
    let averaged = |out: &Path, epochs| {
        let mut config = tiny_config(out, epochs);
        config.train.ema = Some(0.9);
        config
    };
    let straight = tempfile::tempdir().unwrap();
    let state = train(&averaged(straight.path(), 4), false, |_| {}).unwrap();
    for r in &state.history {
        let raw = r.raw_val_nme.expect("the network's own NME is recorded");
        assert!(
            raw.is_finite() && raw != r.val_nme,
            "{raw} vs {}",
            r.val_nme
        );
    }
    let csv = std::fs::read_to_string(straight.path().join("metrics.csv")).unwrap();
    assert!(
        csv.lines().next().unwrap().ends_with(",raw_val_nme"),
        "{csv}"
    );

    let checkpoint = straight.path().join("checkpoint");
    let device = Device::flex();
    let average = load_average(&checkpoint, &state, &device)
        .unwrap()
        .expect("the checkpoint keeps the average");
    let network = load_network(&checkpoint, &state, &device).unwrap();
    common::assert_graph_matches_network(&average, &straight.path().join("last.onnx"), 2, 64);
    common::assert_graph_matches_network(&network, &straight.path().join("last-raw.onnx"), 2, 64);
    let exported = straight.path().join("exported.onnx");
    export_checkpoint(&checkpoint, &exported).unwrap();
    common::assert_graph_matches_network(&average, &exported, 2, 64);

    // A run started from the checkpoint starts from the average: with the learning rate at
    // zero its heads (no BatchNorm after them) stay the average's.
    let heads = |net: &PipNet| {
        let w = net.to_weights(&state.spec).unwrap();
        w.heads
            .iter()
            .flat_map(|h| h.weight.clone())
            .collect::<Vec<f32>>()
    };
    let tuned = tempfile::tempdir().unwrap();
    let mut still = tiny_config(tuned.path(), 1);
    still.train.lr = 0.0;
    still.train.init = Some(checkpoint.clone());
    let tuned_state = train(&still, false, |_| {}).unwrap();
    let tuned_net = load_network(&tuned.path().join("checkpoint"), &tuned_state, &device).unwrap();
    assert_close(&heads(&tuned_net), &heads(&average));
    assert_ne!(heads(&tuned_net), heads(&network));

    let split = tempfile::tempdir().unwrap();
    train(&averaged(split.path(), 2), false, |_| {}).unwrap();
    let resumed = train(&averaged(split.path(), 4), true, |_| {}).unwrap();
    let resumed_average = load_average(&split.path().join("checkpoint"), &resumed, &device)
        .unwrap()
        .unwrap();
    assert_close(
        &network_weights(&average, &state),
        &network_weights(&resumed_average, &resumed),
    );

    let plain = tempfile::tempdir().unwrap();
    train(&tiny_config(plain.path(), 1), false, |_| {}).unwrap();
    let err = train(&averaged(plain.path(), 2), true, |_| {}).unwrap_err();
    assert!(err.to_string().contains("no weight average"), "{err}");
    let mut wrong = averaged(plain.path(), 2);
    wrong.train.ema = Some(1.0);
    let err = train(&wrong, false, |_| {}).unwrap_err();
    assert!(err.to_string().contains("train.ema"), "{err}");
}

/// A time budget that one epoch already spends ends the run there, and the checkpoint
/// remembers the shortened plan.
#[test]
fn test_time_budget_cuts_the_run_short() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(dir.path(), 8);
    config.train.max_minutes = Some(1e-6);
    let state = train(&config, false, |_| {}).unwrap();
    assert_eq!(state.epoch, 1);
    assert_eq!(state.planned_epochs, Some(1));
    assert_eq!(load_state(&dir.path().join("checkpoint")).unwrap(), state);
    assert!(dir.path().join("last.onnx").is_file());
}

/// The wgpu backend (Vulkan) trains the same network: the loss falls, and the graph exported
/// from its weights computes what the CPU backend and the wgpu backend compute with them. Built
/// only with `--features wgpu` (`cargo test -p pipnet-train --features wgpu --test training
/// wgpu`): Debian's lavapipe (Mesa 22.3 from bookworm, 25.0 from bookworm-backports)
/// segfaults inside `vkCreateComputePipelines` on cubecl's kernels, so the default test run,
/// which has no GPU, leaves it out.
#[cfg(feature = "wgpu")]
#[test]
fn test_wgpu_backend_trains_and_exports_what_the_cpu_computes() {
    let device = match training_device("wgpu") {
        Ok(device) => device,
        Err(e) => {
            eprintln!("SKIPPED test_wgpu_backend_trains_and_exports_what_the_cpu_computes: {e}");
            return;
        }
    };
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(dir.path(), 8);
    config.train.device = "wgpu".into();
    let state = train(&config, false, |_| {}).unwrap();
    let first = state.history.first().unwrap().train_loss;
    let last = state.history.last().unwrap().train_loss;
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    assert!(state.history.iter().all(|r| r.val_nme.is_finite()));

    let checkpoint = dir.path().join("checkpoint");
    let graph = dir.path().join("last.onnx");
    let cpu = load_network(&checkpoint, &state, &Device::flex()).unwrap();
    common::assert_graph_matches_network_on(&cpu, &Device::flex(), 1e-3, &graph, 2, 64);
    let gpu = load_network(&checkpoint, &state, &device).unwrap();
    common::assert_graph_matches_network_on(&gpu, &device, 1e-3, &graph, 2, 64);
}

/// A WFLW-style list of 98 points per face, made from real faces and their 68 points (plus the
/// midpoints of 30 neighbouring pairs): the list reader, the 98-point scheme and the trainer
/// end to end, without WFLW itself.
#[test]
fn test_trains_from_a_wflw_list() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let faces = pipnet_infer::labeled::read_pts_folder(&labeled_faces()).unwrap();
    let lines: Vec<String> = faces[..12]
        .iter()
        .map(|face| {
            let p = &face.points;
            let extra =
                (0..30).map(|i| [(p[i][0] + p[i + 1][0]) / 2.0, (p[i][1] + p[i + 1][1]) / 2.0]);
            let mut fields: Vec<String> = p
                .iter()
                .copied()
                .chain(extra)
                .flat_map(|[x, y]| [x.to_string(), y.to_string()])
                .collect();
            fields.extend(["0", "0", "1", "1", "0", "0", "0", "0", "0", "0"].map(String::from));
            fields.push(
                face.image
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
            fields.join(" ")
        })
        .collect();
    let list = dir.path().join("list_98pt_rect_attr_train.txt");
    std::fs::write(&list, lines.join("\n")).unwrap();

    let mut config = tiny_config(&dir.path().join("run"), 2);
    config.data.labeled = list;
    config.data.images = Some(labeled_faces());
    config.data.val_fraction = 0.25;
    config.augment.flip_probability = 0.0;
    let err = train(&config, false, |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("has 98 points") && err.contains("300w-68"),
        "{err}"
    );

    config.data.scheme = "wflw-98".into();
    let mut loaded = (0, 0);
    let state = train(&config, false, |event| {
        if let Event::Loaded {
            train_faces,
            val_faces,
        } = event
        {
            loaded = (train_faces, val_faces);
        }
    })
    .unwrap();
    assert_eq!(loaded.0 + loaded.1, 12);
    assert!(loaded.0 > 0 && loaded.1 > 0, "{loaded:?}");
    assert!(state.history.iter().all(|r| r.val_nme.is_finite()));
    let model = LandmarkModel::load(
        &dir.path().join("run/last.onnx"),
        &SessionOptions::default(),
    )
    .unwrap();
    assert_eq!(model.metadata().num_landmarks(), 98);
}

/// The tiny run taught by another tiny run's graph: the teacher's targets change the loss, the
/// student takes the teacher's mean face, and its graph and checkpoint name the teacher.
#[test]
fn test_distillation_learns_from_the_teacher_and_names_it() {
    let _turn = one_at_a_time();
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let [teacher_run, other_run, labels_run, taught_run, refused_run] =
        [0, 1, 2, 3, 4].map(|i| dirs[i].path());
    train(&tiny_config(teacher_run, 2), false, |_| {}).unwrap();
    let mut other = tiny_config(other_run, 1);
    other.train.seed = 6;
    train(&other, false, |_| {}).unwrap();
    let teacher = teacher_run.join("last.onnx");
    let taught = |out: &Path, teacher: &Path, epochs: usize| TrainConfig {
        distill: Some(DistillConfig {
            teacher: teacher.to_path_buf(),
            weight: 1.0,
        }),
        ..tiny_config(out, epochs)
    };

    let labels = train(&tiny_config(labels_run, 1), false, |_| {}).unwrap();
    let state = train(&taught(taught_run, &teacher, 1), false, |_| {}).unwrap();
    let (a, b) = (labels.history[0].train_loss, state.history[0].train_loss);
    assert!(
        (a - b).abs() > 1e-3 * a,
        "same loss {a} with and without a teacher"
    );
    let meta = LandmarkModel::load(&teacher, &SessionOptions::default())
        .unwrap()
        .metadata()
        .clone();
    assert_eq!(state.meanface, meta.meanface);
    assert!(state.teacher.as_deref().unwrap().contains("sha256"));
    let student =
        LandmarkModel::load(&taught_run.join("last.onnx"), &SessionOptions::default()).unwrap();
    let provenance = student.metadata().train_data.clone().unwrap();
    assert!(provenance.contains("distilled from"), "{provenance}");

    // Resuming with another teacher, or teaching a network of another grid, is refused.
    let err = train(
        &taught(taught_run, &other_run.join("last.onnx"), 2),
        true,
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("taught by"), "{err}");
    let mut wide = taught(refused_run, &teacher, 1);
    wide.network.input_size = 128;
    let err = train(&wide, false, |_| {}).unwrap_err().to_string();
    assert!(err.contains("grid"), "{err}");
}

/// `[stc] teacher_labels`: the `[distill]` teacher labels the unlabeled faces once (the labels
/// it gives through `pseudo_label` itself), and they join the epochs from their round on, with
/// no curriculum heads needed; without a teacher, or with two rounds, the config is refused.
#[test]
fn test_teacher_labels_the_unlabeled_faces_for_its_student() {
    let _turn = one_at_a_time();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let [teacher_run, student_run, refused_run] = [0, 1, 2].map(|i| dirs[i].path());
    train(&tiny_config(teacher_run, 1), false, |_| {}).unwrap();
    let teacher = teacher_run.join("last.onnx");
    let config = |out: &Path, rounds: Vec<usize>, distill: bool| {
        let mut config = stc_config(out, 3);
        let stc = config.stc.as_mut().unwrap();
        (stc.coarse_levels, stc.rounds, stc.teacher_labels) = (0, rounds, true);
        config.distill = distill.then(|| DistillConfig {
            teacher: teacher.clone(),
            weight: 0.5,
        });
        config
    };
    let state = train(&config(student_run, vec![1], true), false, |_| {}).unwrap();
    let rounds: Vec<usize> = state.history.iter().map(|r| r.round).collect();
    assert_eq!(rounds, [0, 1, 1]);
    assert_eq!(state.coarse_levels, 0);

    let labels = load_pseudo_labels(&round_path(student_run, 1)).unwrap();
    assert!(!labels.is_empty());
    let stc = config(student_run, vec![1], true).stc.unwrap();
    let images: Vec<UnlabeledImage> = stc
        .unlabeled
        .iter()
        .map(|path| UnlabeledImage {
            path: path.clone(),
            image: std::sync::Arc::new(pipnet_infer::image_io::load_rgb(path, 1 << 26).unwrap()),
        })
        .collect();
    let model = LandmarkModel::load(&teacher, &SessionOptions::default()).unwrap();
    let by_teacher = pseudo_label(model, &images, 1, stc.min_face, |_| {}).unwrap();
    assert_eq!(
        labels, by_teacher,
        "the teacher's labels, not the student's"
    );

    for (rounds, distill) in [(vec![1], false), (vec![1, 2], true)] {
        let err = train(&config(refused_run, rounds, distill), false, |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("teacher_labels"), "{err}");
    }
}

/// `train.init` starts from another run's checkpoint: its weights (the first epoch's loss is
/// that of a trained network, not a fresh one), mean face and provenance.
#[test]
fn test_init_fine_tunes_from_a_checkpoint() {
    let _turn = one_at_a_time();
    let (first, tuned) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let trained = train(&tiny_config(first.path(), 6), false, |_| {}).unwrap();
    let mut config = tiny_config(tuned.path(), 1);
    config.train.init = Some(first.path().join("checkpoint"));
    config.augment.detector_crop_probability = 0.5;
    let state = train(&config, false, |_| {}).unwrap();
    let fresh = trained.history[0].train_loss;
    let resumed = state.history[0].train_loss;
    assert!(
        resumed < 0.8 * fresh,
        "loss {resumed} after init vs {fresh} fresh"
    );
    assert_eq!(state.meanface, trained.meanface);
    assert!(state.init.as_deref().unwrap().contains("(epoch 6)"));
    let graph =
        LandmarkModel::load(&tuned.path().join("last.onnx"), &SessionOptions::default()).unwrap();
    let provenance = graph.metadata().train_data.clone().unwrap();
    assert!(provenance.contains("fine-tuned from"), "{provenance}");

    let mut other = tiny_config(tuned.path().join("other").as_path(), 1);
    other.network.input_size = 128;
    other.train.init = Some(first.path().join("checkpoint"));
    let err = train(&other, false, |_| {}).unwrap_err().to_string();
    assert!(err.contains("train.init"), "{err}");
}

/// `train.init` may name a trained graph instead of a checkpoint: the shipped default (256 px)
/// starts a 192-px run with its layers, mean face and provenance, and validates after one
/// barely-moving epoch near its own accuracy at that size (0.041 on the whole validation split),
/// far from a fresh network's. A quantized graph, or one of another network, cannot start it.
#[test]
fn test_init_starts_from_a_trained_graph_at_another_input_size() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let default = models.join("pipnet-mbv2-256-face68.onnx");
    let config = |init: &Path, out: &Path| {
        let mut config = tiny_config(out, 1);
        config.network = NetworkConfig {
            input_size: 192,
            backbone: pipnet_train::Backbone::MobilenetV2,
            last_stage_stride: 2,
            num_neighbors: 10,
            ..Default::default()
        };
        config.train.lr = 1e-6;
        config.train.init = Some(init.to_path_buf());
        config
    };
    let state = train(&config(&default, dir.path()), false, |_| {}).unwrap();
    let graph = LandmarkModel::load(&default, &SessionOptions::default()).unwrap();
    assert_eq!(state.meanface, graph.metadata().meanface);
    let init = state.init.as_deref().unwrap();
    assert!(init.contains(&graph.id().sha256), "{init}");
    let nme = state.history[0].val_nme;
    assert!(
        nme < 0.07,
        "validation NME {nme} after starting from the default"
    );

    let quantized = models.join("pipnet-mbv2-256-face68-int8.onnx");
    let err = train(&config(&quantized, &dir.path().join("int8")), false, |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("train.init") && err.contains("int8"), "{err}");
    // A float graph of another network: refused at its first layer, naming the graph.
    let resnet = models.join("pipnet-r18h-128-face68.onnx");
    let err = train(&config(&resnet, &dir.path().join("resnet")), false, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pipnet-r18h-128-face68.onnx") && err.contains("graph convolution"),
        "{err}"
    );
}
