//! Training end to end on a handful of real faces: the loss falls, a resumed run matches an
//! uninterrupted one, and the exported graph computes what the burn network computes.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use pipnet_infer::{LandmarkModel, SessionOptions};
use pipnet_train::augment::Augmentation;
use pipnet_train::config::{DataConfig, NetworkConfig, Schedule, TrainConfig, TrainOptions};
use pipnet_train::trainer::{export_checkpoint, load_network, load_state, train};

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
            scheme: "300w-68".into(),
            val_fraction: 0.01,
            split_seed: 1,
            max_train_faces: Some(8),
        },
        network: NetworkConfig {
            input_size: 64,
            widths: [8, 16, 16, 32],
            last_stage_stride: 1,
            num_neighbors: 10,
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
    let net = load_network(checkpoint, &state.spec, &Device::flex()).unwrap();
    let w = net.to_weights(&state.spec).unwrap();
    let mut values = w.stem.weight.clone();
    for stage in &w.stages {
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
    let a = all_weights(&straight.path().join("checkpoint"));
    let b = all_weights(&split.path().join("checkpoint"));
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-6, "largest weight difference {worst}");
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
    let device = Device::flex();
    let net = load_network(&checkpoint, &state.spec, &device).unwrap();
    let input: Vec<f32> = (0..2 * 3 * 64 * 64)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let out = net.forward(Tensor::from_data(
        TensorData::new(input.clone(), [2, 3, 64, 64]),
        &device,
    ));
    let burn_maps: Vec<Vec<f32>> = [out.cls, out.off_x, out.off_y, out.nb_x, out.nb_y]
        .into_iter()
        .map(|t| {
            t.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        })
        .collect();

    let mut model = LandmarkModel::load(&onnx, &SessionOptions::default()).unwrap();
    let ort_maps = model.run_raw(&input, 2).unwrap();
    for (name, (b, o)) in ["cls", "off_x", "off_y", "nb_x", "nb_y"]
        .iter()
        .zip(burn_maps.iter().zip(&ort_maps))
    {
        assert_eq!(b.len(), o.len(), "{name}");
        let worst = b
            .iter()
            .zip(o)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-4,
            "{name}: burn and ONNX Runtime differ by {worst}"
        );
    }
}
