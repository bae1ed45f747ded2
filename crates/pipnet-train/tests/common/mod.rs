//! Shared by the training and MobileNetV2 tests: an exported graph computes what the burn
//! network computes.

use std::path::Path;

use burn::prelude::*;
use pipnet_infer::{LandmarkModel, SessionOptions};
use pipnet_train::model::PipNet;

/// A deterministic `[n, 3, size, size]` input in [-1, 1].
pub fn fixed_input(n: usize, size: usize) -> Vec<f32> {
    (0..n * 3 * size * size)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect()
}

/// Runs `net` (in inference mode, on the flex CPU backend) and the graph at `onnx` through
/// ONNX Runtime on the same fixed input and asserts that every output map agrees to 1e-4 of its
/// scale (at least 1).
pub fn assert_graph_matches_network(net: &PipNet, onnx: &Path, n: usize, size: usize) {
    assert_graph_matches_network_on(net, &Device::flex(), 1e-4, onnx, n, size);
}

/// [`assert_graph_matches_network`] with `net` on `device`, to `tolerance` of each map's scale.
#[allow(dead_code)] // only the wgpu test (built with --features wgpu) passes another device
pub fn assert_graph_matches_network_on(
    net: &PipNet,
    device: &Device,
    tolerance: f32,
    onnx: &Path,
    n: usize,
    size: usize,
) {
    let input = fixed_input(n, size);
    let out = net.forward(Tensor::from_data(
        TensorData::new(input.clone(), [n, 3, size, size]),
        device,
    ));
    let burn_maps: Vec<Vec<f32>> = [out.cls, out.off_x, out.off_y, out.nb_x, out.nb_y]
        .into_iter()
        .map(|t| {
            t.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        })
        .collect();
    let mut model = LandmarkModel::load(onnx, &SessionOptions::default()).unwrap();
    let ort_maps = model.run_raw(&input, n).unwrap();
    for (name, (b, o)) in ["cls", "off_x", "off_y", "nb_x", "nb_y"]
        .iter()
        .zip(burn_maps.iter().zip(&ort_maps))
    {
        assert_eq!(b.len(), o.len(), "{name}");
        let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        let worst = b
            .iter()
            .zip(o)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < tolerance * scale,
            "{name}: burn and ONNX Runtime differ by {worst} (outputs up to {scale})"
        );
    }
}
