//! What a caller chooses about sessions: the device, threads, batch size, and which ONNX
//! Runtime library the process loads. A leaf module, so that [`crate::runtime`],
//! [`crate::session`] and [`crate::model`] depend on it and not on each other in a circle.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA execution provider; fails if it cannot be used.
    Cuda,
    /// CUDA when it works, otherwise the CPU (the fallback is reported, never silent).
    Auto,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Auto => "auto",
        })
    }
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            "auto" => Ok(Device::Auto),
            other => Err(Error::InvalidInput(format!(
                "unknown device {other:?} (expected cpu, cuda or auto)"
            ))),
        }
    }
}

/// How to build a session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    pub device: Device,
    /// Intra-op threads; `None` lets ONNX Runtime use every core.
    pub threads: Option<usize>,
    /// Crops per `Session::run`.
    pub batch_size: Option<usize>,
    pub library: OrtLibrary,
}

/// Which ONNX Runtime shared library the process loads. One process loads one library: the
/// first session's choice holds, and a later session asking for another file is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OrtLibrary {
    /// `ORT_DYLIB_PATH`, else the pinned wheel's library from the cache, fetched with pip when
    /// missing (the CUDA build for [`Device::Cuda`]); see [`crate::runtime`].
    #[default]
    Provisioned,
    /// This file, e.g. the library the `onnxruntime` Python wheel installed.
    File(PathBuf),
}
