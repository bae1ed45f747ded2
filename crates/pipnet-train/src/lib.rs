//! Training PIPNet and writing it as ONNX graphs that follow the pipnet model contract
//! (`docs/model-contract.md`).
//!
//! Data flow: [`config`] (train.toml) -> labeled faces (pipnet-infer) -> [`augment`] (random
//! crops through the runtime's own sampler) -> [`targets`] -> [`model`] (burn) -> [`loss`] ->
//! [`trainer`] (Adam, checkpoints, resume, validation through ONNX Runtime; [`average`] keeps
//! an average of the weights). [`network`]
//! describes the inference network with BatchNorm folded in, and [`emit`] writes it as an ONNX
//! graph with full contract metadata; [`seeded`] makes untrained graphs for tests;
//! [`imagenet`] provides pretrained MobileNetV2 weights. [`stc`]
//! adds self-training: pseudo-labels on unlabeled faces teach coarse curriculum heads.
//! [`pack`] writes a compact, self-contained copy of a run's training data and config for a
//! machine the photos cannot travel to (a lent GPU).

pub mod augment;
pub mod average;
mod batches;
pub mod config;
mod data;
pub mod distill;
pub mod emit;
pub mod graph_init;
pub mod imagenet;
pub mod loss;
pub mod model;
pub mod network;
pub mod pack;
pub mod run;
pub mod seeded;
pub mod stc;
pub mod targets;
pub mod trainer;

/// Protobuf types generated from the vendored `proto/onnx.proto`.
#[allow(clippy::all, missing_docs)]
pub mod onnx {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use emit::{emit_model, write_model};
pub use network::{Backbone, ConvLayer, NetworkSpec, PipNetWeights};

/// Errors from building or writing a graph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("network specification: {0}")]
    Spec(String),
    #[error(transparent)]
    Core(#[from] pipnet_core::Error),
    #[error(transparent)]
    Infer(#[from] pipnet_infer::Error),
    #[error("writing {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
