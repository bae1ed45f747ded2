//! Landmarks on video: faces followed from frame to frame with stable ids.
//!
//! A face held from the previous frame is cropped where its landmarks there, moved on by their
//! last motion, put it (the refine crop, turned to the eye line), and costs one landmark pass,
//! no detection. The detector runs on the first frame, every `detect_every` frames (to find new
//! faces), and while a face is lost: its presence fell under the pipeline's `min_presence`, the
//! bar detected faces must pass too. Detections that overlap a held face are ignored, one that overlaps a lost face
//! takes it back (same id), the rest start new tracks. A track unseen for more than
//! `max_missed` frames ends. Each track's points go through a One Euro filter per coordinate
//! ([`LandmarkSmoother`]), restarted when the track restarts.

use std::path::Path;

use image::RgbImage;
use pipnet_core::smooth::{LandmarkSmoother, OneEuroSettings};
use pipnet_core::{CropRule, FaceBox, FaceCrop, Point, Scheme, SecondPass, landmark_crop};

use crate::error::{Error, Result};
use crate::model::FaceLandmarks;
use crate::options::SessionOptions;
use crate::pipeline::{Face, Faces, LocatedFace, Pipeline, PipelineOptions};

/// How faces are followed, with the options of the pipeline that finds them; the defaults are
/// `pipnet track`'s, measured (`docs/experiments.md`, "Video"), and the CLI, C and Python trackers
/// all start from them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerOptions {
    /// The landmark passes: [`PipelineOptions::default`] with a second pass for every face.
    pub pipeline: PipelineOptions,
    /// Run the detector every this many frames to find new faces (1: every frame).
    pub detect_every: usize,
    /// A track not seen for more than this many frames ends; its face gets a new id.
    pub max_missed: usize,
    /// Overlap (IoU) at which a detection is the same face as a track.
    pub min_iou: f32,
    /// Smoothing of the points; `None` outputs them as measured.
    pub smoothing: Option<OneEuroSettings>,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        Self {
            pipeline: PipelineOptions {
                second_pass: SecondPass::Always,
                ..PipelineOptions::default()
            },
            detect_every: 10,
            max_missed: 5,
            min_iou: 0.3,
            smoothing: Some(OneEuroSettings::default()),
        }
    }
}

impl TrackerOptions {
    /// Fails, naming the option, where a value is out of range.
    pub fn check(&self) -> Result<()> {
        self.pipeline.check()?;
        let bad = |what: String| Err(Error::InvalidInput(what));
        if self.detect_every == 0 {
            return bad("detect_every 0: the detector must run at least every frame (1)".into());
        }
        if !(0.0..=1.0).contains(&self.min_iou) {
            return bad(format!("min_iou {}: must be within 0..1", self.min_iou));
        }
        if let Some(s) = &self.smoothing {
            let positive = |v: f64| v.is_finite() && v > 0.0;
            if !(positive(s.min_cutoff) && positive(s.beta) && positive(s.derivative_cutoff)) {
                return bad(format!(
                    "smoothing {s:?}: min_cutoff, beta and derivative_cutoff must be positive"
                ));
            }
        }
        Ok(())
    }
}

/// One face on one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackedFace {
    /// Stable across frames while the track lives; ids are never reused.
    pub id: u64,
    /// The landmark pass of this frame (points as measured, scores, crop).
    pub face: Face,
    /// The points after smoothing (the measured points when smoothing is off).
    pub smoothed: Vec<Point>,
}

struct Track {
    id: u64,
    /// The last points seen, where the next frame's crop comes from.
    landmarks: Vec<Point>,
    /// The points of the frame before, when the face was held on both: the crop moves on by
    /// the face's last motion.
    previous: Option<Vec<Point>>,
    /// Frames since the face was last seen (0: seen on the last frame).
    missed: usize,
    smoother: Option<LandmarkSmoother>,
}

impl Track {
    fn new(id: u64, landmarks: Vec<Point>) -> Self {
        Self {
            id,
            landmarks,
            previous: None,
            missed: 0,
            smoother: None,
        }
    }

    fn face_box(&self) -> Option<FaceBox> {
        FaceBox::around(&self.landmarks).ok()
    }

    /// Where the face should be cropped on the next frame: its last landmarks' crop, turned to
    /// their eye line ([`landmark_crop`]), moved on by their last motion (centre and side, the
    /// side's change limited to a quarter).
    fn predicted_crop(&self, rule: &CropRule, scheme: Scheme) -> Option<FaceCrop> {
        let now = landmark_crop(rule, scheme, &self.landmarks).ok()?;
        let Some(before) = self
            .previous
            .as_deref()
            .and_then(|p| landmark_crop(rule, scheme, p).ok())
        else {
            return Some(now);
        };
        let (c, b) = (now.center, before.center);
        let grow = (now.side / before.side.max(1e-3)).clamp(0.8, 1.25);
        Some(FaceCrop::new(
            [2.0 * c[0] - b[0], 2.0 * c[1] - b[1]],
            now.side * grow,
            now.angle,
        ))
    }

    /// The face was seen at `points` on this frame.
    fn seen(&mut self, points: Vec<Point>, held: bool) {
        let before = std::mem::replace(&mut self.landmarks, points);
        self.previous = held.then_some(before);
        self.missed = 0;
        if !held {
            self.smoother = None;
        }
    }
}

/// Follows faces across frames; see the module documentation.
pub struct Tracker {
    pipeline: Pipeline,
    options: TrackerOptions,
    tracks: Vec<Track>,
    next_id: u64,
    frame: usize,
    /// The time of the last frame since the start or the last reset.
    last_time: Option<f64>,
    detector_runs: usize,
}

impl Tracker {
    /// A tracker over `pipeline`, which must have a face detector, run as `options` say
    /// (their pipeline options replace the pipeline's).
    pub fn new(mut pipeline: Pipeline, options: TrackerOptions) -> Result<Self> {
        if pipeline.detector.is_none() {
            return Err(Error::InvalidInput(
                "a tracker needs a pipeline with a face detector".into(),
            ));
        }
        options.check()?;
        pipeline.set_options(options.pipeline)?;
        Ok(Self {
            pipeline,
            options,
            tracks: Vec::new(),
            next_id: 1,
            frame: 0,
            last_time: None,
            detector_runs: 0,
        })
    }

    /// Opens the landmark model and the face detector (the graph files named, else the
    /// built-in ones) into a tracker, after checking `options`: bad options fail before any
    /// model is loaded.
    pub fn open(
        landmark_model: Option<&Path>,
        detector: Option<&Path>,
        session: &SessionOptions,
        options: TrackerOptions,
    ) -> Result<Self> {
        options.check()?;
        let pipeline = Pipeline::open(landmark_model, detector, true, session, options.pipeline)?;
        Self::new(pipeline, options)
    }

    pub fn options(&self) -> &TrackerOptions {
        &self.options
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The tracker's pipeline, e.g. to run its models frame by frame for comparison.
    pub fn pipeline_mut(&mut self) -> &mut Pipeline {
        &mut self.pipeline
    }

    /// How many frames the detector has run on: what tracking saves against detecting every
    /// frame.
    pub fn detector_runs(&self) -> usize {
        self.detector_runs
    }

    /// The pipeline back, tracks dropped.
    pub fn into_pipeline(self) -> Pipeline {
        self.pipeline
    }

    /// Forgets every track (the next frame is detected afresh; ids go on counting).
    pub fn reset(&mut self) {
        self.tracks.clear();
        self.frame = 0;
        self.last_time = None;
    }

    /// The faces of the next frame, seen at `time` seconds (for smoothing). Frames come in
    /// order: a time before the last frame's is refused (a new video starts with
    /// [`Self::reset`]).
    pub fn track(&mut self, image: &RgbImage, time: f64) -> Result<Vec<TrackedFace>> {
        if !time.is_finite() || self.last_time.is_some_and(|last| time < last) {
            return Err(Error::InvalidInput(format!(
                "frame time {time} s: must be a finite number of seconds, not before the last \
                 frame's ({}); reset the tracker for a new video",
                self.last_time.map_or("none".into(), |t| format!("{t} s"))
            )));
        }
        self.last_time = Some(time);
        let mut faces = self.follow_held_faces(image)?;
        let due = self.frame.is_multiple_of(self.options.detect_every);
        let lost = self.tracks.iter().any(|t| t.missed > 0);
        if due || lost || self.tracks.is_empty() {
            faces.extend(self.detect_new_and_lost_faces(image)?);
        }
        self.frame += 1;
        Ok(self.smooth_and_end_tracks(faces, time))
    }

    /// Phase 1: each held face gets one landmark pass where last frame's points and motion
    /// put it; a face whose presence falls is lost for this frame (its `missed` count goes up,
    /// which calls the detector), and of two tracks that slid onto one face the older keeps
    /// it. Returns the faces held, by track index: followed, not detected, so a face's box is
    /// its crop's bounds and its score 1.
    fn follow_held_faces(&mut self, image: &RgbImage) -> Result<Vec<(usize, Face)>> {
        let (rule, scheme) = (
            self.pipeline.model.metadata().crop,
            self.pipeline.model.metadata().scheme,
        );
        let held: Vec<usize> = (0..self.tracks.len())
            .filter(|&i| self.tracks[i].missed == 0)
            .collect();
        let crops: Vec<(&RgbImage, FaceCrop)> = held
            .iter()
            .filter_map(|&i| {
                self.tracks[i]
                    .predicted_crop(&rule, scheme)
                    .map(|crop| (image, crop))
            })
            .collect();
        let passes = if crops.len() == held.len() {
            self.pipeline.model.landmarks(&crops)?
        } else {
            Vec::new()
        };
        let min_presence = self.pipeline.options.min_presence;
        let mut kept: Vec<(usize, FaceLandmarks)> = Vec::new();
        for (&i, found) in held.iter().zip(passes) {
            if pipnet_core::presence(&found.scores()) < min_presence {
                continue;
            }
            let duplicate = FaceBox::around(&found.in_image).is_ok_and(|b| {
                kept.iter()
                    .any(|(_, k)| FaceBox::around(&k.in_image).is_ok_and(|kb| b.iou(&kb) > 0.5))
            });
            if !duplicate {
                kept.push((i, found));
            }
        }
        for track in &mut self.tracks {
            track.missed += 1;
        }
        for (i, found) in &kept {
            self.tracks[*i].seen(found.in_image.clone(), true);
        }
        Ok(kept
            .into_iter()
            .map(|(i, landmarks)| {
                let face = Face {
                    detection: None,
                    landmarks,
                    second_pass: false,
                };
                (i, face)
            })
            .collect())
    }

    /// Phase 2, on the first frame, every `detect_every` frames and while a face is lost: the
    /// detector. Detections over a held face change nothing; the others get landmarks (with the
    /// second pass) and take back a lost track they overlap, or start one. Returns those faces,
    /// by track index.
    fn detect_new_and_lost_faces(&mut self, image: &RgbImage) -> Result<Vec<(usize, Face)>> {
        self.detector_runs += 1;
        let mut fresh: Vec<(Option<usize>, LocatedFace)> = Vec::new();
        for located in self.pipeline.locate(image, &Faces::Detect)? {
            let Some(detection) = located.0.map(|f| f.detection) else {
                continue;
            };
            let overlap = |t: &Track| t.face_box().map_or(0.0, |tb| detection.face_box.iou(&tb));
            let best = (0..self.tracks.len())
                .map(|i| (i, overlap(&self.tracks[i])))
                .filter(|&(_, o)| o > self.options.min_iou)
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match best {
                Some((i, _)) if self.tracks[i].missed == 0 => {}
                other => fresh.push((other.map(|(i, _)| i), located)),
            }
        }
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let located: Vec<LocatedFace> = fresh.iter().map(|(_, l)| *l).collect();
        let mut faces = self.pipeline.landmarks_of(&[image], &[&located])?;
        let faces = faces.pop().unwrap_or_default();
        let mut found = Vec::new();
        for ((lost_track, _), face) in fresh.into_iter().zip(faces) {
            if face.presence() < self.pipeline.options.min_presence {
                continue;
            }
            let points = face.landmarks.in_image.clone();
            let index = match lost_track {
                // Taken back already by another detection of this frame: a duplicate.
                Some(i) if self.tracks[i].missed == 0 => continue,
                Some(i) => {
                    self.tracks[i].seen(points, false);
                    i
                }
                None => {
                    self.tracks.push(Track::new(self.next_id, points));
                    self.next_id += 1;
                    self.tracks.len() - 1
                }
            };
            found.push((index, face));
        }
        Ok(found)
    }

    /// Phase 3: each face's points through its track's smoother; the tracks unseen for more
    /// than `max_missed` frames end. Faces come out by id.
    fn smooth_and_end_tracks(&mut self, faces: Vec<(usize, Face)>, time: f64) -> Vec<TrackedFace> {
        let mut out: Vec<TrackedFace> = faces
            .into_iter()
            .map(|(i, face)| {
                let track = &mut self.tracks[i];
                let smoothed = match self.options.smoothing {
                    Some(settings) => track
                        .smoother
                        .get_or_insert_with(|| {
                            LandmarkSmoother::new(face.landmarks.in_image.len(), settings)
                        })
                        .smooth(&face.landmarks.in_image, time),
                    None => face.landmarks.in_image.clone(),
                };
                TrackedFace {
                    id: track.id,
                    face,
                    smoothed,
                }
            })
            .collect();
        let max_missed = self.options.max_missed;
        self.tracks.retain(|t| t.missed <= max_missed);
        out.sort_by_key(|f| f.id);
        out
    }
}
