//! `pipnet eval DATA [--model MODEL] [--crops truth|detector] [--refine] [--flip] [--ced ced.csv]
//! [--plot ced.png]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use pipnet_core::metrics::{Summary, ced_curve};
use pipnet_infer::eval::{EvalCrops, FaceResult, detector_crops, evaluate};
use pipnet_infer::image_io::DEFAULT_MAX_PIXELS;
use pipnet_infer::labeled::split_validation;
use pipnet_infer::pipeline::DEFAULT_MIN_PRESENCE;
use pipnet_infer::{Device, Pipeline, SessionOptions};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: super::ModelArgs,
    #[command(flatten)]
    data: super::LabeledArgs,
    /// Evaluate only the validation split of a training config (`val_fraction`, `split_seed`),
    /// e.g. `--split 0.1:1` for the default split.
    #[arg(long, value_parser = super::parse_split)]
    split: Option<(f64, u64)>,
    /// Where crops come from: `truth` (the true landmark box, the 300-W protocol) or
    /// `detector` (what annotating a photo does; also reports recall and the truth-crop NME of
    /// the same faces).
    #[arg(long, default_value = "truth", value_parser = ["truth", "detector"])]
    crops: String,
    #[command(flatten)]
    detector: super::DetectorArgs,
    /// Run the landmark model a second time on crops re-centred on its first landmarks.
    #[arg(long)]
    refine: bool,
    /// With --refine: only faces whose first-pass presence is below P get the second pass.
    #[arg(long, value_name = "P", requires = "refine")]
    refine_below: Option<f32>,
    /// Also run each crop mirrored and average the two (twice the landmark work).
    #[arg(long)]
    flip: bool,
    /// Write the CED curve (NME threshold, share of faces) as CSV.
    #[arg(long)]
    ced: Option<PathBuf>,
    /// Draw the CED curve as a PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write per-face NMEs as CSV, with the crop each face's first pass used (centre, side and
    /// angle in image pixels and radians: the detector's crops for the INT8 quantizer's --crops).
    #[arg(long)]
    per_face: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

fn print_summary(label: &str, summary: &Summary) {
    println!("{label}");
    println!("  faces     {}", summary.faces);
    println!("  NME       {:.4} (inter-ocular)", summary.nme);
    println!("  FR@0.1    {:.4}", summary.failure_rate);
    println!("  AUC@0.1   {:.4}", summary.auc);
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut faces = args.data.read()?;
    if let Some((fraction, seed)) = args.split {
        faces = split_validation(faces, fraction, seed).1;
    }
    let options = SessionOptions {
        device: args.device,
        ..Default::default()
    };
    let mut pipeline = Pipeline::new(args.model.load(&options)?, None);
    pipeline.refine = args.refine;
    pipeline.refine_below = args.refine_below;
    pipeline.model.set_flip_average(args.flip);
    let pass = match (args.refine, args.flip) {
        (false, false) => "",
        (true, false) => ", refined",
        (false, true) => ", flip-averaged",
        (true, true) => ", refined, flip-averaged",
    };
    let evaluate = |pipeline: &mut Pipeline, faces: &[_], crops| {
        evaluate(pipeline, faces, crops, 0.1, DEFAULT_MAX_PIXELS).context("evaluation failed")
    };
    let (results, summary) = if args.crops == "detector" {
        let mut detector = args.detector.load(&options)?;
        let rule = pipeline.model.metadata().crop;
        let detected = detector_crops(&mut detector, &faces, &rule, 0.3, DEFAULT_MAX_PIXELS)?;
        println!(
            "detector recall {}/{} = {:.4} (IoU > 0.3 with the landmark box)",
            detected.found.len(),
            faces.len(),
            detected.found.len() as f64 / faces.len().max(1) as f64
        );
        let (_, truth) = evaluate(&mut pipeline, &detected.found, EvalCrops::TrueBox)?;
        print_summary(&format!("crops from the true landmark box{pass}"), &truth);
        let crops = EvalCrops::Given(&detected.crops);
        let (results, summary) = evaluate(&mut pipeline, &detected.found, crops)?;
        print_summary(&format!("crops from the detector{pass}"), &summary);
        let lost = results
            .iter()
            .filter(|r| r.presence < DEFAULT_MIN_PRESENCE)
            .count();
        let lowest = results
            .iter()
            .map(|r| r.presence)
            .fold(f32::INFINITY, f32::min);
        println!(
            "presence: lowest {lowest:.3}; {lost} of {} found faces under annotate's \
             --min-presence {DEFAULT_MIN_PRESENCE} (recall with it {:.4})",
            results.len(),
            (results.len() - lost) as f64 / faces.len().max(1) as f64
        );
        (results, summary)
    } else {
        let (results, summary) = evaluate(&mut pipeline, &faces, EvalCrops::TrueBox)?;
        print_summary(&format!("crops from the true landmark box{pass}"), &summary);
        (results, summary)
    };
    write_reports(&args, &results, &summary)?;
    Ok(ExitCode::SUCCESS)
}

fn write_reports(args: &Args, results: &[FaceResult], summary: &Summary) -> anyhow::Result<()> {
    let nmes: Vec<f32> = results.iter().map(|r| r.nme).collect();
    let curve = ced_curve(&nmes, 0.1, 100);
    if let Some(path) = &args.ced {
        let mut csv = String::from("nme,share_of_faces\n");
        for (t, share) in &curve {
            csv.push_str(&format!("{t:.4},{share:.4}\n"));
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let name = args
            .model
            .model
            .as_deref()
            .and_then(|p| p.file_name())
            .map_or("built-in model".into(), |n| {
                n.to_string_lossy().into_owned()
            });
        let label = format!("{name}: NME {:.4}, AUC@0.1 {:.3}", summary.nme, summary.auc);
        crate::plot::ced_png(
            path,
            &format!("CED on {} faces", summary.faces),
            &[(label, curve)],
            0.1,
        )?;
    }
    if let Some(path) = &args.per_face {
        let mut csv = String::from("face,nme,crop_x,crop_y,crop_side,crop_angle\n");
        for r in results {
            let c = r.crop;
            csv.push_str(&format!(
                "{},{:.6},{:.3},{:.3},{:.3},{:.6}\n",
                r.name, r.nme, c.center[0], c.center[1], c.side, c.angle
            ));
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
