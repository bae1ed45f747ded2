//! `pipnet eval DATA [--model MODEL] [--crops truth|detector] [--roll DEGREES,...]
//! [--pose-checks] [--face-size PIXELS] [--refine | --no-refine] [--flip] [--ced ced.csv] [--plot ced.png]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use pipnet_core::metrics::{Summary, ced_curve, quantile};
use pipnet_infer::detect::RollSearch;
use pipnet_infer::eval::{
    EvalCrops, FaceResult, by_head_turn, evaluate, pipeline_detector_crops, pose_changes,
    turn_faces,
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
    /// With --roll (which must include 0): also check the head poses of the predicted
    /// landmarks: each face's pose at each other roll, and on the mirrored photo, against its
    /// pose at 0 (turning the photo by A should add A to the roll and leave yaw and pitch;
    /// mirroring should negate yaw and roll).
    #[arg(long, requires = "roll")]
    pose_checks: bool,
    /// With --roll: first shrink each face's photo so that the longer side of its true
    /// landmark box is PIXELS (never enlarged; averaged down, as a camera further away sees
    /// it), e.g. 40 for the faces of a crowded group photo.
    #[arg(long, requires = "roll", value_name = "PIXELS")]
    face_size: Option<f32>,
    /// Where the detector also searches the photo turned by quarter turns: off,
    /// where-needed (the default, as `annotate`) or always.
    #[arg(long, default_value = "where-needed")]
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
        if args.pose_checks && !rolls.contains(&0.0) {
            bail!("--pose-checks compares with the upright photos: add 0 to --roll");
        }
        if let Some(side) = args.face_size {
            faces = faces
                .iter()
                .map(|f| f.shrunk(side, DEFAULT_MAX_PIXELS))
                .collect::<Result<_, _>>()?;
        }
        let by_roll = by_roll(&mut pipeline, &faces, rolls, &pass)?;
        if args.pose_checks {
            check_poses(&mut pipeline, &faces, &by_roll)?;
        }
        let mut results = Vec::new();
        for (roll, mut at_roll) in by_roll {
            for r in &mut at_roll {
                r.name = format!("{}@{:.0}", r.name, roll.to_degrees());
            }
            results.extend(at_roll);
        }
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
    println!("by head turn (|yaw| of the true landmarks' head pose):");
    for (k, (largest, third)) in by_head_turn(results, 0.1).iter().enumerate() {
        let name = ["frontal third", "middle third", "most turned third"][k.min(2)];
        println!(
            "  {name:<18} (|yaw| <= {largest:4.1} degrees): NME {:.4}, FR@0.1 {:.4}",
            third.nme, third.failure_rate
        );
    }
}

/// Scores the faces turned by each of `rolls` on detector crops, one row each; returns the
/// evaluated faces at each roll.
fn by_roll(
    pipeline: &mut Pipeline,
    faces: &[LabeledFace],
    rolls: &[f32],
    pass: &str,
) -> anyhow::Result<Vec<(f32, Vec<FaceResult>)>> {
    println!("detector crops{pass}; lost: not found, or presence under {DEFAULT_MIN_PRESENCE}");
    println!(
        "{:>6} {:>12} {:>8} {:>8} {:>12} {:>12}",
        "roll", "lost", "NME", "FR@0.1", "NME turned", "second pass"
    );
    let mut all = Vec::new();
    for &roll in rolls {
        let turned = turn_faces(faces, roll, DEFAULT_MAX_PIXELS)?;
        let (results, summary) = detector_results(pipeline, &turned)?;
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
        all.push((roll, results));
    }
    Ok(all)
}

/// The faces the detector finds, scored on its crops.
fn detector_results(
    pipeline: &mut Pipeline,
    faces: &[LabeledFace],
) -> anyhow::Result<(Vec<FaceResult>, Summary)> {
    let detected = pipeline_detector_crops(pipeline, faces, DEFAULT_MAX_PIXELS)?;
    score(
        pipeline,
        &detected.found,
        EvalCrops::Given(&detected.located),
    )
}

/// Prints how far each face's predicted pose moves, beyond what the change of photo should
/// do, between roll 0 and each other roll, and between the photo and its mirror image
/// ([`pose_changes`]): median and 95th percentile of the size of each angle's difference.
fn check_poses(
    pipeline: &mut Pipeline,
    faces: &[LabeledFace],
    by_roll: &[(f32, Vec<FaceResult>)],
) -> anyhow::Result<()> {
    let Some((_, upright)) = by_roll.iter().find(|(roll, _)| *roll == 0.0) else {
        bail!("--pose-checks compares with the upright photos, which were not scored");
    };
    let mirrored = faces
        .iter()
        .map(|f| f.mirrored(DEFAULT_MAX_PIXELS))
        .collect::<Result<Vec<_>, _>>()?;
    let (mirrored, _) = detector_results(pipeline, &mirrored)?;
    println!(
        "head pose of the predicted landmarks against the upright photo's, degrees \
         (median / 95th percentile of |difference|):"
    );
    println!(
        "{:>12} {:>6} {:>14} {:>14} {:>14}",
        "photo", "faces", "yaw", "pitch", "roll"
    );
    let turned = by_roll
        .iter()
        .filter(|(roll, _)| *roll != 0.0)
        .map(|(roll, results)| {
            let name = format!("turned {:.0}", roll.to_degrees());
            (name, pose_changes(upright, results, *roll, false))
        });
    let mirror = (
        "mirrored".to_string(),
        pose_changes(upright, &mirrored, 0.0, true),
    );
    for (name, changes) in turned.chain([mirror]) {
        let column = |k: usize| {
            let sizes: Vec<f32> = changes.iter().map(|c| c[k].abs()).collect();
            format!(
                "{:.2} / {:.2}",
                quantile(&sizes, 0.5),
                quantile(&sizes, 0.95)
            )
        };
        println!(
            "{name:>12} {:>6} {:>14} {:>14} {:>14}",
            changes.len(),
            column(0),
            column(1),
            column(2)
        );
    }
    Ok(())
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
             turn,second_pass,true_yaw,yaw,pitch,roll\n",
        );
        for r in results {
            let (c, p) = (r.crop, r.first_pass);
            let change = p
                .change
                .map_or([f32::NAN; 3], |c| [c.shift, c.scale, c.turn]);
            csv.push_str(&format!(
                "{},{:.6},{:.3},{:.3},{:.3},{:.6},{:.4},{:.4},{:.5},{:.5},{:.5},{},{:.2},{:.2},{:.2},\
                 {:.2}\n",
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
                r.true_yaw.unwrap_or(f32::NAN),
                r.pose.map_or(f32::NAN, |p| p.yaw),
                r.pose.map_or(f32::NAN, |p| p.pitch),
                r.pose.map_or(f32::NAN, |p| p.roll),
            ));
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
