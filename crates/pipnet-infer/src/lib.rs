//! Running PIPNet ONNX graphs through ONNX Runtime.
//!
//! Data flow: [`image_io`] (decode, EXIF, colour) -> crop ([`pipnet_core::FaceCrop`]) ->
//! [`preprocess`] (resize + normalise into the input tensor) -> [`model`] (session run, PIP
//! decode + merge) -> back-projection to image pixels. [`runtime`] provides the ONNX Runtime
//! library itself; [`dataset`] rebuilds the training data's layout from 300-W; [`tracker`]
//! follows faces over video frames.

#[cfg(feature = "bench")]
pub mod bench;
pub mod dataset;
pub mod detect;
mod error;
pub mod eval;
pub mod files;
pub mod folder;
pub mod image_io;
pub mod labeled;
pub mod model;
mod options;
pub mod pipeline;
pub mod preprocess;
pub mod preview;
pub mod run_record;
pub mod runtime;
pub mod session;
pub mod tracker;

pub use error::{Error, ErrorKind, Result};
pub use model::{FaceLandmarks, LandmarkModel};
pub use options::{Device, OrtLibrary, SessionOptions};
pub use pipeline::{Face, Faces, Pipeline, PipelineOptions};
pub use pipnet_core as core;
pub use tracker::{Tracker, TrackerOptions};
