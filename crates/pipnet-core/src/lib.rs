//! Landmark logic with no I/O and no ONNX Runtime: everything that both training and inference
//! must agree on lives here, so the two cannot drift.
//!
//! Modules follow the data flow:
//! [`scheme`] (what the points are) -> [`meanface`] (mean face and neighbour index) ->
//! [`detection`] (detector outputs to face boxes) -> [`crop`] (face box to square crop and back) -> [`decode`] (PIP decode + neighbour-vote merge)
//! -> [`second_pass`] (whether a face is cropped again from its landmarks)
//! -> [`pose`] (head pose from the landmarks)
//! -> [`chip`] (five points, presence, aligned chips) -> [`smooth`] (One Euro filter over video
//! frames) -> [`metrics`] (NME, FR, AUC, CED) and [`formats`] (.pts, WFLW lines, JSON).

pub mod chip;
pub mod contract;
pub mod crop;
pub mod decode;
pub mod detection;
pub mod formats;
pub mod meanface;
pub mod metrics;
pub mod pose;
pub mod scheme;
pub mod second_pass;
pub mod smooth;

pub use chip::{
    ChipSpec, FaceChip, Similarity, face_chip, five_points, head_turn, landmark_crop, presence,
    repeated_faces, roll,
};
pub use contract::{ModelMetadata, OutputForm, TensorSpec, check_io};
pub use crop::{CropRule, DatasetCrop, FaceBox, FaceCrop, TurnedBox};
pub use decode::{Decoder, Landmark, PipMaps, average_with_mirror, decode_pip, decode_pip_scalar};
pub use detection::{BoxCalibration, Detection, KeypointMap};
pub use meanface::{NeighborIndex, mean_face};
pub use pose::{HeadPose, MeanShape, head_pose};
pub use scheme::{Contour, Scheme};
pub use second_pass::{CropChange, SecondPass, SecondPassGate};

/// A 2-D point; the unit (crop-normalised or image pixels) is given by the context.
pub type Point = [f32; 2];

/// Errors raised by the pure landmark logic. Each message names what was expected and what was
/// found, so a caller can tell a broken model or file from a bug.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two pieces of data that must agree in size do not.
    #[error("{what}: got {got}, expected {expected}")]
    SizeMismatch {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    /// A value is outside its allowed range or not a valid choice.
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    /// A graph breaks the model contract; `rule` is the metadata key or tensor role.
    #[error("{rule}: {detail}")]
    Contract { rule: &'static str, detail: String },
    /// A text format could not be parsed.
    #[error("parse error in {format} at line {line}: {detail}")]
    Parse {
        format: &'static str,
        line: usize,
        detail: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
