//! Face detector recall on the sample photos' hand-drawn boxes (dlib's `training.xml` and
//! `testing.xml`), one photo at a time and as one 1500 x 1500 mosaic (small faces in a large
//! photo), for a detector graph and smallest-face settings:
//!
//! `cargo run --release --example detector_recall -- [GRAPH] [MIN_FACE...]`
//!
//! GRAPH defaults to the built-in graph; it needs its settings beside it (`GRAPH.json`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Instant;

use image::RgbImage;
use pipnet::infer::SessionOptions;
use pipnet::infer::detect::FaceDetector;
use pipnet::infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let options = SessionOptions::default();
    let graph = args.next_if(|a| a.ends_with(".onnx")).map(PathBuf::from);
    let mut detector = match &graph {
        Some(path) => FaceDetector::load(path, &options)?,
        None => FaceDetector::builtin(&options)?,
    };
    let min_faces: Vec<f32> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let photos: Vec<(RgbImage, Vec<[f32; 4]>)> = common::sample_face_boxes()
        .into_iter()
        .map(|(file, boxes)| {
            let path = common::sample_photos().join(file);
            load_rgb(&path, DEFAULT_MAX_PIXELS).map(|image| (image, boxes))
        })
        .collect::<Result<_, _>>()?;
    let mut mosaic = RgbImage::new(1500, 1500);
    let mut mosaic_truth = Vec::new();
    for (k, (image, boxes)) in photos.iter().enumerate() {
        let (dx, dy) = ((k % 3) as f32 * 500.0, (k / 3) as f32 * 500.0);
        image::imageops::replace(&mut mosaic, image, dx as i64, dy as i64);
        mosaic_truth.extend(
            boxes
                .iter()
                .map(|b| [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy]),
        );
    }
    let name = graph.map_or("built-in".into(), |g| g.display().to_string());
    println!("graph {name}");
    println!("min_face  set       recall  unmatched  seconds");
    let defaults = [None];
    let settings: Vec<Option<f32>> = if min_faces.is_empty() {
        defaults.to_vec()
    } else {
        min_faces.into_iter().map(Some).collect()
    };
    for min_face in settings {
        let label = min_face.map_or("default".into(), |m| m.to_string());
        let start = Instant::now();
        let (mut matched, mut total, mut extra) = (0, 0, 0);
        for (image, boxes) in &photos {
            let (m, t, e) = common::match_boxes(&detector.detect(image, min_face)?, boxes);
            (matched, total, extra) = (matched + m, total + t, extra + e);
        }
        let seconds = start.elapsed().as_secs_f64();
        println!("{label:>8}  photos   {matched:>3}/{total}  {extra:>9}  {seconds:>7.2}");
        let start = Instant::now();
        let found = detector.detect(&mosaic, min_face)?;
        let (matched, total, extra) = common::match_boxes(&found, &mosaic_truth);
        let seconds = start.elapsed().as_secs_f64();
        println!("{label:>8}  mosaic   {matched:>3}/{total}  {extra:>9}  {seconds:>7.2}");
    }
    Ok(())
}
