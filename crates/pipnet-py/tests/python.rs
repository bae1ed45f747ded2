//! Builds the `pipnet` Python package into the test environment (`maturin develop`) and runs
//! its pytest suite (`tests/test_pipnet.py`), handing it what the Rust API finds on the sample
//! photos so the two can be compared.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;

use pipnet_infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet_infer::{Faces, Pipeline, SessionOptions};
use serde_json::{Value, json};

/// Every face of every sample photo, as `Pipeline(...)` with default settings finds them:
/// `{"<file>": [{"box", "score", "landmarks", "landmark_scores"}, ...]}`.
fn rust_faces() -> Value {
    let mut pipeline = Pipeline::open(None, None, true, &SessionOptions::default()).unwrap();
    pipeline.second_pass = pipnet_infer::core::SecondPass::Auto;
    pipeline.min_presence = pipnet_infer::pipeline::DEFAULT_MIN_PRESENCE;
    let mut photos = serde_json::Map::new();
    for (file, _) in common::sample_face_boxes() {
        let image = load_rgb(&common::sample_photos().join(&file), DEFAULT_MAX_PIXELS).unwrap();
        let faces = pipeline.faces(&[(&image, &Faces::Detect)]).unwrap();
        let faces: Vec<Value> = faces[0]
            .iter()
            .map(|f| {
                json!({
                    "box": <[f32; 4]>::from(f.face_box()),
                    "score": f.score(),
                    "landmarks": f.landmarks.in_image,
                    "landmark_scores": f.landmarks.scores(),
                })
            })
            .collect();
        photos.insert(file, faces.into());
    }
    photos.into()
}

fn run(command: &mut Command) {
    let status = command.status().expect("start python");
    assert!(status.success(), "{command:?} failed ({status})");
}

#[test]
fn python_package_passes_its_pytest_suite() {
    let python = common::python();
    let venv = python
        .parent()
        .and_then(Path::parent)
        .expect("venv of the test python");
    let package = common::repo_root().join("crates/pipnet-py");
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("rust-faces.json");
    std::fs::write(&reference, rust_faces().to_string()).unwrap();
    run(Command::new(&python)
        .args(["-m", "maturin", "develop", "--quiet", "--manifest-path"])
        .arg(package.join("Cargo.toml"))
        .env("VIRTUAL_ENV", venv));
    run(Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(package.join("tests"))
        .env("PIPNET_RUST_FACES", &reference)
        .env("PIPNET_SAMPLE_PHOTOS", common::sample_photos()));
}
