//! `pipnet calibrate DATA [--split F:S] [--detector GRAPH] [--out SETTINGS]`: fit the detector
//! box -> landmark box map on the training part of a labeled folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use pipnet_core::BoxCalibration;
use pipnet_infer::eval::{detect_labeled, landmark_box};
use pipnet_infer::image_io::DEFAULT_MAX_PIXELS;
use pipnet_infer::labeled::split_validation;

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
    let faces = split_validation(args.data.read()?, fraction, seed).0;
    let mut detector = args.detector.load(&Default::default())?;
    let found = detect_labeled(&mut detector, &faces, 0.3, DEFAULT_MAX_PIXELS)?;
    let pairs = faces
        .iter()
        .zip(&found)
        .filter_map(|(face, d)| d.map(|d| landmark_box(face).map(|b| (d.face_box, b))))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "detector recall {}/{} = {:.4} (IoU > 0.3 with the landmark box, training split)",
        pairs.len(),
        faces.len(),
        pairs.len() as f64 / faces.len().max(1) as f64
    );
    let calibration = BoxCalibration::fit(&pairs).context("fitting the calibration")?;
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
