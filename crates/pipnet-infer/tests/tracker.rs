//! The tracker on videos made from real labeled photos (`common::synthetic_video`): one id per
//! face while it is in view, one detector run per `detect_every` frames while it is held, a new
//! id after the face was gone longer than `max_missed` frames, smoothing that calms a still face.

#[path = "../../../tests/common/mod.rs"]
mod common;

use image::RgbImage;
use pipnet_infer::core::Scheme;
use pipnet_infer::core::metrics::nme;
use pipnet_infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet_infer::labeled::read_labeled;
use pipnet_infer::tracker::{Tracker, TrackerOptions};
use pipnet_infer::{Pipeline, SessionOptions};

type Points = Vec<[f32; 2]>;

fn tracker(settings: TrackerOptions) -> Tracker {
    let options = SessionOptions::default();
    let pipeline = Pipeline::open(None, None, true, &options, settings.pipeline);
    Tracker::new(pipeline.expect("built-in models"), settings).expect("tracker")
}

/// A labeled photo of `../shared/data/face68-train` and its landmarks.
fn labeled(index: usize) -> (RgbImage, Points) {
    let data = common::repo_root().join("../shared/data/face68-train");
    let faces = read_labeled(&data, None).expect("face68-train beside the repo");
    let face = &faces[index];
    (
        load_rgb(&face.image, DEFAULT_MAX_PIXELS).unwrap(),
        face.points.clone(),
    )
}

#[test]
fn test_a_moving_face_keeps_one_id_and_is_detected_every_k_frames() {
    let (photo, points) = labeled(3);
    let video = common::synthetic_video(&photo, &points, 30, 256, 1.0, 6.0, 1);
    let mut tracker = tracker(TrackerOptions::default());
    let mut errors = Vec::new();
    for (t, (frame, truth)) in video.iter().enumerate() {
        let faces = tracker.track(frame, t as f64 / 30.0).unwrap();
        assert_eq!(faces.len(), 1, "frame {t}");
        assert_eq!(faces[0].id, 1, "frame {t}");
        errors.push(nme(&faces[0].face.landmarks.in_image, truth, Scheme::W300_68).unwrap());
    }
    let mean = errors.iter().sum::<f32>() / errors.len() as f32;
    assert!(mean < 0.08, "mean NME {mean} over the moving sequence");
    // Frames 0, 10 and 20: the face was never lost.
    assert_eq!(tracker.detector_runs(), 3);
}

#[test]
fn test_a_face_gone_too_long_comes_back_with_a_new_id_and_reset_forgets() {
    let (photo, points) = labeled(5);
    let video = common::synthetic_video(&photo, &points, 8, 256, 0.3, 2.0, 2);
    let blank = RgbImage::from_pixel(256, 256, image::Rgb([90, 90, 90]));
    let settings = TrackerOptions {
        max_missed: 2,
        ..TrackerOptions::default()
    };
    let mut tracker = tracker(settings);
    let mut ids = Vec::new();
    let frames = video[..4]
        .iter()
        .map(|(f, _)| f)
        .chain(std::iter::repeat_n(&blank, 4))
        .chain(video[4..].iter().map(|(f, _)| f));
    for (t, frame) in frames.enumerate() {
        let faces = tracker.track(frame, t as f64 / 30.0).unwrap();
        assert!(faces.len() <= 1, "frame {t}: {} faces", faces.len());
        ids.push(faces.first().map(|f| f.id));
    }
    assert_eq!(
        ids,
        [1, 1, 1, 1]
            .map(Some)
            .into_iter()
            .chain([None; 4])
            .chain([2, 2, 2, 2].map(Some))
            .collect::<Vec<_>>()
    );
    tracker.reset();
    let faces = tracker.track(&video[0].0, 10.0).unwrap();
    assert_eq!(faces.iter().map(|f| f.id).collect::<Vec<_>>(), [3]);
}

#[test]
fn test_smoothing_calms_a_still_face() {
    let (photo, points) = labeled(7);
    let video = common::synthetic_video(&photo, &points, 20, 256, 0.0, 8.0, 3);
    let mut tracker = tracker(TrackerOptions::default());
    let (mut raw, mut smooth) = (0.0f32, 0.0f32);
    // Last frame's (raw, smoothed) points.
    let mut last: Option<(Points, Points)> = None;
    for (t, (frame, _)) in video.iter().enumerate() {
        let faces = tracker.track(frame, t as f64 / 30.0).unwrap();
        let face = &faces[0];
        let now = (face.face.landmarks.in_image.clone(), face.smoothed.clone());
        if let Some((r, s)) = &last {
            let step = |a: &[[f32; 2]], b: &[[f32; 2]]| -> f32 {
                a.iter()
                    .zip(b)
                    .map(|(p, q)| (p[0] - q[0]).hypot(p[1] - q[1]))
                    .sum()
            };
            raw += step(r, &now.0);
            smooth += step(s, &now.1);
        }
        last = Some(now);
    }
    assert!(
        smooth < 0.7 * raw,
        "smoothed motion {smooth} against raw {raw}"
    );
}

/// Two faces whose paths cross: one walks right along the top, the other left below it, and
/// at the crossing the lower one's view covers the upper face's mouth and chin. Each keeps its
/// id.
#[test]
fn test_two_faces_crossing_paths_keep_their_ids() {
    let (a, a_points) = labeled(3);
    let (b, b_points) = labeled(9);
    let frames = 24;
    let view = 160;
    let upper = common::synthetic_video(&a, &a_points, frames, view, 0.0, 2.0, 11);
    let lower = common::synthetic_video(&b, &b_points, frames, view, 0.0, 2.0, 12);
    let mut tracker = tracker(TrackerOptions::default());
    let mut ids_at = Vec::new();
    for t in 0..frames {
        let mut canvas = RgbImage::from_pixel(480, 300, image::Rgb([60, 60, 60]));
        let step = 320 * t as i64 / (frames as i64 - 1);
        let (ax, bx) = (step, 320 - step);
        image::imageops::replace(&mut canvas, &upper[t].0, ax, 10);
        image::imageops::replace(&mut canvas, &lower[t].0, bx, 100);
        let faces = tracker.track(&canvas, t as f64 / 30.0).unwrap();
        // Which id sits on which face: the upper face's nose tip is above the lower one's.
        let mut by_height: Vec<(f32, u64)> = faces
            .iter()
            .map(|f| (f.face.landmarks.in_image[30][1], f.id))
            .collect();
        by_height.sort_by(|p, q| p.0.total_cmp(&q.0));
        ids_at.push(by_height.into_iter().map(|(_, id)| id).collect::<Vec<_>>());
    }
    let first = ids_at[0].clone();
    assert_eq!(first.len(), 2, "{ids_at:?}");
    for (t, ids) in ids_at.iter().enumerate() {
        // A face may be lost for a frame or two under the other's view, never renamed.
        for id in ids {
            assert!(first.contains(id), "frame {t}: new id {id} in {ids_at:?}");
        }
        if ids.len() == 2 {
            assert_eq!(ids, &first, "frame {t}: ids swapped in {ids_at:?}");
        }
    }
    let full = ids_at.iter().filter(|ids| ids.len() == 2).count();
    assert!(
        full >= frames - 4,
        "both faces on {full} of {frames} frames: {ids_at:?}"
    );
}
