//! `pipnet track INPUT --out OUT`: landmarks on a video file or a folder of frames, with stable
//! face ids and smoothing ([`pipnet_infer::tracker`]). Frame sources are this command's edge:
//! a folder's images sorted by name, or a video decoded by the system's ffmpeg.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use pipnet_infer::core::Scheme;
use pipnet_infer::core::formats::{FaceAnnotation, Provenance, TrackSettings, csv_face_columns};
use pipnet_infer::core::smooth::OneEuroSettings;
use pipnet_infer::files::{images_in, write_atomic};
use pipnet_infer::folder::{FaceSource, Failure, preview_path, run_settings};
use pipnet_infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet_infer::pipeline::DEFAULT_MIN_PRESENCE;
use pipnet_infer::preview;
use pipnet_infer::run_record;
use pipnet_infer::tracker::{TrackedFace, Tracker, TrackerOptions};
use pipnet_infer::{Pipeline, PipelineOptions};

#[derive(clap::Args)]
pub struct Args {
    /// A video file (decoded with ffmpeg) or a folder of frames (its images, sorted by name).
    input: PathBuf,
    /// Output folder: `landmarks.jsonl` (or `landmarks.csv`), `preview/` with --preview.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    model: super::ModelArgs,
    #[command(flatten)]
    detector: super::DetectorArgs,
    #[command(flatten)]
    session: super::SessionArgs,
    /// jsonl (one line per frame) or csv (one row per face and frame).
    #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv"])]
    format: String,
    /// Also write each frame with contours and face ids drawn: `OUT/preview/<frame file>` (a
    /// JPEG; `.jpg` appended to other names) for a frame folder, `OUT/preview/<frame
    /// number>.jpg` for a video.
    #[arg(long)]
    preview: bool,
    /// Draw each face's head-pose axes (of the smoothed points) on the previews.
    #[arg(long, requires = "preview")]
    pose_axes: bool,
    /// Replace the outputs of a run on another input or with other settings in OUT.
    #[arg(long)]
    force: bool,
    /// Frames per second of a frame folder (a video's own rate is used for video).
    #[arg(long, default_value_t = 30.0)]
    fps: f64,
    /// Run the face detector every this many frames (new faces); held faces need none.
    #[arg(long, default_value_t = TrackerOptions::default().detect_every)]
    detect_every: usize,
    /// End a face's track after this many frames unseen (it then gets a new id).
    #[arg(long, default_value_t = TrackerOptions::default().max_missed)]
    max_missed: usize,
    /// Drop detected faces, and lose held ones, whose presence falls under this.
    #[arg(long, default_value_t = DEFAULT_MIN_PRESENCE)]
    min_presence: f32,
    /// Write the points as measured: no One Euro smoothing.
    #[arg(long)]
    no_smooth: bool,
    /// One Euro filter: cutoff at rest in Hz (lower: steadier still faces, more lag).
    #[arg(long, default_value_t = OneEuroSettings::default().min_cutoff)]
    min_cutoff: f64,
    /// One Euro filter: how fast the cutoff rises with speed (higher: less lag in motion).
    #[arg(long, default_value_t = OneEuroSettings::default().beta)]
    beta: f64,
    /// Smallest face to detect, in pixels (default: the detector's, 40).
    #[arg(long)]
    min_face: Option<f32>,
}

/// Frames from a folder or from ffmpeg, with their time and (for folders) file name.
enum Frames {
    Folder {
        files: Vec<PathBuf>,
        next: usize,
        fps: f64,
    },
    Video {
        input: PathBuf,
        child: Child,
        /// ffmpeg's error output, read on its own thread so that a chatty decoder cannot
        /// block on a full pipe while this side waits for frames.
        errors: Option<std::thread::JoinHandle<String>>,
        width: u32,
        height: u32,
        fps: f64,
        /// The stream header's frame count, when the container has one.
        expected: Option<usize>,
        next: usize,
        /// ffmpeg stopped inside a frame.
        cut_short: bool,
    },
}

struct Frame {
    image: RgbImage,
    /// Its place in the input: the file's in a folder, the decoded frame's in a video.
    index: usize,
    time: f64,
    name: Option<String>,
}

/// What the next read of a frame source gave.
enum Next {
    Frame(Frame),
    /// A frame file that could not be read: reported, and the rest go on (as a damaged video
    /// keeps the frames ffmpeg decodes).
    Failed(Failure),
    End,
}

impl Frames {
    fn open(input: &Path, folder_fps: f64) -> anyhow::Result<Self> {
        if input.is_dir() {
            let files = images_in(input)?;
            if files.is_empty() {
                bail!(
                    "{}: no image files (frames) in this folder",
                    input.display()
                );
            }
            return Ok(Frames::Folder {
                files,
                next: 0,
                fps: folder_fps,
            });
        }
        if !input.is_file() {
            bail!("{}: no such video file or frame folder", input.display());
        }
        let stream = probe(input)?;
        let mut child = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(input)
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ffmpeg_missing("ffmpeg", e))?;
        let errors = child.stderr.take().map(|mut stderr| {
            std::thread::spawn(move || {
                let mut text = String::new();
                // What could not be read is lost from the report only.
                let _ = stderr.read_to_string(&mut text);
                text
            })
        });
        Ok(Frames::Video {
            input: input.to_path_buf(),
            child,
            errors,
            width: stream.width,
            height: stream.height,
            fps: stream.fps,
            expected: stream.frames,
            next: 0,
            cut_short: false,
        })
    }

    fn len(&self) -> Option<usize> {
        match self {
            Frames::Folder { files, .. } => Some(files.len()),
            Frames::Video { expected, .. } => *expected,
        }
    }

    /// Frames per second: `--fps` for a folder, the stream's rate for a video.
    fn fps(&self) -> f64 {
        match self {
            Frames::Folder { fps, .. } | Frames::Video { fps, .. } => *fps,
        }
    }

    fn next_frame(&mut self) -> anyhow::Result<Next> {
        match self {
            Frames::Folder { files, next, fps } => {
                let Some(path) = files.get(*next) else {
                    return Ok(Next::End);
                };
                let index = *next;
                *next += 1;
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Ok(match load_rgb(path, DEFAULT_MAX_PIXELS) {
                    Ok(image) => Next::Frame(Frame {
                        image,
                        index,
                        time: index as f64 / *fps,
                        name: Some(name),
                    }),
                    Err(e) => Next::Failed(Failure {
                        image: name,
                        error: e.to_string(),
                    }),
                })
            }
            Frames::Video {
                child,
                width,
                height,
                fps,
                next,
                cut_short,
                ..
            } => {
                let bytes = *width as usize * *height as usize * 3;
                let mut buf = vec![0u8; bytes];
                let stdout = child.stdout.as_mut().context("ffmpeg has no output")?;
                let mut filled = 0;
                while filled < bytes {
                    let n = stdout
                        .read(&mut buf[filled..])
                        .context("reading ffmpeg's frames")?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled < bytes {
                    *cut_short = filled > 0;
                    return Ok(Next::End);
                }
                let image = RgbImage::from_raw(*width, *height, buf).context("frame size")?;
                let frame = Frame {
                    image,
                    index: *next,
                    time: *next as f64 / *fps,
                    name: None,
                };
                *next += 1;
                Ok(Next::Frame(frame))
            }
        }
    }

    /// After the last frame: what went wrong with a video (ffmpeg's exit and errors, fewer
    /// frames than its header says), as one failure naming the file; a folder's failures were
    /// reported frame by frame.
    fn finish(self) -> anyhow::Result<Option<Failure>> {
        let Frames::Video {
            input,
            mut child,
            errors,
            expected,
            next,
            cut_short,
            ..
        } = self
        else {
            return Ok(None);
        };
        let status = child.wait().context("waiting for ffmpeg")?;
        let errors = errors
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default();
        let mut problems = Vec::new();
        if !status.success() {
            problems.push(format!("ffmpeg failed ({status})"));
        }
        if let Some(expected) = expected.filter(|&n| next < n) {
            problems.push(format!(
                "{next} of the {expected} frames its header lists were decoded: the file is cut \
                 or damaged"
            ));
        }
        if cut_short {
            problems.push(format!("ffmpeg stopped inside frame {next}"));
        }
        let errors: Vec<&str> = errors
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if !errors.is_empty() {
            let shown = errors
                .iter()
                .take(5)
                .copied()
                .collect::<Vec<_>>()
                .join(" | ");
            problems.push(format!(
                "ffmpeg reported {}: {shown}",
                super::count(errors.len(), "error")
            ));
        }
        Ok((!problems.is_empty()).then(|| Failure {
            image: input.display().to_string(),
            error: format!("{}; the frames decoded were tracked", problems.join("; ")),
        }))
    }
}

fn ffmpeg_missing(tool: &str, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "could not run {tool} ({e}): video files are decoded with ffmpeg; install it \
         (Debian/Ubuntu: apt-get install ffmpeg) or pass a folder of frames"
    )
}

/// What ffprobe says of a video's first stream.
struct Stream {
    width: u32,
    height: u32,
    fps: f64,
    /// Frames listed in the container's header (`None` where it keeps no count, e.g. MKV).
    frames: Option<usize>,
}

/// The first video stream's size, frame rate and frame count, from ffprobe.
fn probe(input: &Path) -> anyhow::Result<Stream> {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=width,height,r_frame_rate,nb_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(input)
        .output()
        .map_err(|e| ffmpeg_missing("ffprobe", e))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().next().unwrap_or_default();
    let fields: Vec<&str> = line.trim().split(',').collect();
    let parsed = match fields.as_slice() {
        [w, h, rate, frames @ ..] => {
            let (num, den) = rate.split_once('/').unwrap_or((rate, "1"));
            let fps = num.parse::<f64>().ok().zip(den.parse::<f64>().ok());
            let frames = frames.first().and_then(|n| n.parse::<usize>().ok());
            w.parse()
                .ok()
                .zip(h.parse().ok())
                .zip(fps)
                .map(|s| (s, frames))
        }
        _ => None,
    };
    match parsed {
        Some((((width, height), (num, den)), frames))
            if width > 0 && height > 0 && num > 0.0 && den > 0.0 =>
        {
            Ok(Stream {
                width,
                height,
                fps: num / den,
                frames: frames.filter(|&n| n > 0),
            })
        }
        _ => bail!(
            "{}: not a video ffprobe can read ({})",
            input.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

/// A tracked face as the output records it (`annotated` is [`annotations`]'s): the smoothed
/// points as `landmarks`, the measured ones as `raw_landmarks`, the pose of the smoothed
/// points (`null` without one).
fn face_json(face: &TrackedFace, annotated: &FaceAnnotation) -> serde_json::Value {
    serde_json::json!({
        "id": face.id,
        "box": annotated.face_box,
        "score": annotated.score,
        "presence": annotated.presence,
        "landmarks": annotated.landmarks,
        "raw_landmarks": face.face.landmarks.in_image,
        "landmark_scores": annotated.landmark_scores,
        "pose": annotated.pose,
    })
}

/// The faces as outputs record them, with the smoothed points as landmarks and the head pose
/// fitted to those (CSV rows, JSON lines and previews).
fn annotations(faces: &[TrackedFace], scheme: Scheme) -> Vec<FaceAnnotation> {
    faces
        .iter()
        .map(|f| f.face.annotation_with(scheme, &f.smoothed))
        .collect()
}

/// The tracker's options as the flags give them; their defaults are [`TrackerOptions`]'s.
fn tracker_options(args: &Args) -> TrackerOptions {
    let defaults = TrackerOptions::default();
    TrackerOptions {
        pipeline: PipelineOptions {
            min_face: args.min_face,
            min_presence: args.min_presence,
            ..defaults.pipeline
        },
        detect_every: args.detect_every,
        max_missed: args.max_missed,
        smoothing: (!args.no_smooth).then_some(OneEuroSettings {
            min_cutoff: args.min_cutoff,
            beta: args.beta,
            ..OneEuroSettings::default()
        }),
        ..defaults
    }
}

/// What `pipnet track` writes into OUT besides its run record; a run removes what an earlier
/// one left of these before writing its own, so outputs of two runs never mix.
const OUTPUTS: [&str; 4] = [
    "landmarks.jsonl",
    "landmarks.csv",
    "failures.jsonl",
    "preview",
];

/// Checks OUT's run record against this run's (another input or other settings need --force;
/// another command's folder is refused), records this run, and removes the last run's outputs.
fn claim_output_folder(args: &Args, tracker: &Tracker, fps: f64) -> anyhow::Result<()> {
    let pipeline = tracker.pipeline();
    let options = tracker.options();
    let input = std::fs::canonicalize(&args.input)
        .with_context(|| format!("resolving {}", args.input.display()))?;
    let mut settings = run_settings(pipeline, &FaceSource::Detect);
    settings.track = Some(TrackSettings {
        input: input.display().to_string(),
        fps,
        detect_every: options.detect_every,
        max_missed: options.max_missed,
        smoothing: options.smoothing.map(|s| [s.min_cutoff, s.beta]),
    });
    let made_by = Provenance {
        pipnet: env!("CARGO_PKG_VERSION").into(),
        settings,
    };
    let default_min_face = pipeline.detector().map(|d| d.settings().min_face);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // Only a folder a run has claimed holds outputs of ours to remove.
    let claimed = args.out.join(run_record::RUN_RECORD).is_file();
    run_record::claim_output_folder(&args.out, &made_by, default_min_face, args.force, || Ok(()))?;
    for name in OUTPUTS.iter().filter(|_| claimed) {
        let path = args.out.join(name);
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The output lines of one frame, as `--format` says.
fn frame_lines(
    format: &str,
    frame: &Frame,
    faces: &[TrackedFace],
    annotated: &[FaceAnnotation],
) -> String {
    if format == "csv" {
        faces
            .iter()
            .zip(annotated)
            .map(|(face, a)| {
                let (index, time, id) = (frame.index, frame.time, face.id);
                format!("{index},{time:.4},{id},{}\n", a.csv_values(false))
            })
            .collect()
    } else {
        let line = serde_json::json!({
            "frame": frame.index,
            "image": frame.name,
            "time": frame.time,
            "faces": faces
                .iter()
                .zip(annotated)
                .map(|(face, a)| face_json(face, a))
                .collect::<Vec<_>>(),
        });
        line.to_string() + "\n"
    }
}

/// Where a frame's preview goes: named after its file for a frame folder, numbered for a video.
fn frame_preview_path(out: &Path, frame: &Frame) -> PathBuf {
    match &frame.name {
        Some(name) => preview_path(out, name),
        None => out.join("preview").join(format!("{:06}.jpg", frame.index)),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !(args.fps.is_finite() && args.fps > 0.0) {
        bail!("--fps must be a positive number");
    }
    let settings = tracker_options(&args);
    settings.check()?;
    let mut frames = Frames::open(&args.input, args.fps)?;
    let options = args.session.options()?;
    let model = args.model.load(&options)?;
    let scheme = model.metadata().scheme;
    let detector = args.detector.load(&options)?;
    let pipeline = Pipeline::with_options(model, Some(detector), settings.pipeline)?;
    let mut tracker = Tracker::new(pipeline, settings)?;
    claim_output_folder(&args, &tracker, frames.fps())?;

    let bar = match frames.len() {
        Some(n) => ProgressBar::new(n as u64),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template("{pos} frames [{bar:30}] {per_sec} eta {eta} {msg}")?
            .progress_chars("=> "),
    );
    let mut text = String::new();
    if args.format == "csv" {
        let columns = csv_face_columns(scheme.num_landmarks(), false);
        text.push_str(&format!("frame,time,id,{columns}\n"));
    }
    let (mut count, mut face_count) = (0usize, 0usize);
    let mut ids = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    let start = std::time::Instant::now();
    loop {
        let frame = match frames.next_frame()? {
            Next::Frame(frame) => frame,
            Next::Failed(failure) => {
                failures.push(failure);
                continue;
            }
            Next::End => break,
        };
        let faces = tracker
            .track(&frame.image, frame.time)
            .with_context(|| format!("frame {}", frame.index))?;
        face_count += faces.len();
        ids.extend(faces.iter().map(|f| f.id));
        let annotated = annotations(&faces, scheme);
        text.push_str(&frame_lines(&args.format, &frame, &faces, &annotated));
        if args.preview {
            let labels: Vec<String> = faces.iter().map(|f| format!("#{}", f.id)).collect();
            let marks = preview::Marks {
                labels: Some(&labels),
                pose_axes: args.pose_axes,
            };
            let image = preview::draw_marked(&frame.image, &annotated, marks)?;
            let path = frame_preview_path(&args.out, &frame);
            write_atomic(&path, &preview::encode_jpeg(&image)?)?;
        }
        count += 1;
        bar.inc(1);
        bar.set_message(super::count(ids.len(), "id"));
    }
    bar.finish_and_clear();
    failures.extend(frames.finish()?);
    let mut stderr = std::io::stderr().lock();
    for failure in &failures {
        writeln!(
            stderr,
            "pipnet: failed: {}: {}",
            failure.image, failure.error
        )?;
    }
    if count == 0 {
        bail!("{}: no frame could be read", args.input.display());
    }
    let file = args.out.join(format!("landmarks.{}", args.format));
    write_atomic(&file, text.as_bytes())?;
    let failed: String = failures
        .iter()
        .map(|f| serde_json::to_string(f).unwrap_or_default() + "\n")
        .collect();
    write_atomic(&args.out.join("failures.jsonl"), failed.as_bytes())?;
    let seconds = start.elapsed().as_secs_f64();
    writeln!(
        stderr,
        "{}: {}, {}, {} failed, in {seconds:.1}s ({:.1} frames/s); output in {}",
        super::count(count, "frame"),
        super::count(face_count, "face"),
        super::count(ids.len(), "id"),
        failures.len(),
        count as f64 / seconds.max(1e-9),
        file.display()
    )?;
    Ok(super::exit_for_failures(!failures.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::super::parse_args;
    use super::*;

    #[test]
    fn flags_left_out_give_the_trackers_defaults_that_c_and_python_start_from() {
        let args: Args = parse_args(&["track", "video.mp4", "--out", "out"]);
        assert_eq!(tracker_options(&args), TrackerOptions::default());
        let args: Args = parse_args(&[
            "track",
            "v.mp4",
            "--out",
            "o",
            "--no-smooth",
            "--min-face",
            "30",
        ]);
        let options = tracker_options(&args);
        assert_eq!(
            (options.smoothing, options.pipeline.min_face),
            (None, Some(30.0))
        );
    }
}
