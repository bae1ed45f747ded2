//! Rust against the numpy reference of `python-export` (written from the model contract alone):
//! the shipped model's real outputs on real faces decode to the same points, and crops sample to
//! the same input tensors.

mod common;

use std::path::Path;

use pipnet::core::{FaceCrop, Landmark};
use pipnet::infer::detect::{FaceDetector, RollSearch};
use pipnet::infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet::infer::pipeline::locate;
use pipnet::infer::preprocess::{Normalization, write_crop};
use pipnet::infer::{Faces, LandmarkModel, SessionOptions};
use serde_json::{Value, json};

/// Runs `python -m pipnet_export.reference MODE` on `input` and returns its JSON answer.
fn reference(dir: &Path, mode: &str, input: &Value) -> Value {
    let (inp, out) = (
        dir.join(format!("{mode}-in.json")),
        dir.join(format!("{mode}-out.json")),
    );
    std::fs::write(&inp, input.to_string()).unwrap();
    let output = common::python_export()
        .args(["-m", "pipnet_export.reference", mode])
        .arg(&inp)
        .arg(&out)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "reference {mode} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("not a number: {other}"),
    }
}

/// The shipped model, and the crops of the six faces the detector finds in a sample photo.
fn model_and_faces() -> (LandmarkModel, image::RgbImage, Vec<FaceCrop>) {
    let options = SessionOptions::default();
    let model = LandmarkModel::load(&common::shipped_model(), &options).unwrap();
    let photo = common::sample_photos().join("2008_002470.jpg");
    let image = load_rgb(&photo, DEFAULT_MAX_PIXELS).unwrap();
    let mut detector = FaceDetector::builtin(&options).unwrap();
    let search = (None, RollSearch::default());
    let rule = model.metadata().crop;
    let crops: Vec<FaceCrop> = locate(Some(&mut detector), &rule, search, &image, &Faces::Detect)
        .unwrap()
        .into_iter()
        .map(|(_, crop)| crop)
        .collect();
    assert_eq!(crops.len(), 6);
    (model, image, crops)
}

#[test]
fn test_numpy_decoder_agrees_with_rust_on_real_model_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut model, image, crops) = model_and_faces();
    let meta = model.metadata().clone();
    let (s, l, g) = (meta.input_size, meta.num_landmarks(), meta.grid());
    let norm = Normalization::new(meta.mean, meta.std);
    let mut input = vec![0.0; crops.len() * 3 * s * s];
    for (crop, out) in crops.iter().zip(input.chunks_exact_mut(3 * s * s)) {
        write_crop(&image, crop, s, &norm, out);
    }
    let raw = model.run_raw(&input, crops.len()).unwrap();
    let ours: Vec<Landmark> = model.run_prepared(&input, crops.len()).unwrap();

    let n = crops.len();
    let c = meta.num_neighbors();
    let shaped = |data: &[f32], channels: usize| -> Value {
        let cells: Vec<Value> = data.iter().map(|&v| json!(v)).collect();
        let rows: Vec<Value> = cells.chunks(g).map(|r| Value::Array(r.to_vec())).collect();
        let maps: Vec<Value> = rows.chunks(g).map(|m| Value::Array(m.to_vec())).collect();
        let faces: Vec<Value> = maps
            .chunks(channels)
            .map(|f| Value::Array(f.to_vec()))
            .collect();
        assert_eq!(faces.len(), n);
        Value::Array(faces)
    };
    let neighbors: Vec<Vec<u32>> = meta
        .neighbors
        .rows()
        .chunks(c)
        .map(<[u32]>::to_vec)
        .collect();
    let answer = reference(
        tmp.path(),
        "decode",
        &json!({
            "cls": shaped(&raw[0], l),
            "off_x": shaped(&raw[1], l),
            "off_y": shaped(&raw[2], l),
            "nb_x": shaped(&raw[3], l * c),
            "nb_y": shaped(&raw[4], l * c),
            "neighbors": neighbors,
        }),
    );
    let points = floats(&answer["points"]);
    let scores = floats(&answer["scores"]);
    assert_eq!(points.len(), 2 * n * l);
    let mut worst = 0.0f64;
    for (i, lm) in ours.iter().enumerate() {
        worst = worst
            .max((f64::from(lm.x) - points[2 * i]).abs())
            .max((f64::from(lm.y) - points[2 * i + 1]).abs());
        assert!((f64::from(lm.score) - scores[i]).abs() < 1e-6, "score {i}");
    }
    assert!(worst < 1e-5, "largest difference {worst}");
}

#[test]
fn test_numpy_crop_sampling_agrees_with_rust() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, image, mut crops) = model_and_faces();
    let meta = model.metadata();
    let s = meta.input_size;
    // A rotated crop and one that runs off the photo's edge, besides two detector crops.
    crops.truncate(2);
    crops.push(FaceCrop::new([250.0, 160.0], 90.0, 0.4));
    crops.push(FaceCrop::new([10.0, 320.0], 120.0, -0.2));
    let pixels: Vec<Value> = image
        .rows()
        .map(|row| Value::Array(row.map(|p| json!(p.0)).collect()))
        .collect();
    let answer = reference(
        tmp.path(),
        "crop",
        &json!({
            "image": pixels,
            "crops": crops.iter().map(|c| [c.center[0], c.center[1], c.side, c.angle]).collect::<Vec<_>>(),
            "size": s,
            "mean": meta.mean,
            "std": meta.std,
        }),
    );
    let tensors = floats(&answer["tensors"]);
    let norm = Normalization::new(meta.mean, meta.std);
    let mut ours = vec![0.0; 3 * s * s];
    let (mut worst, mut total) = (0.0f64, 0.0f64);
    for (k, crop) in crops.iter().enumerate() {
        write_crop(&image, crop, s, &norm, &mut ours);
        let theirs = &tensors[k * 3 * s * s..][..3 * s * s];
        for (a, b) in ours.iter().zip(theirs) {
            worst = worst.max((f64::from(*a) - b).abs());
            total += (f64::from(*a) - b).abs();
        }
    }
    // Rust computes sample positions in f32, the reference in f64, so they differ by ~1e-4
    // pixel. After normalisation one grey level is at least
    // 1 / (255 * 0.229) = 0.017: no value may be off by half of one, and on average far less.
    let mean = total / tensors.len() as f64;
    assert!(worst < 0.5 / (255.0 * 0.229), "largest difference {worst}");
    assert!(mean < 1e-4, "mean difference {mean}");
}

/// The INT8 twin (`python -m pipnet_export.quantize`): calibrated on training faces only (its
/// split rule is the Rust one), it keeps the contract, says `pipnet.precision = int8`, and its
/// landmarks on real faces stay close to the float graph's, with percentile or min-max ranges.
#[test]
fn test_int8_twin_keeps_the_contract_and_the_landmarks() {
    use pipnet::infer::labeled::{read_labeled, split_validation};
    let data = common::repo_root().join("../shared/data/face68-train");
    let faces = read_labeled(&data, None).unwrap();
    let names: Vec<String> = faces.iter().map(|f| f.name.clone()).collect();
    let (_, validation) = split_validation(faces, 0.1, 1);
    let script = "import json, sys\n\
                  from pipnet_export.quantize import is_validation\n\
                  names = json.load(sys.stdin)\n\
                  print(json.dumps([n for n in names if is_validation(n, 0.1, 1)]))";
    let mut child = common::python_export()
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        serde_json::to_string(&names).unwrap().as_bytes(),
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let python_val: Vec<String> = serde_json::from_slice(&output.stdout).unwrap();
    let rust_val: Vec<String> = validation.iter().map(|f| f.name.clone()).collect();
    assert_eq!(python_val, rust_val, "the two split rules disagree");

    let tmp = tempfile::tempdir().unwrap();
    let fp32 = common::shipped_model();
    let quantize = |name: &str, options: &[&str]| {
        let out = tmp.path().join(name);
        let output = common::python_export()
            .args(["-m", "pipnet_export.quantize"])
            .arg(&fp32)
            .arg(&data)
            .args(["--faces", "32"])
            .args(options)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        (out, String::from_utf8_lossy(&output.stdout).into_owned())
    };
    // Percentile ranges by default; the percentile and the min-max recipe reach the graph.
    let (int8, said) = quantize("int8.onnx", &[]);
    assert!(said.contains("99.99th percentile"), "{said}");
    let (minmax, said) = quantize("minmax.onnx", &["--calibration", "minmax"]);
    assert!(said.contains("min-max"), "{said}");
    let (coarse, _) = quantize("p99.onnx", &["--percentile", "99"]);
    let bytes = |p: &std::path::Path| std::fs::read(p).unwrap();
    assert_ne!(bytes(&int8), bytes(&minmax));
    assert_ne!(bytes(&int8), bytes(&coarse));
    let options = SessionOptions::default();
    let mut float_model = LandmarkModel::load(&fp32, &options).unwrap();
    let mut int8_model = LandmarkModel::load(&int8, &options).unwrap();
    assert_eq!(int8_model.metadata().precision.as_deref(), Some("int8"));
    assert_eq!(float_model.metadata().precision, None);
    assert!(std::fs::metadata(&int8).unwrap().len() * 3 < std::fs::metadata(&fp32).unwrap().len());
    let (_, image, crops) = model_and_faces();
    let jobs: Vec<_> = crops.iter().map(|&c| (&image, c)).collect();
    let a = float_model.landmarks(&jobs).unwrap();
    let b = int8_model.landmarks(&jobs).unwrap();
    let mut minmax_model = LandmarkModel::load(&minmax, &options).unwrap();
    let c = minmax_model.landmarks(&jobs).unwrap();
    for (fa, fb) in a.iter().chain(&a).zip(b.iter().chain(&c)) {
        let side = fa.crop.side;
        let mean_shift: f32 = fa
            .in_image
            .iter()
            .zip(&fb.in_image)
            .map(|(p, q)| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt())
            .sum::<f32>()
            / fa.in_image.len() as f32;
        // Quantization moves points by about 1% of the crop (0.8-1.2% measured on these faces
        // for the MobileNetV2 default, whose depthwise layers quantize less cleanly than a
        // ResNet's); a broken quantization moves them by many times that.
        assert!(
            mean_shift < 0.02 * side,
            "{mean_shift} px on a {side} px crop"
        );
    }
}
