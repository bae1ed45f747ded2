//! `pipnet annotate DIR|FILES... --out OUT [--model MODEL] [--format json|csv|pts] [--preview]
//! [--refine] [--shard K/N]`

use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use pipnet_core::SecondPass;
use pipnet_infer::core::ChipSpec;
use pipnet_infer::detect::RollSearch;
use pipnet_infer::folder::{FaceSource, FolderJob, OutputFormat, Shard, annotate_folder};
use pipnet_infer::image_io::DEFAULT_MAX_PIXELS;
use pipnet_infer::pipeline::DEFAULT_MIN_PRESENCE;
use pipnet_infer::{Pipeline, PipelineOptions};

use super::count;

#[derive(clap::Args)]
pub struct Args {
    /// Images and folders (walked recursively).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    model: super::ModelArgs,
    /// Output folder: per image `<image path>.json` (or `.csv`, or `_<k>.pts` per face), plus
    /// `failures.jsonl`.
    #[arg(long)]
    out: PathBuf,
    /// Output format: json, csv (one row per face) or pts (one iBUG file per face).
    #[arg(long, default_value = "json")]
    format: OutputFormat,
    /// Also write `OUT/preview/<image path>` (a JPEG; `.jpg` appended to other names) with
    /// boxes and landmarks drawn.
    #[arg(long)]
    preview: bool,
    /// Draw each face's head-pose axes on the previews (x red, y green, facing direction
    /// blue).
    #[arg(long, requires = "preview")]
    pose_axes: bool,
    /// Treat every image as one pre-cropped face (no face detection).
    #[arg(long, conflicts_with = "boxes")]
    crops: bool,
    /// Skip detection: a JSON object mapping each image's path (relative to its input folder)
    /// to a list of `[x0, y0, x1, y1]` tight landmark boxes in pixels.
    #[arg(long)]
    boxes: Option<PathBuf>,
    #[command(flatten)]
    detector: super::DetectorArgs,
    /// Smallest face to search for, in pixels (default: the detector's setting, 40). Smaller
    /// values search large photos in more tiles, which takes longer; below 12 px (half what
    /// the detector sees in its input) nothing more is found.
    #[arg(long)]
    min_face: Option<f32>,
    /// Where the detector also searches each photo turned by quarter turns, for faces rolled
    /// past the ~45 degrees it finds upright (sideways and upside-down photos): off,
    /// where-needed (photos with no face found upright, or with a face whose landmarks show it
    /// rolled past 45 degrees; free on photos of upright faces) or always (every photo, four
    /// times the detector's work).
    #[arg(long, default_value = "where-needed")]
    roll_search: RollSearch,
    #[command(flatten)]
    refine: super::RefineArgs,
    /// Also run each face crop mirrored and average the two results (twice the landmark
    /// work; see docs/experiments.md for what it buys).
    #[arg(long)]
    flip: bool,
    /// Drop detected faces whose presence (mean landmark score) is below this, and those whose
    /// landmarks lie over a face of higher presence: false detections such as ears or a box
    /// between two faces; 0 keeps all. Given boxes and crops are always kept.
    #[arg(long, default_value_t = DEFAULT_MIN_PRESENCE)]
    min_presence: f32,
    /// Also write an aligned chip per face, `OUT/chips/<image path>/<k>.png`: `arcface112`
    /// (InsightFace's five-point template) or `SIZE[:PADDING]` (eyes level, face centred,
    /// PADDING of the face's size on each side; default 0.25). Transforms go in the JSON.
    #[arg(long, value_name = "SPEC")]
    chips: Option<ChipSpec>,
    #[command(flatten)]
    session: super::SessionArgs,
    /// Redo images whose output is already newer than the image, and replace the outputs of a
    /// run with other settings (model, detector, --boxes or --crops, --min-face,
    /// --refine/--no-refine, --roll-search, --flip, --min-presence).
    #[arg(long)]
    force: bool,
    /// Exit 0 when the only failures are images that could not be annotated (they are still
    /// listed in OUT/failures.jsonl), so a batch scheduler does not retry a run over bad files.
    #[arg(long)]
    allow_failures: bool,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Annotate only shard K (0-based) of N: a fixed split of the images by a hash of their
    /// path, so N runs (one per machine) cover the inputs exactly once. Without it, a Slurm job
    /// array or a Kubernetes Indexed Job (with --shard-count) sets it.
    #[arg(long, value_name = "K/N")]
    shard: Option<Shard>,
    /// The number of shards of a Kubernetes Indexed Job (its completions; default:
    /// $PIPNET_SHARD_COUNT), whose index comes from JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "N", conflicts_with = "shard")]
    shard_count: Option<u32>,
}

/// `--shard`, else the scheduler's array index (see [`Shard::from_scheduler`]).
fn shard(args: &Args) -> anyhow::Result<Option<Shard>> {
    if args.shard.is_some() {
        return Ok(args.shard);
    }
    Ok(Shard::from_scheduler(
        |key| std::env::var(key).ok(),
        args.shard_count,
    )?)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pipeline_options = PipelineOptions {
        min_face: args.min_face,
        roll_search: args.roll_search,
        second_pass: args.refine.second_pass(),
        min_presence: args.min_presence,
        flip: args.flip,
        ..PipelineOptions::default()
    };
    pipeline_options.check()?;
    let options = args.session.options()?;
    let shard = shard(&args)?;
    if let Some(shard) = shard {
        eprintln!("pipnet: shard {shard}: annotating this shard's images only");
    }
    let faces = match (&args.boxes, args.crops) {
        (Some(path), _) => FaceSource::read_boxes(path)?,
        (None, true) => FaceSource::WholeImageIsFace,
        (None, false) => FaceSource::Detect,
    };
    let model = args.model.load(&options)?;
    let detector = match faces {
        FaceSource::Detect => Some(args.detector.load(&options)?),
        _ => None,
    };
    let mut pipeline = Pipeline::with_options(model, detector, pipeline_options)?;
    let job = FolderJob {
        inputs: args.inputs,
        out_dir: args.out.clone(),
        faces,
        format: args.format,
        preview: args.preview,
        pose_axes: args.pose_axes,
        force: args.force,
        max_pixels: args.max_pixels,
        shard,
        chips: args.chips,
    };
    // Hidden by indicatif when stderr is not a terminal.
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{pos}/{len} images [{bar:30}] {per_sec} eta {eta} {msg}")?
            .progress_chars("=> "),
    );
    let start = std::time::Instant::now();
    let summary = annotate_folder(&mut pipeline, &job, |s| {
        bar.set_length(s.images as u64);
        bar.set_position((s.annotated + s.skipped + s.failures.len()) as u64);
        bar.set_message(format!("{} faces, {} failed", s.faces, s.failures.len()));
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    for failure in &summary.failures {
        eprintln!("pipnet: failed: {}: {}", failure.image, failure.error);
    }
    for folder in &summary.output_folders_skipped {
        eprintln!(
            "pipnet: skipped {}: it holds a run's outputs",
            folder.display()
        );
    }
    if summary.faces_dropped > 0 {
        eprintln!(
            "pipnet: {} dropped as false: presence under {}, or landmarks over another face's \
             (--min-presence 0 keeps them)",
            count(summary.faces_dropped, "detected face"),
            args.min_presence
        );
    }
    if summary.faces > 0 {
        eprintln!(
            "pipnet: second landmark pass on {} of {} ({})",
            summary.second_passes,
            count(summary.faces, "face"),
            match args.refine.second_pass() {
                SecondPass::Auto => "where the first pass said it pays",
                SecondPass::Always => "--refine",
                SecondPass::Off => "--no-refine",
            }
        );
    }
    // A rate only when something was annotated: a rerun over finished work has none.
    let rate = match summary.annotated {
        0 => String::new(),
        n => format!(" ({:.1} images/s)", n as f64 / seconds.max(1e-9)),
    };
    eprintln!(
        "{}: {} annotated ({}), {} already done, {} failed in {:.1}s{rate}; output in {}",
        count(summary.images, "image"),
        summary.annotated,
        count(summary.faces, "face"),
        summary.skipped,
        summary.failures.len(),
        seconds,
        args.out.display()
    );
    Ok(super::exit_for_failures(
        !summary.failures.is_empty() && !args.allow_failures,
    ))
}

#[cfg(test)]
mod tests {
    use pipnet_core::formats::{GraphId, RunSettings};

    use super::*;

    #[test]
    fn force_help_names_every_setting_the_run_record_compares() {
        let graph = GraphId {
            name: "m.onnx".into(),
            sha256: "0".repeat(64),
            scheme: None,
        };
        let settings = RunSettings {
            model: graph.clone(),
            faces: "boxes".into(),
            detector: Some(graph),
            boxes_sha256: Some("0".repeat(64)),
            min_face: Some(40.0),
            second_pass: "auto".into(),
            roll_search: "off".into(),
            flip: false,
            min_presence: 0.3,
            track: None,
        };
        let command = <Args as clap::Args>::augment_args(clap::Command::new("annotate"));
        let help = command
            .get_arguments()
            .find(|a| a.get_id() == "force")
            .and_then(|a| a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let record = serde_json::to_value(&settings).unwrap();
        for key in record.as_object().unwrap().keys() {
            let named = match key.as_str() {
                "model" => "model",
                "faces" => "--crops",
                "detector" => "detector",
                "boxes_sha256" => "--boxes",
                "min_face" => "--min-face",
                "second_pass" => "--refine",
                "roll_search" => "--roll-search",
                "flip" => "--flip",
                "min_presence" => "--min-presence",
                other => panic!("a new run setting {other}: name it in --force's help"),
            };
            assert!(help.contains(named), "{key} ({named}) missing from: {help}");
        }
    }
}
