//! `pipnet calibrate DATA [--split F:S] [--detector GRAPH] [--out SETTINGS]`: fit the detection
//! -> landmark box maps on the training part of a labeled folder and report both on the
//! validation part.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use pipnet_core::detection::landmark_box_error;
use pipnet_core::{BoxCalibration, Detection, FaceBox};
use pipnet_infer::detect::FaceDetector;
use pipnet_infer::eval::{detect_labeled, landmark_box};
use pipnet_infer::image_io::DEFAULT_MAX_PIXELS;
use pipnet_infer::labeled::{LabeledFace, split_validation};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    data: super::LabeledArgs,
    /// Fit on the training part of this split (the validation part is left for `pipnet eval`).
    #[arg(long, value_parser = super::parse_split, default_value = "0.1:1")]
    split: (f64, u64),
    #[command(flatten)]
    detector: super::DetectorArgs,
    /// Write the detector settings with the fitted calibration here (default: print them).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (fraction, seed) = args.split;
    let (training, validation) = split_validation(args.data.read()?, fraction, seed);
    let mut detector = args.detector.load(&Default::default())?;
    let pairs = matched(&mut detector, &training, "training")?;
    let calibration = BoxCalibration::fit(&pairs).context("fitting the calibration")?;
    if !validation.is_empty() {
        let held_out = matched(&mut detector, &validation, "validation")?;
        let report = |name: &str, predict: &dyn Fn(&Detection) -> FaceBox| {
            let errors: Vec<[f32; 2]> = held_out
                .iter()
                .map(|(d, truth)| landmark_box_error(&predict(d), truth))
                .collect();
            let mean = |i: usize| errors.iter().map(|e| e[i]).sum::<f32>() / errors.len() as f32;
            println!(
                "  {name}: centre off by {:.4} of the side, |ln side ratio| {:.4} (means)",
                mean(0),
                mean(1)
            );
        };
        println!("landmark box from the detection, validation split:");
        report("box only", &|d| calibration.from_box(&d.face_box));
        if calibration.keypoints.is_some() {
            report("keypoints", &|d| calibration.landmark_box(d));
        }
    }
    let mut settings = detector.settings().clone();
    settings.calibration = calibration;
    let json = serde_json::to_string_pretty(&settings)? + "\n";
    match &args.out {
        Some(path) => {
            pipnet_infer::folder::write_atomic(path, json.as_bytes())?;
            println!("wrote {}", path.display());
        }
        None => print!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Each face the detector found (IoU > 0.3), paired with its true landmark box.
fn matched(
    detector: &mut FaceDetector,
    faces: &[LabeledFace],
    part: &str,
) -> anyhow::Result<Vec<(Detection, FaceBox)>> {
    let found = detect_labeled(detector, faces, 0.3, DEFAULT_MAX_PIXELS)?;
    let pairs = faces
        .iter()
        .zip(found)
        .filter_map(|(face, d)| d.map(|d| landmark_box(face).map(|b| (d, b))))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "detector recall {}/{} = {:.4} (IoU > 0.3 with the landmark box, {part} split)",
        pairs.len(),
        faces.len(),
        pairs.len() as f64 / faces.len().max(1) as f64
    );
    Ok(pairs)
}
