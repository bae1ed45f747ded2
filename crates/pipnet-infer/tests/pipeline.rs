//! The pipeline's second pass on real labeled faces: `refine_below` refines exactly the faces
//! whose first-pass presence is below it, and leaves the others as one pass found them.

#[path = "../../../tests/common/mod.rs"]
mod common;

use image::RgbImage;
use pipnet_infer::core::{CropRule, FaceBox, FaceCrop, presence};
use pipnet_infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet_infer::labeled::read_labeled;
use pipnet_infer::{FaceLandmarks, Pipeline, SessionOptions};

#[test]
fn test_refine_below_refines_only_the_faces_under_the_threshold() {
    let data = common::repo_root().join("../shared/data/face68-train");
    let faces = read_labeled(&data, None).expect("face68-train beside the repo");
    let images: Vec<RgbImage> = faces[..8]
        .iter()
        .map(|f| load_rgb(&f.image, DEFAULT_MAX_PIXELS).unwrap())
        .collect();
    // Crops off the true box by a tenth of their side, as a detector's may be.
    let crops: Vec<(&RgbImage, FaceCrop)> = faces[..8]
        .iter()
        .zip(&images)
        .map(|(face, image)| {
            let crop = CropRule::default().crop(&FaceBox::around(&face.points).unwrap());
            let center = [crop.center[0] + 0.1 * crop.side, crop.center[1]];
            (image, FaceCrop::new(center, crop.side, 0.0))
        })
        .collect();
    let mut pipeline = Pipeline::open(None, None, false, &SessionOptions::default()).unwrap();
    let mut run = |refine: bool, below: Option<f32>| -> Vec<FaceLandmarks> {
        pipeline.refine = refine;
        pipeline.refine_below = below;
        pipeline.landmarks(&crops).unwrap()
    };
    let (once, twice) = (run(false, None), run(true, None));
    assert_ne!(once, twice, "the second pass changed nothing");
    assert_eq!(run(true, Some(0.0)), once, "no face has presence below 0");
    let mut presences: Vec<f32> = once.iter().map(|f| presence(&f.scores())).collect();
    presences.sort_by(f32::total_cmp);
    let median = presences[presences.len() / 2];
    let some = run(true, Some(median));
    let mut refined = 0;
    for ((first, both), got) in once.iter().zip(&twice).zip(&some) {
        if presence(&first.scores()) < median {
            assert_eq!(got, both);
            refined += 1;
        } else {
            assert_eq!(got, first);
        }
    }
    assert_eq!(refined, presences.len() / 2);
}
