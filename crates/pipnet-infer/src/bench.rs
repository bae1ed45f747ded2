//! Per-stage timings of the pipeline on a set of photos, for `pipnet bench`: decode image,
//! detect, crop, bare ONNX Runtime run, decode + merge, the landmark stage end to end (crop,
//! run, decode, back-projection) and the whole path from file to landmarks on known crops,
//! which is what the Python reference pipeline does too.

use std::path::PathBuf;
use std::time::Instant;

use image::RgbImage;
use pipnet_core::{FaceCrop, Landmark, PipMaps};

use crate::detect::FaceDetector;
use crate::error::{Error, Result};
use crate::image_io::load_rgb;
use crate::pipeline::{Faces, LocatedFace, Pipeline, fan_out, loader_detectors, locate};
use crate::tracker::{Tracker, TrackerOptions};

/// Timings of one stage, in seconds, one sample per image or per batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Stage {
    pub name: &'static str,
    /// What one sample covers: "image" or "batch".
    pub per: &'static str,
    pub median_ms: f64,
    pub p95_ms: f64,
    pub samples: usize,
}

impl Stage {
    fn new(name: &'static str, per: &'static str, seconds: &[f64]) -> Self {
        let mut sorted = seconds.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if sorted.is_empty() {
                f64::NAN
            } else {
                // Nearest rank.
                let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
                sorted[rank - 1] * 1e3
            }
        };
        Self {
            name,
            per,
            median_ms: at(0.5),
            p95_ms: at(0.95),
            samples: sorted.len(),
        }
    }
}

/// The photos with the crops the detector found, for runs on known crops.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CropSet {
    pub image: PathBuf,
    /// `[cx, cy, side, angle]` per face.
    pub crops: Vec<[f32; 4]>,
}

/// What one `bench` call measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BenchReport {
    pub images: usize,
    pub faces: usize,
    pub batch: usize,
    pub stages: Vec<Stage>,
    /// Landmark stage (crop + run + decode + back-projection) / bare run: the median over
    /// batches of the ratio on the same batch, so one slow run does not sway it.
    pub e2e_over_bare_ort: f64,
    /// Faces per second from image file to landmarks on known crops, no detection: the path
    /// the Python reference pipeline runs.
    pub crops_faces_per_second: f64,
    /// Runs of the detector graph per photo at the pipeline's smallest face (the whole photo
    /// plus the tiles of finer levels), the mean over the photos.
    pub detector_runs_per_image: f64,
    #[serde(skip)]
    pub crop_sets: Vec<CropSet>,
}

/// Every face of `images` as the model's input pairs; `sets[i]` holds the crops of image `i`.
fn faces_of<'a>(images: &'a [RgbImage], sets: &[CropSet]) -> Vec<(&'a RgbImage, FaceCrop)> {
    images
        .iter()
        .zip(sets)
        .flat_map(|(image, set)| {
            set.crops
                .iter()
                .map(move |c| (image, FaceCrop::new([c[0], c[1]], c[2], c[3])))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn timed<T>(samples: &mut Vec<f64>, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let value = f();
    samples.push(start.elapsed().as_secs_f64());
    value
}

/// Measures `pipeline` on `images` (`repeat` rounds after one warm-up round). The pipeline
/// needs a detector; its batch size is the model's.
pub fn bench(pipeline: &mut Pipeline, images: &[PathBuf], repeat: usize) -> Result<BenchReport> {
    if images.is_empty() {
        return Err(Error::InvalidInput("no images to benchmark".into()));
    }
    let max_pixels = crate::image_io::DEFAULT_MAX_PIXELS;
    let mut load = Vec::new();
    let mut decoded: Vec<RgbImage> = Vec::new();
    let mut crop_sets = Vec::new();
    for path in images {
        let image = timed(&mut load, || load_rgb(path, max_pixels))?;
        let found = pipeline.locate(&image, &Faces::Detect)?;
        let crops: Vec<FaceCrop> = found.into_iter().map(|(_, c)| c).collect();
        crop_sets.push(CropSet {
            image: path.clone(),
            crops: crops
                .iter()
                .map(|c| [c.center[0], c.center[1], c.side, c.angle])
                .collect(),
        });
        decoded.push(image);
    }
    let faces = faces_of(&decoded, &crop_sets);
    if faces.is_empty() {
        return Err(Error::InvalidInput(
            "the detector found no faces in the benchmark images".into(),
        ));
    }
    let (detect, detect_whole, detector_runs) = bench_detector(pipeline, &decoded, repeat)?;
    let model = &mut pipeline.model;
    let batch = model.batch_size();
    let meta = model.metadata().clone();
    let mut decoder = pipnet_core::Decoder::new(meta.neighbors.clone());
    let (mut crop, mut bare, mut decode, mut e2e, mut files) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut input = Vec::new();
    let mut landmarks = vec![Landmark::default(); batch * meta.num_landmarks()];
    for round in 0..=repeat {
        // Round 0 warms caches and ONNX Runtime's allocator; it is not recorded.
        let keep = |v: &mut Vec<f64>, n: usize| {
            if round == 0 {
                v.truncate(v.len() - n)
            }
        };
        for chunk in faces.chunks(batch) {
            timed(&mut crop, || model.prepare(chunk, &mut input));
            timed(&mut bare, || model.run_bare(&input, chunk.len()))?;
            let raw = model.run_raw(&input, chunk.len())?;
            let maps = PipMaps::new(
                &raw[0],
                &raw[1],
                &raw[2],
                &raw[3],
                &raw[4],
                meta.num_landmarks(),
                meta.num_neighbors(),
                meta.grid(),
            )
            .map_err(|e| Error::Inference(e.to_string()))?;
            let out = &mut landmarks[..chunk.len() * meta.num_landmarks()];
            timed(&mut decode, || decoder.decode_into(&maps, out))
                .map_err(|e| Error::Inference(e.to_string()))?;
            timed(&mut e2e, || model.landmarks(chunk))?;
            for v in [&mut crop, &mut bare, &mut decode, &mut e2e] {
                keep(v, 1);
            }
        }
        // File to landmarks on known crops, the whole set at once.
        timed(&mut files, || -> Result<()> {
            let images: Vec<RgbImage> = images
                .iter()
                .map(|p| load_rgb(p, max_pixels))
                .collect::<Result<_>>()?;
            model.landmarks(&faces_of(&images, &crop_sets)).map(drop)
        })?;
        keep(&mut files, 1);
    }
    let stages = vec![
        Stage::new("decode image", "image", &load),
        Stage::new("detect", "image", &detect),
        Stage::new("detect, whole photo only", "image", &detect_whole),
        Stage::new("crop", "batch", &crop),
        Stage::new("ORT run (bare)", "batch", &bare),
        Stage::new("decode + merge", "batch", &decode),
        Stage::new("landmarks end to end", "batch", &e2e),
    ];
    let median_files = Stage::new("files", "set", &files).median_ms / 1e3;
    Ok(BenchReport {
        images: images.len(),
        faces: faces.len(),
        batch,
        e2e_over_bare_ort: median(e2e.iter().zip(&bare).map(|(e, b)| e / b).collect()),
        crops_faces_per_second: faces.len() as f64 / median_files,
        detector_runs_per_image: detector_runs,
        stages,
        crop_sets,
    })
}

/// Detection times per photo over `repeat` rounds (after a warm-up round): as the pipeline
/// runs it (down to its smallest face), and the whole photo alone (no tiles), the part of the
/// cost the tiles add; and the detector graph's runs per photo.
fn bench_detector(
    pipeline: &mut Pipeline,
    images: &[RgbImage],
    repeat: usize,
) -> Result<(Vec<f64>, Vec<f64>, f64)> {
    let min_face = pipeline.options.min_face;
    let detector = pipeline
        .detector
        .as_mut()
        .ok_or_else(|| Error::InvalidInput("the benchmark needs a face detector".into()))?;
    let (mut full, mut whole, mut runs) = (Vec::new(), Vec::new(), 0);
    for _ in 0..=repeat {
        // Each round runs the same tiles: the last round's count stands for all.
        runs = 0;
        for image in images {
            let before = detector.graph_runs();
            timed(&mut full, || detector.detect(image, min_face))?;
            runs += detector.graph_runs() - before;
            // No smallest face is below what the whole photo shows: one run, no tiles.
            timed(&mut whole, || detector.detect(image, Some(f32::INFINITY)))?;
        }
    }
    // The first round warms caches; it is not recorded.
    full.drain(..images.len());
    whole.drain(..images.len());
    Ok((full, whole, runs as f64 / images.len().max(1) as f64))
}

/// Photos to landmarks as `annotate` runs them (decode, detect, landmarks with the pipeline's
/// refine and flip settings, faces of several photos sharing landmark batches), for comparing
/// whole pipelines such as dlib's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Throughput {
    pub photos: usize,
    /// Faces found in one pass over the photos.
    pub faces: usize,
    /// Median seconds of one pass.
    pub seconds: f64,
    pub photos_per_second: f64,
    pub faces_per_second: f64,
    /// Seconds of each measured pass, in order.
    pub rounds: Vec<f64>,
}

impl Throughput {
    /// From the faces one pass found and the seconds of each measured pass.
    pub fn from_rounds(photos: usize, faces: usize, rounds: Vec<f64>) -> Self {
        let seconds = median(rounds.clone());
        Self {
            photos,
            faces,
            seconds,
            photos_per_second: photos as f64 / seconds,
            faces_per_second: faces as f64 / seconds,
            rounds,
        }
    }
}

/// Times `repeat` passes of the whole pipeline over `images` after one warm-up pass, calling
/// `after_round` after each measured pass (where a peer runs its own round, so that each pair
/// of rounds sees the same machine load). Photos are decoded and their faces found on one
/// thread per core, as `annotate` does.
pub fn bench_photos<E: From<Error>>(
    pipeline: &mut Pipeline,
    images: &[PathBuf],
    repeat: usize,
    mut after_round: impl FnMut() -> std::result::Result<(), E>,
) -> std::result::Result<Throughput, E> {
    if images.is_empty() {
        return Err(Error::InvalidInput("no images to benchmark".into()).into());
    }
    let mut sessions = match &pipeline.detector {
        Some(d) => d.for_loaders(images.len())?,
        None => Vec::new(),
    };
    let rule = pipeline.model.metadata().crop;
    let search = (pipeline.options.min_face, pipeline.options.roll_search);
    let group = pipeline.model.batch_size();
    let load = |path: &PathBuf, detector: Option<&mut FaceDetector>| {
        let image = load_rgb(path, crate::image_io::DEFAULT_MAX_PIXELS)?;
        let found = locate(detector, &rule, search, &image, &Faces::Detect)?;
        Ok((image, found))
    };
    let mut pass = || -> Result<usize> {
        let detectors = loader_detectors(&mut sessions);
        fan_out(images.iter().collect(), detectors, group, load, |receive| {
            let mut faces = 0;
            let mut pending: Vec<(RgbImage, Vec<LocatedFace>)> = Vec::new();
            let mut run = |pending: &mut Vec<(RgbImage, Vec<LocatedFace>)>| -> Result<()> {
                let images: Vec<&RgbImage> = pending.iter().map(|(image, _)| image).collect();
                let located: Vec<&[LocatedFace]> =
                    pending.iter().map(|(_, f)| f.as_slice()).collect();
                for mut found in pipeline.landmarks_of(&images, &located)? {
                    pipeline.drop_false_detections(&mut found);
                    faces += found.len();
                }
                pending.clear();
                Ok(())
            };
            for loaded in receive {
                pending.push(loaded?);
                if pending.len() == group {
                    run(&mut pending)?;
                }
            }
            run(&mut pending)?;
            Ok(faces)
        })
    };
    let faces = pass()?;
    let mut rounds = Vec::new();
    for _ in 0..repeat.max(1) {
        timed(&mut rounds, &mut pass)?;
        after_round()?;
    }
    Ok(Throughput::from_rounds(images.len(), faces, rounds))
}

/// What else the machine was doing around a measurement: on a shared virtual machine a rate can
/// move by half between runs with nothing of ours changed, so a report says how loaded it was.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MachineLoad {
    /// The 1-minute load average just before (runnable processes, the measurement not yet
    /// among them).
    pub load_average_before: f64,
    /// Share of CPU time the hypervisor gave to other machines during it (`steal`).
    pub steal_share: f64,
}

impl MachineLoad {
    /// Runs `f` and says how loaded the machine was around it; `None` without Linux's `/proc`.
    pub fn around<T>(f: impl FnOnce() -> T) -> (T, Option<Self>) {
        let load_average_before = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok());
        let before = cpu_ticks();
        let value = f();
        let load = match (load_average_before, before, cpu_ticks()) {
            (Some(load_average_before), Some((t0, s0)), Some((t1, s1))) if t1 > t0 => Some(Self {
                load_average_before,
                steal_share: s1.saturating_sub(s0) as f64 / (t1 - t0) as f64,
            }),
            _ => None,
        };
        (value, load)
    }
}

/// All CPUs' ticks since boot and the stolen ones among them (`/proc/stat`'s first line: user,
/// nice, system, idle, iowait, irq, softirq, steal).
fn cpu_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let fields = text.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = fields
        .split_whitespace()
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    Some((ticks.iter().sum(), *ticks.get(7)?))
}

/// The video row of `pipnet bench`: frames/s of annotating each frame as a photo (detector and
/// both landmark passes) against the [`Tracker`] with `settings`, on the same frames.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VideoReport {
    pub frames: usize,
    /// Faces found per frame by the per-frame run, summed.
    pub faces: usize,
    pub per_frame_fps: f64,
    pub tracked_fps: f64,
    pub tracked_over_per_frame: f64,
    /// Frames the tracker ran its detector on.
    pub tracker_detector_runs: usize,
}

/// A camera panning across `photo`: `frames` windows of four fifths of its size, moving from its
/// left edge to its right (and down by a tenth) in equal steps.
pub fn panning_frames(photo: &RgbImage, frames: usize) -> Vec<RgbImage> {
    let (w, h) = photo.dimensions();
    let (cw, ch) = (w * 4 / 5, h * 4 / 5);
    (0..frames)
        .map(|t| {
            let f = t as f64 / frames.saturating_sub(1).max(1) as f64;
            let x = (f * f64::from(w - cw)).round() as u32;
            let y = (f * f64::from(h - ch) / 2.0).round() as u32;
            image::imageops::crop_imm(photo, x, y, cw, ch).to_image()
        })
        .collect()
}

/// Times `frames` annotated one by one and tracked (after one warm-up frame each); returns the
/// report and the pipeline.
pub fn bench_video(
    mut pipeline: Pipeline,
    frames: &[RgbImage],
    settings: TrackerOptions,
) -> Result<(VideoReport, Pipeline)> {
    let first = frames
        .first()
        .ok_or_else(|| Error::InvalidInput("no frames to benchmark".into()))?;
    // Frame by frame as the tracker runs its passes.
    pipeline.set_options(settings.pipeline)?;
    pipeline.faces(&[(first, &Faces::Detect)])?;
    let start = Instant::now();
    let mut faces = 0;
    for frame in frames {
        faces += pipeline.faces(&[(frame, &Faces::Detect)])?[0].len();
    }
    let per_frame = start.elapsed().as_secs_f64();
    let mut tracker = Tracker::new(pipeline, settings)?;
    tracker.track(first, 0.0)?;
    tracker.reset();
    let runs_before = tracker.detector_runs();
    let start = Instant::now();
    for (t, frame) in frames.iter().enumerate() {
        tracker.track(frame, t as f64 / 30.0)?;
    }
    let tracked = start.elapsed().as_secs_f64();
    let n = frames.len() as f64;
    let report = VideoReport {
        frames: frames.len(),
        faces,
        per_frame_fps: n / per_frame,
        tracked_fps: n / tracked,
        tracked_over_per_frame: per_frame / tracked,
        tracker_detector_runs: tracker.detector_runs() - runs_before,
    };
    Ok((report, tracker.into_pipeline()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p95_use_nearest_rank() {
        let samples: Vec<f64> = (1..=20).map(|i| i as f64 / 1e3).collect();
        let s = Stage::new("x", "batch", &samples);
        assert_eq!((s.median_ms, s.p95_ms, s.samples), (10.0, 19.0, 20));
        assert!(Stage::new("x", "batch", &[]).median_ms.is_nan());
    }
}
