//! Untrained contract graphs with deterministic weights, for tests and benchmarks: they load,
//! run and decode like a real model, but their landmarks mean nothing.

use std::path::Path;

use pipnet_core::contract::{IMAGENET_MEAN, IMAGENET_STD, ModelMetadata, OutputForm};
use pipnet_core::{CropRule, NeighborIndex, Point, Scheme};

use crate::emit::write_model;
use crate::network::{NetworkSpec, PipNetWeights};
use crate::{Error, Result};

/// A stand-in mean face: the scheme's points spread on an ellipse inside the crop. Real models
/// carry the mean face of their training set instead.
pub fn synthetic_mean_face(num_landmarks: usize) -> Vec<Point> {
    (0..num_landmarks)
        .map(|i| {
            let t = i as f32 / num_landmarks as f32 * std::f32::consts::TAU;
            [0.5 + 0.35 * t.cos(), 0.5 + 0.4 * t.sin()]
        })
        .collect()
}

/// Contract metadata for `spec` with a synthetic mean face.
pub fn synthetic_metadata(spec: &NetworkSpec, scheme: Scheme) -> Result<ModelMetadata> {
    if spec.num_landmarks != scheme.num_landmarks() {
        return Err(Error::Config(format!(
            "{} landmarks, scheme {scheme} has {}",
            spec.num_landmarks,
            scheme.num_landmarks()
        )));
    }
    let meanface = synthetic_mean_face(spec.num_landmarks);
    Ok(ModelMetadata {
        scheme,
        input_size: spec.input_size,
        stride: spec.stride(),
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
        neighbors: NeighborIndex::from_mean_face(&meanface, spec.num_neighbors)?,
        meanface,
        crop: CropRule::default(),
        outputs: OutputForm::Raw,
        backbone: Some(spec.describe()),
        train_data: Some("none (seeded random weights, for tests)".into()),
        metrics: None,
        precision: None,
    })
}

/// A small 300w-68 network that runs in milliseconds: 64x64 input, stride 16, 4x4 grid.
pub fn tiny_spec() -> NetworkSpec {
    NetworkSpec {
        input_size: 64,
        backbone: crate::network::Backbone::Resnet18,
        widths: [8, 16, 16, 32],
        last_stage_stride: 1,
        num_landmarks: 68,
        num_neighbors: 10,
    }
}

/// Writes a seeded 300w-68 graph for `spec` to `path` and returns its metadata.
pub fn write_seeded_model(path: &Path, spec: NetworkSpec, seed: u64) -> Result<ModelMetadata> {
    let meta = synthetic_metadata(&spec, Scheme::W300_68)?;
    let weights = PipNetWeights::seeded(spec, seed)?;
    write_model(&weights, &meta, path)?;
    Ok(meta)
}
