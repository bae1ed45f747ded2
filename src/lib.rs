//! PIPNet facial landmark detection in Rust.
//!
//! This crate gathers the workspace for users and owns the end-to-end tests and benchmarks:
//! - [`core`]: schemes, mean face and neighbour index, PIP decode + merge, crop geometry,
//!   metrics and annotation formats (no I/O);
//! - [`infer`]: ONNX Runtime provisioning, contract-checked model loading, preprocessing,
//!   batched inference and folder annotation;
//! - [`train`]: the network description and the ONNX emitter.

pub use pipnet_core as core;
pub use pipnet_infer as infer;
pub use pipnet_train as train;
