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
use pipnet_infer::core::formats::{FaceAnnotation, csv_face_columns};
use pipnet_infer::core::smooth::OneEuroSettings;
use pipnet_infer::folder::{IMAGE_EXTENSIONS, write_atomic};
use pipnet_infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet_infer::pipeline::DEFAULT_MIN_PRESENCE;
use pipnet_infer::preview;
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
    /// Also write each frame with contours and face ids drawn, `OUT/preview/<frame>.jpg`.
    #[arg(long)]
    preview: bool,
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
        child: Child,
        width: u32,
        height: u32,
        fps: f64,
        next: usize,
    },
}

struct Frame {
    image: RgbImage,
    time: f64,
    name: Option<String>,
}

impl Frames {
    fn open(input: &Path, folder_fps: f64) -> anyhow::Result<Self> {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("reading {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                            IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())
                        })
                })
                .collect();
            files.sort();
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
        let (width, height, fps) = probe(input)?;
        let child = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(input)
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ffmpeg_missing("ffmpeg", e))?;
        Ok(Frames::Video {
            child,
            width,
            height,
            fps,
            next: 0,
        })
    }

    fn len(&self) -> Option<usize> {
        match self {
            Frames::Folder { files, .. } => Some(files.len()),
            Frames::Video { .. } => None,
        }
    }

    fn next_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        match self {
            Frames::Folder { files, next, fps } => {
                let Some(path) = files.get(*next) else {
                    return Ok(None);
                };
                let image = load_rgb(path, DEFAULT_MAX_PIXELS)?;
                let frame = Frame {
                    image,
                    time: *next as f64 / *fps,
                    name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
                };
                *next += 1;
                Ok(Some(frame))
            }
            Frames::Video {
                child,
                width,
                height,
                fps,
                next,
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
                if filled == 0 {
                    let status = child.wait()?;
                    if !status.success() {
                        let mut err = String::new();
                        if let Some(mut e) = child.stderr.take() {
                            e.read_to_string(&mut err).ok();
                        }
                        bail!("ffmpeg failed ({status}): {}", err.trim());
                    }
                    return Ok(None);
                }
                if filled < bytes {
                    bail!("ffmpeg ended inside frame {next} ({filled} of {bytes} bytes)");
                }
                let image = RgbImage::from_raw(*width, *height, buf).context("frame size")?;
                let frame = Frame {
                    image,
                    time: *next as f64 / *fps,
                    name: None,
                };
                *next += 1;
                Ok(Some(frame))
            }
        }
    }
}

fn ffmpeg_missing(tool: &str, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "could not run {tool} ({e}): video files are decoded with ffmpeg; install it \
         (Debian/Ubuntu: apt-get install ffmpeg) or pass a folder of frames"
    )
}

/// Width, height and frame rate of the first video stream, from ffprobe.
fn probe(input: &Path) -> anyhow::Result<(u32, u32, f64)> {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=width,height,r_frame_rate",
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
        [w, h, rate] => {
            let (num, den) = rate.split_once('/').unwrap_or((rate, "1"));
            let fps = num.parse::<f64>().ok().zip(den.parse::<f64>().ok());
            w.parse().ok().zip(h.parse().ok()).zip(fps)
        }
        _ => None,
    };
    match parsed {
        Some(((w, h), (num, den))) if w > 0 && h > 0 && num > 0.0 && den > 0.0 => {
            Ok((w, h, num / den))
        }
        _ => bail!(
            "{}: not a video ffprobe can read ({})",
            input.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

/// A tracked face as the output records it (`annotated` is [`annotations`]'s): the smoothed
/// points as `landmarks`, the measured ones as `raw_landmarks`.
fn face_json(face: &TrackedFace, annotated: &FaceAnnotation) -> serde_json::Value {
    serde_json::json!({
        "id": face.id,
        "box": annotated.face_box,
        "score": annotated.score,
        "presence": annotated.presence,
        "landmarks": annotated.landmarks,
        "raw_landmarks": face.face.landmarks.in_image,
        "landmark_scores": annotated.landmark_scores,
    })
}

/// The faces as outputs record them, with the smoothed points as landmarks (CSV rows and
/// previews).
fn annotations(faces: &[TrackedFace], scheme: Scheme) -> Vec<FaceAnnotation> {
    faces
        .iter()
        .map(|f| FaceAnnotation {
            landmarks: f.smoothed.clone(),
            ..f.face.annotation(scheme)
        })
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
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

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
    let start = std::time::Instant::now();
    while let Some(frame) = frames.next_frame()? {
        let faces = tracker
            .track(&frame.image, frame.time)
            .with_context(|| format!("frame {count}"))?;
        face_count += faces.len();
        ids.extend(faces.iter().map(|f| f.id));
        let annotated = annotations(&faces, scheme);
        if args.format == "csv" {
            for (face, a) in faces.iter().zip(&annotated) {
                let (time, id, values) = (frame.time, face.id, a.csv_values(false));
                text.push_str(&format!("{count},{time:.4},{id},{values}\n"));
            }
        } else {
            let line = serde_json::json!({
                "frame": count,
                "image": frame.name,
                "time": frame.time,
                "faces": faces
                    .iter()
                    .zip(&annotated)
                    .map(|(face, a)| face_json(face, a))
                    .collect::<Vec<_>>(),
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
        if args.preview {
            let labels: Vec<String> = faces.iter().map(|f| format!("#{}", f.id)).collect();
            let image = preview::draw_labelled(&frame.image, &annotated, Some(&labels))?;
            let path = args.out.join("preview").join(format!("{count:06}.jpg"));
            write_atomic(&path, &preview::encode_jpeg(&image)?)?;
        }
        count += 1;
        bar.inc(1);
        bar.set_message(format!("{} ids", ids.len()));
    }
    bar.finish_and_clear();
    if count == 0 {
        bail!("{}: no frames", args.input.display());
    }
    let file = args.out.join(format!("landmarks.{}", args.format));
    write_atomic(&file, text.as_bytes())?;
    let seconds = start.elapsed().as_secs_f64();
    let mut stderr = std::io::stderr().lock();
    writeln!(
        stderr,
        "{}: {}, {}, in {seconds:.1}s ({:.1} frames/s); output in {}",
        super::count(count, "frame"),
        super::count(face_count, "face"),
        super::count(ids.len(), "id"),
        count as f64 / seconds.max(1e-9),
        file.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_left_out_give_the_trackers_defaults_that_c_and_python_start_from() {
        let cli = Cli::parse_from(["track", "video.mp4", "--out", "out"]);
        assert_eq!(tracker_options(&cli.args), TrackerOptions::default());
        let cli = Cli::parse_from([
            "track",
            "v.mp4",
            "--out",
            "o",
            "--no-smooth",
            "--min-face",
            "30",
        ]);
        let options = tracker_options(&cli.args);
        assert_eq!(
            (options.smoothing, options.pipeline.min_face),
            (None, Some(30.0))
        );
    }
}
