//! Video on known truth: sequences made from validation faces (`common::synthetic_video`),
//! moving (drifting shift, scale and turn, noise 6 grey levels) and still (noise 8 only), run
//! per frame as `annotate --refine` would (detector + refine on every frame), tracked, and
//! tracked with smoothing. Prints NME, jitter (mean |predicted - true frame-to-frame motion|
//! over the inter-ocular distance), id switches, lost frames, detector runs and frames/s.
//!
//! `cargo run --release --example track_bench -- [FACES] [FRAMES] [SIZE] [MIN_CUTOFF] [BETA]`
//! (default 8 faces, 60 frames of 256 x 256, the default One Euro settings)

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use pipnet::core::Scheme;
use pipnet::core::metrics::nme;
use pipnet::core::smooth::OneEuroSettings;
use pipnet::infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet::infer::labeled::{read_labeled, split_validation};
use pipnet::infer::tracker::{Tracker, TrackerOptions};
use pipnet::infer::{Faces, Pipeline, SessionOptions};

type Points = Vec<[f32; 2]>;

#[derive(Default)]
struct Tally {
    nme: Vec<f32>,
    jitter: Vec<f32>,
    switches: usize,
    lost: usize,
    detector_runs: usize,
    frames: usize,
    seconds: f64,
}

impl Tally {
    /// One sequence's output: per frame, the face's id (if any) and points.
    fn add(&mut self, truth: &[Points], found: &[Option<(u64, Points)>]) {
        let mut last: Option<(u64, &Points, &Points)> = None;
        for (truth, found) in truth.iter().zip(found) {
            self.frames += 1;
            let Some((id, points)) = found else {
                self.lost += 1;
                last = None;
                continue;
            };
            self.nme
                .push(nme(points, truth, Scheme::W300_68).unwrap_or(f32::NAN));
            if let Some((last_id, last_points, last_truth)) = last {
                if last_id != *id {
                    self.switches += 1;
                }
                // Outer eye corners: the inter-ocular distance of the 300-W protocol.
                let iod = (truth[36][0] - truth[45][0]).hypot(truth[36][1] - truth[45][1]);
                let moved: f32 = (0..points.len())
                    .map(|i| {
                        let dp = [
                            points[i][0] - last_points[i][0],
                            points[i][1] - last_points[i][1],
                        ];
                        let dt = [
                            truth[i][0] - last_truth[i][0],
                            truth[i][1] - last_truth[i][1],
                        ];
                        (dp[0] - dt[0]).hypot(dp[1] - dt[1])
                    })
                    .sum::<f32>()
                    / points.len() as f32;
                self.jitter.push(moved / iod);
            }
            last = Some((*id, points, truth));
        }
    }

    fn row(&self, name: &str) {
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
        println!(
            "| {name} | {:.4} | {:.4} | {} | {} | {} | {:.1} |",
            mean(&self.nme),
            mean(&self.jitter),
            self.switches,
            self.lost,
            self.detector_runs,
            self.frames as f64 / self.seconds
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: f64| args.get(i).map_or(Ok(default), |a| a.parse::<f64>());
    let faces_wanted = arg(0, 8.0)? as usize;
    let frames = arg(1, 60.0)? as usize;
    let size = arg(2, 256.0)? as u32;
    let one_euro = OneEuroSettings {
        min_cutoff: arg(3, OneEuroSettings::default().min_cutoff)?,
        beta: arg(4, OneEuroSettings::default().beta)?,
        ..OneEuroSettings::default()
    };
    let data = common::repo_root().join("../shared/data/face68-train");
    let (_, val) = split_validation(read_labeled(&data, None)?, 0.1, 1);
    let options = SessionOptions::default();
    let settings = TrackerOptions {
        smoothing: Some(one_euro),
        ..TrackerOptions::default()
    };
    let pipeline = Pipeline::open(None, None, true, &options, settings.pipeline)?;
    let mut tracker = Tracker::new(pipeline, settings)?;
    for (kind, motion, noise) in [("moving", 1.0, 6.0), ("still", 0.0, 8.0)] {
        let mut tallies: [Tally; 3] = Default::default();
        for (k, face) in val.iter().take(faces_wanted).enumerate() {
            let photo = load_rgb(&face.image, DEFAULT_MAX_PIXELS)?;
            let video = common::synthetic_video(
                &photo,
                &face.points,
                frames,
                size,
                motion,
                noise,
                k as u64,
            );
            let truth: Vec<Points> = video.iter().map(|(_, t)| t.clone()).collect();
            // Per frame, as annotate runs each photo.
            let start = Instant::now();
            let mut found = Vec::new();
            for (frame, _) in &video {
                let faces = tracker.pipeline_mut().faces(&[(frame, &Faces::Detect)])?;
                let first = faces.into_iter().flatten().next();
                found.push(first.map(|f| (0, f.landmarks.in_image)));
            }
            tallies[0].seconds += start.elapsed().as_secs_f64();
            tallies[0].detector_runs += frames;
            tallies[0].add(&truth, &found);
            // Tracked: raw points, then smoothed (one run gives both).
            tracker.reset();
            let runs_before = tracker.detector_runs();
            let start = Instant::now();
            let (mut raw, mut smooth) = (Vec::new(), Vec::new());
            for (t, (frame, _)) in video.iter().enumerate() {
                let faces = tracker.track(frame, t as f64 / 30.0)?;
                let first = faces.into_iter().next();
                raw.push(
                    first
                        .as_ref()
                        .map(|f| (f.id, f.face.landmarks.in_image.clone())),
                );
                smooth.push(first.map(|f| (f.id, f.smoothed)));
            }
            let seconds = start.elapsed().as_secs_f64();
            for (tally, found) in tallies[1..].iter_mut().zip([&raw, &smooth]) {
                tally.seconds += seconds;
                tally.detector_runs += tracker.detector_runs() - runs_before;
                tally.add(&truth, found);
            }
        }
        println!(
            "\n{kind}: {faces_wanted} validation faces x {frames} frames ({size} x {size}), One \
             Euro min cutoff {} Hz, beta {}\n",
            one_euro.min_cutoff, one_euro.beta
        );
        println!("| run | NME | jitter | id switches | lost frames | detector runs | frames/s |");
        println!("|---|---|---|---|---|---|---|");
        for (tally, name) in
            tallies
                .iter()
                .zip(["per frame (annotate)", "tracked", "tracked + smoothed"])
        {
            tally.row(name);
        }
    }
    Ok(())
}
