pub mod annotate;
pub mod eval;
pub mod export;
pub mod info;
pub mod train;

use std::path::Path;

use anyhow::Context;
use pipnet_infer::{LandmarkModel, SessionOptions};

/// Loads ONNX Runtime (saying so when it has to be fetched) and the model.
pub fn load_model(path: &Path, options: &SessionOptions) -> anyhow::Result<LandmarkModel> {
    let runtime = pipnet_infer::runtime::runtime(|| {
        eprintln!(
            "pipnet: ONNX Runtime not found; fetching onnxruntime=={} from PyPI with pip (once)",
            pipnet_infer::runtime::ORT_VERSION
        )
    })?;
    let model = LandmarkModel::load_with_runtime(path, options, runtime)
        .with_context(|| format!("failed to load model {}", path.display()))?;
    if let Some(reason) = model.device_fallback() {
        eprintln!(
            "pipnet: warning: --device auto: CUDA unavailable, running on the CPU ({reason})"
        );
    }
    Ok(model)
}
