//! Head poses on real photos, without pose ground truth: turning a photo by A degrees adds A
//! to each face's roll and leaves its yaw and pitch; mirroring it negates yaw and roll. The
//! bounds are what `pipnet eval --split 0.1:1 --crops detector --roll 0,40,-40,90
//! --pose-checks` measured on the 399 validation faces (README, "Head pose"): the median face
//! here must agree as well as 95% of those did.

use std::collections::HashMap;

use image::RgbImage;
use pipnet_core::formats::{FaceAnnotation, ImageAnnotation};
use pipnet_core::{FaceCrop, Point};
use pipnet_infer::preprocess::cut_crop;

use crate::{common, pipnet_bin, read_annotation, succeeds};

/// How a photo was changed: its file suffix, the roll it adds (degrees), whether it mirrors,
/// and the 95th percentile of |yaw, pitch, roll| differences measured for it on the validation
/// split (quarter turns: the 90-degree row; others: the 40-degree rows).
struct Change {
    suffix: &'static str,
    roll: f32,
    mirrored: bool,
    bound: [f32; 3],
}

const CHANGES: [Change; 3] = [
    Change {
        suffix: "turned90",
        roll: 90.0,
        mirrored: false,
        bound: [3.75, 2.02, 2.44],
    },
    Change {
        suffix: "turned30",
        roll: 30.0,
        mirrored: false,
        bound: [1.47, 1.24, 0.83],
    },
    Change {
        suffix: "mirrored",
        roll: 0.0,
        mirrored: true,
        bound: [1.49, 1.40, 0.97],
    },
];

/// The changed photo and the map from the photo's pixels to its pixels.
fn change(photo: &RgbImage, change: &Change) -> (RgbImage, Box<dyn Fn(Point) -> Point>) {
    let w = photo.width() as f32;
    if change.mirrored {
        let flipped = image::imageops::flip_horizontal(photo);
        return (flipped, Box::new(move |p| [w - 1.0 - p[0], p[1]]));
    }
    let (window, side) =
        FaceCrop::turned_image(photo.width(), photo.height(), change.roll.to_radians());
    let turned = cut_crop(photo, &window, side);
    (
        turned,
        Box::new(move |p| window.to_crop(p).map(|v| v * side as f32 - 0.5)),
    )
}

fn centre(face: &FaceAnnotation) -> Point {
    let b = face.face_box;
    [(b.x0 + b.x1) / 2.0, (b.y0 + b.y1) / 2.0]
}

#[test]
fn test_turned_and_mirrored_photos_change_the_pose_as_they_should() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let photos = ["2008_002470.jpg", "2008_001322.jpg", "2009_004587.jpg"];
    let mut names = Vec::new();
    let mut maps = Vec::new();
    for file in photos {
        let photo = image::open(common::sample_photos().join(file))
            .unwrap()
            .to_rgb8();
        let stem = file.trim_end_matches(".jpg");
        photo.save(input.join(format!("{stem}.png"))).unwrap();
        names.push(format!("{stem}.png"));
        for c in &CHANGES {
            let (changed, map) = change(&photo, c);
            let name = format!("{stem}_{}.png", c.suffix);
            changed.save(input.join(&name)).unwrap();
            maps.push((format!("{stem}.png"), name.clone(), c, map));
            names.push(name);
        }
    }
    let out = tmp.path().join("out");
    succeeds(
        std::process::Command::new(pipnet_bin())
            .arg("annotate")
            .arg(&input)
            .arg("--out")
            .arg(&out),
    );
    let outputs: HashMap<&String, ImageAnnotation> = names
        .iter()
        .map(|n| (n, read_annotation(&out, n)))
        .collect();

    for c in &CHANGES {
        let mut sizes: [Vec<f32>; 3] = Default::default();
        for (original, changed, _, map) in maps.iter().filter(|m| m.2.suffix == c.suffix) {
            let (before, after) = (&outputs[original].faces, &outputs[changed].faces);
            for face in before {
                // The same face on the changed photo: the one whose box centre is where this
                // one's went, within a quarter of the box.
                let want = map(centre(face));
                let reach = face.face_box.width().max(face.face_box.height()) / 4.0;
                let Some(twin) = after.iter().find(|t| {
                    let p = centre(t);
                    (p[0] - want[0]).hypot(p[1] - want[1]) < reach
                }) else {
                    continue;
                };
                let change =
                    twin.pose
                        .unwrap()
                        .change_from(&face.pose.unwrap(), c.roll, c.mirrored);
                for (size, d) in sizes.iter_mut().zip(change) {
                    size.push(d.abs());
                }
            }
        }
        assert!(
            sizes[0].len() >= 10,
            "{}: {} faces matched",
            c.suffix,
            sizes[0].len()
        );
        for (k, angle) in ["yaw", "pitch", "roll"].iter().enumerate() {
            let mut v = sizes[k].clone();
            v.sort_by(f32::total_cmp);
            let median = v[v.len() / 2];
            eprintln!(
                "{}: {angle} median {median:.2} over {} faces",
                c.suffix,
                v.len()
            );
            assert!(
                median <= c.bound[k],
                "{}: median |{angle} difference| {median:.2} degrees over {} faces, more than \
                 the validation split's 95th percentile {:.2} (all: {v:?})",
                c.suffix,
                v.len(),
                c.bound[k]
            );
        }
    }
}
