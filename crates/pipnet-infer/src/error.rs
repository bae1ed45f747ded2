//! One error type for the runtime, with a [`ErrorKind`] that the C ABI maps 1:1 to status codes.

use std::path::PathBuf;

/// What went wrong, coarsely: callers (and pipnet-ffi) branch on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The ONNX Runtime library is missing, could not be fetched, or failed to load.
    Runtime,
    /// The model file could not be read or is not a valid ONNX graph.
    ModelLoad,
    /// The graph is valid ONNX but breaks the PIPNet contract.
    Contract,
    /// The requested device (execution provider) is not available.
    Device,
    /// An image could not be read or decoded, or is too large.
    Image,
    /// Caller input has the wrong size or shape.
    InvalidInput,
    /// Inference failed or produced non-finite values.
    Inference,
    /// Reading or writing a file failed.
    Io,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("ONNX Runtime library: {0}")]
    Runtime(String),
    #[error("model {path}: {message}")]
    ModelLoad { path: PathBuf, message: String },
    #[error("model {path} breaks the PIPNet contract: {source}")]
    Contract {
        path: PathBuf,
        source: pipnet_core::Error,
    },
    #[error("device: {0}")]
    Device(String),
    #[error("image {path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An output folder holds results made with other settings: the CLI's words say what to do;
    /// other front ends (Python) say it in theirs.
    #[error(
        "{} holds results made with other settings ({}); rerun with --force to redo every \
         image with the new ones, or choose another --out",
        folder.display(),
        differences.join("; ")
    )]
    OtherSettings {
        folder: PathBuf,
        differences: Vec<String>,
    },
    #[error("inference: {0}")]
    Inference(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Runtime(_) => ErrorKind::Runtime,
            Error::ModelLoad { .. } => ErrorKind::ModelLoad,
            Error::Contract { .. } => ErrorKind::Contract,
            Error::Device(_) => ErrorKind::Device,
            Error::Image { .. } => ErrorKind::Image,
            Error::InvalidInput(_) | Error::OtherSettings { .. } => ErrorKind::InvalidInput,
            Error::Inference(_) => ErrorKind::Inference,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
