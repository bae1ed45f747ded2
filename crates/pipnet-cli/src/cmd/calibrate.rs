//! `pipnet calibrate DATA [--split F:S] [--detector GRAPH] [--out SETTINGS]`: fit the detection
//! -> landmark box maps on the training part of a labeled folder and report both on the
//! validation part.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use pipnet_core::detection::{landmark_box_error, wrap_angle};
use pipnet_core::{BoxCalibration, Detection, Point, Scheme, TurnedBox, roll};
use pipnet_infer::detect::{FaceDetector, RollSearch};
use pipnet_infer::eval::{detect_labeled, turn_faces};
use pipnet_infer::image_io::DEFAULT_MAX_PIXELS;
use pipnet_infer::labeled::LabeledFace;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    data: super::SplitLabeledArgs,
    #[command(flatten)]
    detector: super::DetectorArgs,
    /// Write the detector settings with the fitted calibration here (default: print them).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Fit on every face at each of these rolls (degrees, comma-separated): the photos turned,
    /// truth turned with them, so the maps learn what the detector sees of tilted faces.
    #[arg(long, value_parser = super::parse_rolls, default_value = "0")]
    roll: std::vec::Vec<f32>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (training, validation) = args.data.read()?;
    let mut detector = args.detector.load(&Default::default())?;
    let mut pairs = Vec::new();
    for &roll in &args.roll {
        let turned = turn_faces(&training, roll, DEFAULT_MAX_PIXELS)?;
        let part = format!("training split at {:.0} degrees", roll.to_degrees());
        pairs.extend(matched(&mut detector, &turned, &part)?);
    }
    let calibration = BoxCalibration::fit_turned(&pairs).context("fitting the calibration")?;
    for &roll in args.roll.iter().filter(|_| !validation.is_empty()) {
        let turned = turn_faces(&validation, roll, DEFAULT_MAX_PIXELS)?;
        let held_out = matched(&mut detector, &turned, "validation split")?;
        // Each prediction against the truth's box in the frame the prediction turned to.
        let report = |name: &str, predict: &dyn Fn(&Detection) -> TurnedBox| {
            let errors: Vec<[f32; 3]> = held_out
                .iter()
                .filter_map(|(d, points, roll)| {
                    let p = predict(d);
                    let truth = TurnedBox::around(points, p.angle).ok()?.face_box;
                    let [centre, side] = landmark_box_error(&p.face_box, &truth);
                    Some([centre, side, wrap_angle(p.angle - roll).abs().to_degrees()])
                })
                .collect();
            let mean = |i: usize| errors.iter().map(|e| e[i]).sum::<f32>() / errors.len() as f32;
            println!(
                "  {name}: centre off by {:.4} of the side, |ln side ratio| {:.4}, roll off by \
                 {:.2} degrees (means)",
                mean(0),
                mean(1),
                mean(2)
            );
        };
        println!(
            "landmark box from the detection, validation split at {:.0} degrees:",
            roll.to_degrees()
        );
        let upright = |d: &Detection| TurnedBox::upright(calibration.from_box(&d.face_box));
        report("box only, upright", &upright);
        report("keypoints, turned", &|d| calibration.landmark_box(d));
    }
    if let Some(offset) = calibration.roll_offset {
        println!(
            "roll: the detector's eye line plus {:.2} degrees",
            offset.to_degrees()
        );
    }
    let mut settings = detector.settings().clone();
    settings.calibration = calibration;
    let json = serde_json::to_string_pretty(&settings)? + "\n";
    match &args.out {
        Some(path) => {
            pipnet_infer::files::write_atomic(path, json.as_bytes())?;
            println!("wrote {}", path.display());
        }
        None => print!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Each face the detector found (IoU > 0.3), with its true landmarks and roll.
fn matched(
    detector: &mut FaceDetector,
    faces: &[LabeledFace],
    part: &str,
) -> anyhow::Result<Vec<(Detection, Vec<Point>, f32)>> {
    let found = detect_labeled(detector, faces, (0.3, RollSearch::Off), DEFAULT_MAX_PIXELS)?;
    let pairs = faces
        .iter()
        .zip(found)
        .filter_map(|(face, d)| {
            let scheme = Scheme::with_landmarks(face.points.len())?;
            let roll = roll(scheme, &face.points).ok()?;
            Some((d?.detection, face.points.clone(), roll))
        })
        .collect::<Vec<_>>();
    println!(
        "detector recall {}/{} = {:.4} (IoU > 0.3 with the landmark box, {part} split)",
        pairs.len(),
        faces.len(),
        pairs.len() as f64 / faces.len().max(1) as f64
    );
    Ok(pairs)
}
