//! Landmarks on video: faces followed from frame to frame with stable ids.
//!
//! A face held from the previous frame is cropped from its landmarks there (the refine crop
//! rule) and costs one landmark pass, no detection. The detector runs on the first frame, every
//! `detect_every` frames (to find new faces), and right after a face is lost (its presence
//! fell under `lost_presence`); detections that overlap a held face are ignored, one that
//! overlaps a lost face takes it back (same id), the rest start new tracks. A track unseen for
//! more than `max_missed` frames ends. Each track's points go through a One Euro filter per
//! coordinate ([`LandmarkSmoother`]), restarted when the track restarts.

use image::RgbImage;
use pipnet_core::smooth::{LandmarkSmoother, OneEuroSettings};
use pipnet_core::{FaceBox, FaceCrop, Point};

use crate::error::{Error, Result};
use crate::model::FaceLandmarks;
use crate::pipeline::{Face, Faces, Pipeline};

/// How faces are followed; the defaults are measured (`models/README.md`, "Video").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerSettings {
    /// Run the detector every this many frames to find new faces (1: every frame).
    pub detect_every: usize,
    /// A track not seen for more than this many frames ends; its face gets a new id.
    pub max_missed: usize,
    /// A held face whose presence falls under this is lost for the frame.
    pub lost_presence: f32,
    /// Overlap (IoU) at which a detection is the same face as a track.
    pub min_iou: f32,
    /// Smoothing of the points; `None` outputs them as measured.
    pub smoothing: Option<OneEuroSettings>,
}

impl Default for TrackerSettings {
    fn default() -> Self {
        Self {
            detect_every: 10,
            max_missed: 5,
            lost_presence: crate::pipeline::DEFAULT_MIN_PRESENCE,
            min_iou: 0.3,
            smoothing: Some(OneEuroSettings::default()),
        }
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
    /// Frames since the face was last seen (0: seen on the last frame).
    missed: usize,
    smoother: Option<LandmarkSmoother>,
}

impl Track {
    fn face_box(&self) -> Option<FaceBox> {
        FaceBox::around(&self.landmarks).ok()
    }
}

/// Follows faces across frames; see the module documentation.
pub struct Tracker {
    pub pipeline: Pipeline,
    pub settings: TrackerSettings,
    tracks: Vec<Track>,
    next_id: u64,
    frame: usize,
    detector_runs: usize,
}

impl Tracker {
    /// A tracker over `pipeline`, which must have a face detector.
    pub fn new(pipeline: Pipeline, settings: TrackerSettings) -> Result<Self> {
        if pipeline.detector.is_none() {
            return Err(Error::InvalidInput(
                "a tracker needs a pipeline with a face detector".into(),
            ));
        }
        if settings.detect_every == 0 || !settings.min_iou.is_finite() {
            return Err(Error::InvalidInput(
                "tracker settings: detect_every must be at least 1 and min_iou a number".into(),
            ));
        }
        Ok(Self {
            pipeline,
            settings,
            tracks: Vec::new(),
            next_id: 1,
            frame: 0,
            detector_runs: 0,
        })
    }

    /// How many frames the detector has run on: what tracking saves against detecting every
    /// frame.
    pub fn detector_runs(&self) -> usize {
        self.detector_runs
    }

    /// Forgets every track (the next frame is detected afresh; ids go on counting).
    pub fn reset(&mut self) {
        self.tracks.clear();
        self.frame = 0;
    }

    /// The faces of the next frame, seen at `time` seconds (for smoothing; frames must come
    /// in order).
    pub fn track(&mut self, image: &RgbImage, time: f64) -> Result<Vec<TrackedFace>> {
        let rule = self.pipeline.model.metadata().crop;
        // 1. Held faces: one landmark pass each, from last frame's points.
        let held: Vec<usize> = (0..self.tracks.len())
            .filter(|&i| self.tracks[i].missed == 0)
            .collect();
        let crops: Vec<(&RgbImage, FaceCrop)> = held
            .iter()
            .filter_map(|&i| self.tracks[i].face_box().map(|b| (image, rule.crop(&b))))
            .collect();
        let passes = if crops.len() == held.len() {
            self.pipeline.model.landmarks(&crops)?
        } else {
            Vec::new()
        };
        let mut seen: Vec<(usize, FaceLandmarks)> = Vec::new();
        // A held face whose presence falls is lost for this frame (its track's `missed` goes
        // up below, which calls the detector).
        for (&i, found) in held.iter().zip(passes) {
            if pipnet_core::presence(&found.scores()) >= self.settings.lost_presence {
                seen.push((i, found));
            }
        }
        // Two tracks that slid onto one face: the older keeps it.
        let mut kept: Vec<(usize, FaceLandmarks)> = Vec::new();
        for (i, found) in seen {
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
            let track = &mut self.tracks[*i];
            track.missed = 0;
            track.landmarks = found.in_image.clone();
        }
        // Followed, not detected: the face's box is its crop's bounds, its score 1.
        let mut frame_faces: Vec<(usize, Face)> = kept
            .into_iter()
            .map(|(i, landmarks)| {
                let face = Face {
                    detection: None,
                    landmarks,
                };
                (i, face)
            })
            .collect();

        // 2. The detector: first frame, every K frames, and while a face is lost.
        let due = self.frame.is_multiple_of(self.settings.detect_every);
        let lost = self.tracks.iter().any(|t| t.missed > 0);
        if due || lost || self.tracks.is_empty() {
            self.detector_runs += 1;
            let found = self.pipeline.faces(&[(image, &Faces::Detect)])?;
            for face in found.into_iter().flatten() {
                let Ok(b) = FaceBox::around(&face.landmarks.in_image) else {
                    continue;
                };
                let overlap = |t: &Track| t.face_box().map_or(0.0, |tb| b.iou(&tb));
                let best = (0..self.tracks.len())
                    .map(|i| (i, overlap(&self.tracks[i])))
                    .filter(|&(_, o)| o > self.settings.min_iou)
                    .max_by(|a, b| a.1.total_cmp(&b.1));
                match best {
                    // Held this frame already.
                    Some((i, _)) if self.tracks[i].missed == 0 => {}
                    // A lost face found again: same id, smoothing restarts.
                    Some((i, _)) => {
                        let track = &mut self.tracks[i];
                        track.missed = 0;
                        track.landmarks = face.landmarks.in_image.clone();
                        track.smoother = None;
                        frame_faces.push((i, face));
                    }
                    None => {
                        self.tracks.push(Track {
                            id: self.next_id,
                            landmarks: face.landmarks.in_image.clone(),
                            missed: 0,
                            smoother: None,
                        });
                        self.next_id += 1;
                        frame_faces.push((self.tracks.len() - 1, face));
                    }
                }
            }
        }
        self.frame += 1;

        // 3. Smooth, and end the tracks unseen for too long.
        let mut out: Vec<TrackedFace> = frame_faces
            .into_iter()
            .map(|(i, face)| {
                let track = &mut self.tracks[i];
                let smoothed = match self.settings.smoothing {
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
        let max_missed = self.settings.max_missed;
        self.tracks.retain(|t| t.missed <= max_missed);
        out.sort_by_key(|f| f.id);
        Ok(out)
    }
}
