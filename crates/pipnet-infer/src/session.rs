//! Building an ONNX Runtime session on the requested device: one place for the CUDA / CPU /
//! auto-fallback rules, shared by the landmark model and the face detector.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::ep::ExecutionProviderDispatch;
use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
use pipnet_core::TensorSpec;
use pipnet_core::formats::GraphId;

use crate::error::{Error, ErrorKind, Result};
use crate::options::{Device, SessionOptions};
use crate::runtime::{Runtime, sha256_hex};

/// Where a graph comes from: a file, or bytes built into the binary (named for messages).
#[derive(Debug, Clone, Copy)]
pub enum GraphSource<'a> {
    File(&'a Path),
    Memory { name: &'a Path, bytes: &'a [u8] },
}

impl GraphSource<'_> {
    pub fn name(&self) -> &Path {
        match self {
            GraphSource::File(path) => path,
            GraphSource::Memory { name, .. } => name,
        }
    }

    /// The graph's name (a file's name without its folder) and the SHA-256 of its bytes:
    /// what outputs record as having made them.
    pub fn id(&self, scheme: Option<String>) -> Result<GraphId> {
        let (name, sha256) = match self {
            GraphSource::File(path) => {
                let bytes = std::fs::read(path).map_err(Error::io(*path))?;
                let name = path.file_name().unwrap_or(path.as_os_str());
                (name.to_string_lossy().into_owned(), sha256_hex(&bytes))
            }
            GraphSource::Memory { name, bytes } => (name.display().to_string(), sha256_hex(bytes)),
        };
        Ok(GraphId {
            name,
            sha256,
            scheme,
        })
    }
}

/// A [`GraphSource`] that owns its graph, kept to open more sessions of it later.
#[derive(Debug, Clone)]
pub enum OwnedGraph {
    File(PathBuf),
    Memory { name: PathBuf, bytes: Arc<[u8]> },
}

impl OwnedGraph {
    pub fn source(&self) -> GraphSource<'_> {
        match self {
            OwnedGraph::File(path) => GraphSource::File(path),
            OwnedGraph::Memory { name, bytes } => GraphSource::Memory { name, bytes },
        }
    }
}

impl From<GraphSource<'_>> for OwnedGraph {
    fn from(source: GraphSource<'_>) -> Self {
        match source {
            GraphSource::File(path) => OwnedGraph::File(path.to_path_buf()),
            GraphSource::Memory { name, bytes } => OwnedGraph::Memory {
                name: name.to_path_buf(),
                bytes: bytes.into(),
            },
        }
    }
}

/// A session plus what device it ended on.
pub struct OpenedSession {
    pub session: Session,
    pub provider: &'static str,
    /// Why `Device::Auto` ended on the CPU, if it did.
    pub fallback: Option<String>,
}

/// The CUDA provider set to fail loudly, so we know whether it really registered.
fn cuda_provider() -> ExecutionProviderDispatch {
    ort::ep::CUDA::default().build().error_on_failure()
}

/// Opens `source` for `options.device`: `Cuda` fails with a [`ErrorKind::Device`] error when
/// the provider cannot be registered; `Auto` then falls back to the CPU and says why.
pub fn open_session(
    source: GraphSource<'_>,
    options: &SessionOptions,
    rt: &Runtime,
) -> Result<OpenedSession> {
    let path = source.name();
    let load_err = |message: String| Error::ModelLoad {
        path: path.to_path_buf(),
        message,
    };
    if let GraphSource::File(p) = source
        && !p.is_file()
    {
        return Err(load_err("no such file".into()));
    }
    let build = |with_cuda: bool| -> Result<Session> {
        // All graph optimisations (ONNX Runtime's default, set so it stays so): levels 0-2
        // ran both graphs about half as fast (`pipnet bench`, README "Benchmarks"). Memory
        // patterns and a saved pre-optimised graph were measured too and bought nothing.
        // No spin-waiting between runs: the crop sampler and the image decoder need those
        // cores while the session is idle.
        let mut builder = Session::builder(&rt.environment)
            .map_err(|e| load_err(format!("session options: {e}")))?
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Level3)
            .map_err(|e| load_err(format!("session options: {e}")))?
            .with_intra_op_spinning(false)
            .map_err(|e| load_err(format!("session options: {e}")))?;
        if let Some(n) = options.threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| load_err(format!("threads: {e}")))?;
        }
        if with_cuda {
            builder = builder
                .with_execution_providers([cuda_provider()])
                .map_err(|e| {
                    Error::Device(format!(
                        "CUDA execution provider unavailable with {} ({}): {}. It needs an \
                         NVIDIA GPU and driver and the CUDA build, which `--device cuda` \
                         fetches once; or use --device cpu",
                        rt.build,
                        rt.library.display(),
                        e.to_string().trim_end().trim_end_matches('.')
                    ))
                })?;
        }
        match source {
            GraphSource::File(p) => builder.commit_from_file(p),
            GraphSource::Memory { bytes, .. } => builder.commit_from_memory(bytes),
        }
        .map_err(|e| load_err(format!("not a loadable ONNX graph: {e}")))
    };
    let opened = |session, provider, fallback| OpenedSession {
        session,
        provider,
        fallback,
    };
    Ok(match options.device {
        Device::Cpu => opened(build(false)?, "CPUExecutionProvider", None),
        Device::Cuda => opened(build(true)?, "CUDAExecutionProvider", None),
        Device::Auto => match build(true) {
            Ok(s) => opened(s, "CUDAExecutionProvider", None),
            Err(e) if e.kind() == ErrorKind::Device => {
                opened(build(false)?, "CPUExecutionProvider", Some(e.to_string()))
            }
            Err(e) => return Err(e),
        },
    })
}

/// Names, element types and shapes of a session's inputs or outputs, for contract checks.
pub fn tensor_specs(outlets: &[ort::value::Outlet]) -> Vec<TensorSpec> {
    outlets
        .iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => TensorSpec {
                name: o.name().to_string(),
                is_f32: *ty == TensorElementType::Float32,
                shape: shape.iter().map(|&d| (d >= 0).then_some(d)).collect(),
            },
            _ => TensorSpec {
                name: o.name().to_string(),
                is_f32: false,
                shape: vec![],
            },
        })
        .collect()
}
