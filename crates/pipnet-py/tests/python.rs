//! Builds the `pipnet` Python package into the test environment (`maturin develop`) and runs
//! its pytest suite (`tests/test_pipnet.py`), handing it what the Rust API finds on the sample
//! photos so the two can be compared.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;

use pipnet_infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet_infer::{Faces, Pipeline, SessionOptions, Tracker, TrackerOptions};
use serde_json::{Value, json};

/// Every face of every sample photo, as `Pipeline(...)` with default settings finds them:
/// `{"<file>": [{"box", "score", "landmarks", "landmark_scores", "pose"}, ...]}`; and under
/// `"turned"`, the first photo by name turned a quarter turn clockwise and upside down
/// (`{"file", "<quarter turns>": faces}`), as a photo taken with the camera on its side.
fn rust_faces() -> Value {
    let session = SessionOptions::default();
    let mut pipeline = Pipeline::open(None, None, true, &session, Default::default()).unwrap();
    let mut faces_in = |image: &image::RgbImage| -> Value {
        let faces = pipeline.faces(&[(image, &Faces::Detect)]).unwrap();
        faces[0]
            .iter()
            .map(|f| {
                json!({
                    "box": <[f32; 4]>::from(f.face_box()),
                    "score": f.score(),
                    "landmarks": f.landmarks.in_image,
                    "landmark_scores": f.landmarks.scores(),
                    "pose": f.annotation(pipnet_infer::core::Scheme::W300_68).pose,
                })
            })
            .collect()
    };
    let mut photos = serde_json::Map::new();
    for (file, _) in common::sample_face_boxes() {
        let image = load_rgb(&common::sample_photos().join(&file), DEFAULT_MAX_PIXELS).unwrap();
        photos.insert(file, faces_in(&image));
    }
    let first = photos.keys().min().cloned().expect("sample photos");
    let image = load_rgb(&common::sample_photos().join(&first), DEFAULT_MAX_PIXELS).unwrap();
    let quarter = image::imageops::rotate90(&image);
    let half = image::imageops::rotate180(&image);
    let turned = json!({"file": first, "1": faces_in(&quarter), "2": faces_in(&half)});
    json!({"photos": photos, "turned": turned})
}

/// The first sample photo by name rolled right by `3 * t` pixels, for t in 0..6 (numpy's
/// `np.roll(photo, 3 * t, axis=1)`): frames a tracker follows.
fn rolled_frames() -> Vec<image::RgbImage> {
    let file = common::sample_face_boxes()
        .into_iter()
        .map(|(file, _)| file)
        .min()
        .expect("sample photos");
    let photo = load_rgb(&common::sample_photos().join(file), DEFAULT_MAX_PIXELS).unwrap();
    let width = photo.width();
    (0..6)
        .map(|t| {
            image::RgbImage::from_fn(width, photo.height(), |x, y| {
                *photo.get_pixel((x + width - 3 * t % width) % width, y)
            })
        })
        .collect()
}

/// What a `Tracker` made with the defaults (one thread) sees on [`rolled_frames`] at 30 fps:
/// per frame, `[{"id", "landmarks", "raw_landmarks"}, ...]`. The Python `Tracker()` and the C
/// tracker start from the same [`TrackerOptions::default`], so they must see the same.
fn rust_tracks() -> Value {
    let session = SessionOptions {
        threads: Some(1),
        ..Default::default()
    };
    let options = TrackerOptions::default();
    let pipeline = Pipeline::open(None, None, true, &session, options.pipeline).unwrap();
    let mut tracker = Tracker::new(pipeline, options).unwrap();
    let frames: Vec<Value> = rolled_frames()
        .iter()
        .enumerate()
        .map(|(t, frame)| {
            let faces = tracker.track(frame, t as f64 / 30.0).unwrap();
            faces
                .iter()
                .map(|f| {
                    json!({
                        "id": f.id,
                        "landmarks": f.smoothed,
                        "raw_landmarks": f.face.landmarks.in_image,
                    })
                })
                .collect()
        })
        .collect();
    frames.into()
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
    let tracks = dir.path().join("rust-tracks.json");
    std::fs::write(&tracks, rust_tracks().to_string()).unwrap();
    run(Command::new(&python)
        .args(["-m", "maturin", "develop", "--quiet", "--manifest-path"])
        .arg(package.join("Cargo.toml"))
        .env("VIRTUAL_ENV", venv));
    run(Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(package.join("tests"))
        .env("PIPNET_RUST_FACES", &reference)
        .env("PIPNET_RUST_TRACKS", &tracks)
        .env("PIPNET_SAMPLE_PHOTOS", common::sample_photos()));
}
