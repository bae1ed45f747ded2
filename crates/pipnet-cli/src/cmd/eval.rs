//! `pipnet eval DATA [--model MODEL] [--crops truth|detector] [--roll DEGREES,...]
//! [--refine | --no-refine] [--flip] [--ced ced.csv] [--plot ced.png]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use pipnet_core::metrics::{Summary, ced_curve};
use pipnet_infer::detect::RollSearch;
use pipnet_infer::eval::{
    EvalCrops, FaceResult, by_head_turn, evaluate, pipeline_detector_crops, turn_faces,
};
use pipnet_infer::image_io::DEFAULT_MAX_PIXELS;
use pipnet_infer::labeled::LabeledFace;
use pipnet_infer::labeled::split_validation;
use pipnet_infer::pipeline::DEFAULT_MIN_PRESENCE;
use pipnet_infer::{Device, Pipeline, PipelineOptions, SessionOptions};

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
    /// Turn the photos by each of these angles (degrees, comma-separated, e.g.
    /// 0,20,-20,40,-40,90,180; the truth turned with them) and score detector crops at each, as
    /// `annotate` runs them: one row per angle, with the faces lost (missed, or under
    /// annotate's --min-presence), NME, FR@0.1 and the most turned third's NME.
    #[arg(long, value_parser = super::parse_rolls, value_name = "DEGREES")]
    roll: Option<std::vec::Vec<f32>>,
    /// Where the detector also searches the photo turned by quarter turns: off,
    /// where-none-found (the default, as `annotate`) or always.
    #[arg(long, default_value = "where-none-found")]
    roll_search: RollSearch,
    #[command(flatten)]
    refine: super::RefineArgs,
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
    let detector = match args.crops.as_str() {
        "detector" => Some(args.detector.load(&options)?),
        _ => None,
    };
    let pipeline_options = PipelineOptions {
        second_pass: args.refine.second_pass(),
        roll_search: args.roll_search,
        flip: args.flip,
        ..PipelineOptions::keep_every_face()
    };
    let mut pipeline =
        Pipeline::with_options(args.model.load(&options)?, detector, pipeline_options)?;
    let pass = format!(
        ", second pass {}{}",
        pipeline_options.second_pass,
        if args.flip { ", flip-averaged" } else { "" }
    );
    if let Some(rolls) = &args.roll {
        if args.crops != "detector" {
            bail!("--roll scores detector crops: add --crops detector");
        }
        let results = by_roll(&mut pipeline, &faces, rolls, &pass)?;
        write_reports(&args, &results, &Summary::new(&[], 0.1))?;
        return Ok(ExitCode::SUCCESS);
    }
    let (results, summary) = if args.crops == "detector" {
        let detected = pipeline_detector_crops(&mut pipeline, &faces, DEFAULT_MAX_PIXELS)?;
        println!(
            "detector recall {}/{} = {:.4} (IoU > 0.3 with the landmark box)",
            detected.found.len(),
            faces.len(),
            detected.found.len() as f64 / faces.len().max(1) as f64
        );
        let (_, truth) = score(&mut pipeline, &detected.found, EvalCrops::TrueBox)?;
        print_summary(&format!("crops from the true landmark box{pass}"), &truth);
        let crops = EvalCrops::Given(&detected.located);
        let (results, summary) = score(&mut pipeline, &detected.found, crops)?;
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
        let (results, summary) = score(&mut pipeline, &faces, EvalCrops::TrueBox)?;
        print_summary(&format!("crops from the true landmark box{pass}"), &summary);
        (results, summary)
    };
    print_passes_and_turns(&results);
    write_reports(&args, &results, &summary)?;
    Ok(ExitCode::SUCCESS)
}

/// The faces' results at FR@0.1, as every report here gives them.
fn score(
    pipeline: &mut Pipeline,
    faces: &[LabeledFace],
    crops: EvalCrops<'_>,
) -> anyhow::Result<(Vec<FaceResult>, Summary)> {
    evaluate(pipeline, faces, crops, 0.1, DEFAULT_MAX_PIXELS).context("evaluation failed")
}

/// How many faces got the second pass, and the NME of each third of the faces by head turn.
fn print_passes_and_turns(results: &[FaceResult]) {
    let second = results.iter().filter(|r| r.first_pass.second_pass).count();
    println!(
        "second pass on {second} of {} faces ({:.1}%)",
        results.len(),
        100.0 * second as f64 / results.len().max(1) as f64
    );
    println!("by head turn (nose between the jaw ends, true landmarks; 0 frontal, 1 profile):");
    for (k, (largest, third)) in by_head_turn(results, 0.1).iter().enumerate() {
        let name = ["frontal third", "middle third", "most turned third"][k.min(2)];
        println!(
            "  {name:<18} (turn <= {largest:.2}): NME {:.4}, FR@0.1 {:.4}",
            third.nme, third.failure_rate
        );
    }
}

/// Scores the faces turned by each of `rolls` on detector crops, one row each; returns every
/// evaluated face (named with its roll).
fn by_roll(
    pipeline: &mut Pipeline,
    faces: &[LabeledFace],
    rolls: &[f32],
    pass: &str,
) -> anyhow::Result<Vec<FaceResult>> {
    println!("detector crops{pass}; lost: not found, or presence under {DEFAULT_MIN_PRESENCE}");
    println!(
        "{:>6} {:>12} {:>8} {:>8} {:>12} {:>12}",
        "roll", "lost", "NME", "FR@0.1", "NME turned", "second pass"
    );
    let mut all = Vec::new();
    for &roll in rolls {
        let turned = turn_faces(faces, roll, DEFAULT_MAX_PIXELS)?;
        let detected = pipeline_detector_crops(pipeline, &turned, DEFAULT_MAX_PIXELS)?;
        let crops = EvalCrops::Given(&detected.located);
        let (mut results, summary) = score(pipeline, &detected.found, crops)?;
        let kept = results
            .iter()
            .filter(|r| r.presence >= DEFAULT_MIN_PRESENCE)
            .count();
        let second = results.iter().filter(|r| r.first_pass.second_pass).count();
        let hardest = by_head_turn(&results, 0.1)
            .last()
            .map_or(f32::NAN, |t| t.1.nme);
        println!(
            "{:>6.0} {:>12} {:>8.4} {:>8.4} {:>12.4} {:>11.1}%",
            roll.to_degrees(),
            format!("{} of {}", faces.len() - kept, faces.len()),
            summary.nme,
            summary.failure_rate,
            hardest,
            100.0 * second as f64 / results.len().max(1) as f64
        );
        for r in &mut results {
            r.name = format!("{}@{:.0}", r.name, roll.to_degrees());
        }
        all.extend(results);
    }
    Ok(all)
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
    if let Some(path) = args.plot.as_ref().filter(|_| summary.faces > 0) {
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
        let mut csv = String::from(
            "face,nme,crop_x,crop_y,crop_side,crop_angle,presence,first_presence,shift,scale,\
             turn,second_pass,head_turn\n",
        );
        for r in results {
            let (c, p) = (r.crop, r.first_pass);
            let change = p
                .change
                .map_or([f32::NAN; 3], |c| [c.shift, c.scale, c.turn]);
            csv.push_str(&format!(
                "{},{:.6},{:.3},{:.3},{:.3},{:.6},{:.4},{:.4},{:.5},{:.5},{:.5},{},{:.4}\n",
                r.name,
                r.nme,
                c.center[0],
                c.center[1],
                c.side,
                c.angle,
                r.presence,
                p.presence,
                change[0],
                change[1],
                change[2],
                u8::from(p.second_pass),
                r.head_turn.unwrap_or(f32::NAN)
            ));
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
