//! The built-in face detector on real photos: the sample folder's hand-drawn face boxes must be
//! found, small faces in a large photo too (tiling), and a graph that is not BlazeFace refused.

#[path = "../../../tests/common/mod.rs"]
mod common;

use image::RgbImage;
use pipnet_infer::detect::{DetectorSettings, FaceDetector};
use pipnet_infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet_infer::session::GraphSource;
use pipnet_infer::{ErrorKind, SessionOptions};
use pipnet_train::seeded::tiny_spec;

fn detector() -> FaceDetector {
    FaceDetector::builtin(&SessionOptions::default()).expect("built-in detector")
}

fn sample(name: &str) -> RgbImage {
    load_rgb(&common::sample_photos().join(name), DEFAULT_MAX_PIXELS).expect("sample photo")
}

#[test]
fn test_finds_the_hand_drawn_faces_of_the_sample_photos() {
    let mut detector = detector();
    let (mut matched, mut total, mut extra) = (0, 0, 0);
    for (file, boxes) in common::sample_face_boxes() {
        let found = detector.detect(&sample(&file), None).unwrap();
        for d in &found {
            assert!(d.score > detector.settings().score_threshold && d.score <= 1.0);
        }
        let (m, t, e) = common::match_boxes(&found, &boxes);
        (matched, total, extra) = (matched + m, total + t, extra + e);
    }
    assert_eq!(total, 43);
    assert!(matched >= 41, "recall {matched}/{total}");
    assert!(extra <= 3, "{extra} detections match no face");
}

#[test]
fn test_per_core_sessions_find_what_the_detector_finds() {
    let options = |threads| SessionOptions {
        threads: Some(threads),
        ..SessionOptions::default()
    };
    let one = FaceDetector::builtin(&options(1)).unwrap();
    assert!(
        one.per_core().unwrap().is_empty(),
        "one core needs no copies"
    );
    let mut three = FaceDetector::builtin(&options(3)).unwrap();
    let mut copies = three.per_core().unwrap();
    assert_eq!(copies.len(), 3);
    let image = sample(&common::sample_face_boxes()[0].0);
    let found = three.detect(&image, None).unwrap();
    assert!(!found.is_empty());
    for copy in &mut copies {
        assert_eq!(copy.detect(&image, None).unwrap(), found);
        assert_eq!(copy.settings(), three.settings());
    }
}

#[test]
fn test_small_faces_in_a_large_photo_need_the_tiles() {
    // The nine sample photos side by side in a 1500 x 1500 mosaic: faces of 30-60 px.
    let mut mosaic = RgbImage::new(1500, 1500);
    let mut truth = Vec::new();
    for (k, (file, boxes)) in common::sample_face_boxes().into_iter().enumerate() {
        let (dx, dy) = ((k % 3) as f32 * 500.0, (k / 3) as f32 * 500.0);
        image::imageops::replace(&mut mosaic, &sample(&file), dx as i64, dy as i64);
        truth.extend(
            boxes
                .iter()
                .map(|b| [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy]),
        );
    }
    let mut detector = detector();
    let whole_only = detector.detect(&mosaic, Some(1000.0)).unwrap();
    let tiled = detector.detect(&mosaic, None).unwrap();
    let (whole_matched, total, _) = common::match_boxes(&whole_only, &truth);
    let (tiled_matched, _, extra) = common::match_boxes(&tiled, &truth);
    assert!(
        whole_matched * 2 < total,
        "whole photo alone: {whole_matched}/{total}"
    );
    assert!(tiled_matched >= 41, "tiled: {tiled_matched}/{total}");
    assert!(extra <= 3, "{extra} detections match no face");
}

/// The finer level that only runs where the whole photo saw near misses
/// (`candidate_threshold`): on single-face photos of the training data it runs the graph fewer
/// times and still finds every face the full search finds confidently.
#[test]
fn test_gated_tiles_run_less_and_find_the_same_faces() {
    let options = SessionOptions::default();
    let rt = pipnet_infer::runtime::runtime(&options, |_| {}).unwrap();
    let open = |settings| {
        FaceDetector::open(GraphSource::builtin_detector(), settings, &options, rt).unwrap()
    };
    let mut gated = open(DetectorSettings::builtin());
    assert!(gated.settings().candidate_threshold.is_some());
    let mut full = open(DetectorSettings {
        candidate_threshold: None,
        ..DetectorSettings::builtin()
    });
    let data = common::repo_root().join("../shared/data/face68-train");
    let mut photos: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    photos.sort();
    for path in photos.iter().step_by(97).take(12) {
        let image = load_rgb(path, DEFAULT_MAX_PIXELS).unwrap();
        let all = full.detect(&image, None).unwrap();
        let some = gated.detect(&image, None).unwrap();
        for d in all.iter().filter(|d| d.score >= 0.75) {
            assert!(
                some.iter().any(|g| g.iou(d) > 0.5),
                "{}: the gated search lost {d:?}",
                path.display()
            );
        }
    }
    let (runs_full, runs_gated) = (full.graph_runs(), gated.graph_runs());
    assert!(
        runs_gated < runs_full,
        "gated {runs_gated} runs, full {runs_full}"
    );
}

#[test]
fn test_no_faces_in_a_flat_image_and_tiny_images_work() {
    let mut detector = detector();
    let flat = RgbImage::from_pixel(640, 480, image::Rgb([120, 120, 120]));
    assert!(detector.detect(&flat, None).unwrap().is_empty());
    let tiny = RgbImage::from_pixel(1, 1, image::Rgb([0, 0, 0]));
    assert!(detector.detect(&tiny, None).unwrap().is_empty());
}

#[test]
fn test_a_landmark_graph_is_not_a_detector() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::seeded_model(dir.path(), tiny_spec());
    std::fs::write(
        dir.path().join("seeded.json"),
        pipnet_infer::detect::BUILTIN_SETTINGS,
    )
    .unwrap();
    let err = FaceDetector::load(&model, &SessionOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ModelLoad);
    assert!(err.to_string().contains("not a BlazeFace"), "{err}");
    // Without settings beside it, the error says how to make them.
    std::fs::remove_file(dir.path().join("seeded.json")).unwrap();
    let err = FaceDetector::load(&model, &SessionOptions::default()).unwrap_err();
    assert!(err.to_string().contains("pipnet calibrate"), "{err}");
}
