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

/// Errors from training, and from building or writing a graph. Each message says what failed
/// and what to do; the variant says where the fault lies.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A config, network specification or data set that cannot be trained as given.
    #[error("{0}")]
    Config(String),
    /// A checkpoint, graph or weights file that cannot be read or written, or does not fit the
    /// network or the run (a teacher graph, `train.init`, a resumed run, pseudo-labels).
    #[error("{0}")]
    Checkpoint(String),
    /// The loss stopped being a finite number.
    #[error(
        "training diverged at epoch {epoch}, step {step}: the loss became {loss}; lower the \
         learning rate (train.lr) or check the data"
    )]
    Diverged {
        epoch: usize,
        step: usize,
        loss: f32,
    },
    /// The tensor backend failed: a device that would not open, a tensor that could not be
    /// read, a batch worker that panicked.
    #[error("training backend: {0}")]
    Backend(String),
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
