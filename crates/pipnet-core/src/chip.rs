//! Faces after landmarks: the five points (eye centres, nose tip, mouth corners), face
//! presence from landmark scores, and aligned face chips: the similarity that maps a face onto
//! a chip template, with its inverse. Geometry only; warping pixels is the runtime's job.

use nalgebra::{Matrix2, Vector2};
use serde::{Deserialize, Serialize};

use crate::crop::{CropRule, FaceBox, FaceCrop, TurnedBox};
use crate::scheme::Scheme;
use crate::{Error, Point, Result};

fn invalid(detail: impl Into<String>) -> Error {
    Error::Invalid {
        what: "face geometry",
        detail: detail.into(),
    }
}

/// Face presence: the mean of a face's landmark scores. Each score is the score map's value at
/// the landmark's cell (trained towards 1 there), so a real face scores high on most of its
/// points and a false detection (an ear, a pattern) low on most. 0 for no points.
pub fn presence(scores: &[f32]) -> f32 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().sum::<f32>() / scores.len() as f32
}

/// Which faces repeat a face of higher presence: more than [`MAX_FACE_OVERLAP`] of the smaller
/// of their two landmark boxes lies in both. Two faces' landmarks cannot share a place; a
/// detection between two faces yields landmarks spread over both, whose box holds most of
/// theirs. `boxes` and `presence` are per face, in the same order.
pub fn repeated_faces(boxes: &[FaceBox], presence: &[f32]) -> Vec<bool> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| presence[b].total_cmp(&presence[a]));
    let mut repeated = vec![false; boxes.len()];
    let mut kept: Vec<usize> = Vec::with_capacity(boxes.len());
    for i in order {
        if kept
            .iter()
            .any(|&k| boxes[i].overlap_of_smaller(&boxes[k]) > MAX_FACE_OVERLAP)
        {
            repeated[i] = true;
        } else {
            kept.push(i);
        }
    }
    repeated
}

/// The most two faces' landmark boxes may share, as a share of the smaller box. On the sample
/// photos' crowds real faces share at most 9%; the one detection between two faces covers 80%
/// and 93% of theirs (`docs/experiments.md`, "Keypoint calibration").
pub const MAX_FACE_OVERLAP: f32 = 0.5;

/// The five points of a face in InsightFace's order: the eye centres (image left, then right),
/// the nose tip, the mouth corners (image left, then right). Eye centres are the means of the
/// eye contours.
pub fn five_points(scheme: Scheme, landmarks: &[Point]) -> Result<[Point; 5]> {
    // (first, last) of each eye contour, nose tip, left and right mouth corner.
    let (left_eye, right_eye, nose, mouth) = match scheme {
        Scheme::W300_68 => ((36, 41), (42, 47), 30, (48, 54)),
        Scheme::Wflw98 => ((60, 67), (68, 75), 54, (76, 82)),
    };
    if landmarks.len() != scheme.num_landmarks() {
        return Err(invalid(format!(
            "{} landmarks for scheme {scheme}, which has {}",
            landmarks.len(),
            scheme.num_landmarks()
        )));
    }
    let mean = |(first, last): (usize, usize)| {
        let eye = &landmarks[first..=last];
        let n = eye.len() as f32;
        [
            eye.iter().map(|p| p[0]).sum::<f32>() / n,
            eye.iter().map(|p| p[1]).sum::<f32>() / n,
        ]
    };
    Ok([
        mean(left_eye),
        mean(right_eye),
        landmarks[nose],
        landmarks[mouth.0],
        landmarks[mouth.1],
    ])
}

/// A face's roll: the angle of its eye line, from the eye centre on the image's left in an
/// upright face (the subject's right eye) to the other, in radians with [`FaceCrop`]'s
/// convention (0 upright, +-pi upside down).
pub fn roll(scheme: Scheme, landmarks: &[Point]) -> Result<f32> {
    let [from, to, ..] = five_points(scheme, landmarks)?;
    let angle = (to[1] - from[1]).atan2(to[0] - from[0]);
    if angle.is_finite() {
        Ok(angle)
    } else {
        Err(invalid("the eye centres are not finite"))
    }
}

/// How far a face is turned left or right, from its landmarks alone: where the nose tip lies
/// between the two ends of the jaw line, measured along the eye line ([`roll`]), from -1 (over
/// the jaw end on the image's left of an upright face) through 0 (midway: frontal) to +1. A
/// proxy of yaw, not an angle: it grows with the turn and is independent of roll and scale.
pub fn head_turn(scheme: Scheme, landmarks: &[Point]) -> Result<f32> {
    let angle = roll(scheme, landmarks)?;
    let (first, last) = match scheme {
        Scheme::W300_68 => (0, 16),
        Scheme::Wflw98 => (0, 32),
    };
    let nose = five_points(scheme, landmarks)?[2];
    let along = |p: Point| crate::crop::turn(p, -angle)[0];
    let (a, b, n) = (along(landmarks[first]), along(landmarks[last]), along(nose));
    let turn = 2.0 * (n - a) / (b - a) - 1.0;
    if turn.is_finite() {
        Ok(turn)
    } else {
        Err(invalid("the jaw line has no width along the eye line"))
    }
}

/// The crop `rule` makes around a face's `landmarks`, turned to their eye line ([`roll`]): how
/// a second landmark pass and the tracker's next frame crop a face they have landmarks for, so
/// the network sees it upright whatever its tilt.
pub fn landmark_crop(rule: &CropRule, scheme: Scheme, landmarks: &[Point]) -> Result<FaceCrop> {
    let face = TurnedBox::around(landmarks, roll(scheme, landmarks)?)?;
    Ok(rule.crop_turned(&face))
}

/// InsightFace's five-point template for 112x112 ArcFace chips (pixel centres at integers).
pub const ARCFACE_112: [Point; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// What chip to cut: `arcface112` (the five points fitted to [`ARCFACE_112`]) or `SIZE[:PADDING]`
/// (dlib style: eyes level, the landmarks' box centred, `PADDING` of its side added on every
/// side; default 0.25).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChipSpec {
    Arcface112,
    Aligned { size: u32, padding: f32 },
}

impl std::str::FromStr for ChipSpec {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        if text == "arcface112" {
            return Ok(ChipSpec::Arcface112);
        }
        let bad = || {
            invalid(format!(
                "chip spec {text:?}: expected arcface112 or SIZE[:PADDING], e.g. 150:0.25"
            ))
        };
        let (size, padding) = text.split_once(':').unwrap_or((text, "0.25"));
        let size: u32 = size.parse().map_err(|_| bad())?;
        let padding: f32 = padding.parse().map_err(|_| bad())?;
        if !(8..=4096).contains(&size) || !(0.0..=2.0).contains(&padding) {
            return Err(invalid(format!(
                "chip spec {text:?}: SIZE must be 8..4096 pixels and PADDING 0..2"
            )));
        }
        Ok(ChipSpec::Aligned { size, padding })
    }
}

impl ChipSpec {
    /// Side of the chip in pixels.
    pub fn size(&self) -> u32 {
        match self {
            ChipSpec::Arcface112 => 112,
            ChipSpec::Aligned { size, .. } => *size,
        }
    }
}

/// A 2-D similarity `q = A p + t` with `A = [[a, -b], [b, a]]`, stored as the 2x3 matrix
/// `[[a, -b, tx], [b, a, ty]]` (OpenCV's `warpAffine` layout).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Similarity(pub [[f64; 3]; 2]);

impl Similarity {
    fn new(a: f64, b: f64, t: [f64; 2]) -> Self {
        Similarity([[a, -b, t[0]], [b, a, t[1]]])
    }

    pub fn apply(&self, p: Point) -> Point {
        let [[a, c, tx], [b, d, ty]] = self.0;
        let (x, y) = (f64::from(p[0]), f64::from(p[1]));
        [(a * x + c * y + tx) as f32, (b * x + d * y + ty) as f32]
    }

    /// Scale factor (chip pixels per image pixel for an image-to-chip map).
    pub fn scale(&self) -> f64 {
        self.0[0][0].hypot(self.0[1][0])
    }

    /// Rotation in radians (y down: positive turns x towards y).
    pub fn angle(&self) -> f64 {
        self.0[1][0].atan2(self.0[0][0])
    }

    pub fn inverse(&self) -> Self {
        let [[a, _, tx], [b, _, ty]] = self.0;
        let n = a * a + b * b;
        let (ia, ib) = (a / n, -b / n);
        // p = A^-1 (q - t)
        Similarity::new(ia, ib, [-(ia * tx - ib * ty), -(ib * tx + ia * ty)])
    }
}

/// The least-squares similarity (rotation, uniform scale, translation; no reflection) that maps
/// `from` onto `to` (Umeyama 1991), in f64, and the mean distance left between the mapped
/// points and `to`.
pub fn fit_similarity(from: &[Point], to: &[Point]) -> Result<(Similarity, f64)> {
    if from.len() != to.len() || from.len() < 2 {
        return Err(invalid(format!(
            "a similarity fit needs two or more point pairs, got {} and {}",
            from.len(),
            to.len()
        )));
    }
    let v = |p: &Point| Vector2::new(f64::from(p[0]), f64::from(p[1]));
    let n = from.len() as f64;
    let mean_from = from.iter().map(v).sum::<Vector2<f64>>() / n;
    let mean_to = to.iter().map(v).sum::<Vector2<f64>>() / n;
    let mut covariance = Matrix2::zeros();
    let mut variance = 0.0;
    for (p, q) in from.iter().zip(to) {
        let (dp, dq) = (v(p) - mean_from, v(q) - mean_to);
        covariance += dq * dp.transpose() / n;
        variance += dp.norm_squared() / n;
    }
    if !(variance.is_finite() && variance > 1e-12) {
        return Err(invalid("the points to fit coincide or are not finite"));
    }
    let svd = covariance.svd(true, true);
    let (Some(u), Some(v_t)) = (svd.u, svd.v_t) else {
        return Err(invalid("SVD of the point covariance failed"));
    };
    let mut sign = Matrix2::identity();
    if u.determinant() * v_t.determinant() < 0.0 {
        sign[(1, 1)] = -1.0;
    }
    let rotation = u * sign * v_t;
    let scale = (Matrix2::from_diagonal(&svd.singular_values) * sign).trace() / variance;
    let t = mean_to - scale * rotation * mean_from;
    let fit = Similarity::new(
        scale * rotation[(0, 0)],
        scale * rotation[(1, 0)],
        [t.x, t.y],
    );
    let residual = from
        .iter()
        .zip(to)
        .map(|(p, q)| {
            let m = fit.apply(*p);
            f64::from(m[0] - q[0]).hypot(f64::from(m[1] - q[1]))
        })
        .sum::<f64>()
        / n;
    Ok((fit, residual))
}

/// An aligned chip of one face: the image-to-chip similarity, its inverse, and the same window
/// as a [`FaceCrop`] (what the runtime samples).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceChip {
    pub size: u32,
    /// Image pixels -> chip pixels (pixel centres at integers in both).
    pub to_chip: Similarity,
    /// Chip pixels -> image pixels.
    pub to_image: Similarity,
    /// With `arcface112`: the mean distance in chip pixels between the fitted five points and
    /// the template; 0 for `SIZE[:PADDING]` chips.
    pub residual: f64,
}

impl FaceChip {
    /// The chip window as a crop: chip pixel `c` has crop-normalised position `(c + 0.5) / size`.
    pub fn crop(&self) -> FaceCrop {
        let s = f64::from(self.size);
        let half = (s - 1.0) / 2.0;
        let centre = self.to_image.apply([half as f32, half as f32]);
        FaceCrop::new(
            centre,
            (self.to_image.scale() * s) as f32,
            self.to_image.angle() as f32,
        )
    }
}

/// The chip `spec` makes of a face with `landmarks` in `scheme`.
pub fn face_chip(spec: ChipSpec, scheme: Scheme, landmarks: &[Point]) -> Result<FaceChip> {
    let five = five_points(scheme, landmarks)?;
    let (to_chip, residual) = match spec {
        ChipSpec::Arcface112 => fit_similarity(&five, &ARCFACE_112)?,
        ChipSpec::Aligned { size, padding } => (aligned(&five, landmarks, size, padding)?, 0.0),
    };
    Ok(FaceChip {
        size: spec.size(),
        to_chip,
        to_image: to_chip.inverse(),
        residual,
    })
}

/// Eyes level, the landmarks' box (in the levelled frame) centred with `padding` of its longer
/// side on every side, scaled to `size`.
fn aligned(five: &[Point; 5], landmarks: &[Point], size: u32, padding: f32) -> Result<Similarity> {
    let (l, r) = (five[0], five[1]);
    let angle = f64::from(r[1] - l[1]).atan2(f64::from(r[0] - l[0]));
    // Level the face: its box in the frame turned by -angle about the origin.
    let face = TurnedBox::around(landmarks, angle as f32)?.face_box;
    let side = f64::from(face.width().max(face.height())) * (1.0 + 2.0 * f64::from(padding));
    if !(side.is_finite() && side > 0.0) {
        return Err(invalid("the landmarks span no area"));
    }
    let scale = f64::from(size) / side;
    let centre = face.center();
    let half = (f64::from(size) - 1.0) / 2.0;
    // chip = scale * (level(p) - centre) + half
    let (a, b) = (scale * angle.cos(), -scale * angle.sin());
    Ok(Similarity::new(
        a,
        b,
        [
            half - scale * f64::from(centre[0]),
            half - scale * f64::from(centre[1]),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_over_two_faces_repeats_them_and_neighbours_do_not() {
        // Two side by side faces, touching; a third box straddling both, with lower presence.
        let boxes = [
            FaceBox::from([195.0, 86.0, 225.0, 117.0]),
            FaceBox::from([227.0, 101.0, 260.0, 132.0]),
            FaceBox::from([197.0, 86.0, 254.0, 130.0]),
            FaceBox::from([100.0, 80.0, 140.0, 120.0]),
        ];
        assert_eq!(
            repeated_faces(&boxes, &[0.73, 0.66, 0.55, 0.62]),
            [false, false, true, false]
        );
        // The same box at the highest presence stays, and the faces it covers go.
        assert_eq!(
            repeated_faces(&boxes, &[0.73, 0.66, 0.8, 0.62]),
            [true, true, false, false]
        );
        assert!(repeated_faces(&[], &[]).is_empty());
    }

    /// A 68-point face whose five points are `five` (the other points spread around them).
    fn face68(five: [Point; 5]) -> Vec<Point> {
        let mut points: Vec<Point> = (0..68)
            .map(|i| {
                let a = i as f32 / 68.0 * std::f32::consts::TAU;
                [five[2][0] + 40.0 * a.cos(), five[2][1] + 50.0 * a.sin()]
            })
            .collect();
        for (eye, centre) in [(36..=41, five[0]), (42..=47, five[1])] {
            for (k, i) in eye.enumerate() {
                let a = k as f32 / 6.0 * std::f32::consts::TAU;
                points[i] = [centre[0] + 5.0 * a.cos(), centre[1] + 3.0 * a.sin()];
            }
        }
        points[30] = five[2];
        points[48] = five[3];
        points[54] = five[4];
        points
    }

    /// Eye centres, nose tip and mouth corners of an upright test face.
    const UPRIGHT_FIVE: [Point; 5] = [
        [80.0, 100.0],
        [120.0, 100.0],
        [100.0, 120.0],
        [85.0, 140.0],
        [115.0, 140.0],
    ];

    fn rotate(p: Point, angle: f32, about: Point) -> Point {
        let (s, c) = angle.sin_cos();
        let (x, y) = (p[0] - about[0], p[1] - about[1]);
        [about[0] + c * x - s * y, about[1] + s * x + c * y]
    }

    #[test]
    fn roll_landmark_crop_and_head_turn_follow_the_face_around_the_circle() {
        let five = UPRIGHT_FIVE;
        let mut face = face68(five);
        // The jaw line's ends, level with the eyes and as far either side of the nose.
        (face[0], face[16]) = ([60.0, 105.0], [140.0, 105.0]);
        let rule = CropRule::default();
        let upright = landmark_crop(&rule, Scheme::W300_68, &face).unwrap();
        assert_eq!(roll(Scheme::W300_68, &face).unwrap(), 0.0);
        assert_eq!(upright.angle, 0.0);
        let frontal = head_turn(Scheme::W300_68, &face).unwrap();
        assert!(frontal.abs() < 1e-5, "{frontal}");
        for angle in [0.4f32, 1.6, 3.1, -2.0] {
            let turned: Vec<Point> = face.iter().map(|&p| rotate(p, angle, [7.0, 9.0])).collect();
            let r = roll(Scheme::W300_68, &turned).unwrap();
            assert!((r - angle).abs() < 1e-4, "{r} for {angle}");
            // The crop turns with the face: each point keeps its place in the crop.
            let crop = landmark_crop(&rule, Scheme::W300_68, &turned).unwrap();
            assert!((crop.side - upright.side).abs() < 1e-3);
            for (p, q) in face.iter().zip(&turned) {
                let (a, b) = (upright.to_crop(*p), crop.to_crop(*q));
                assert!((a[0] - b[0]).abs() < 1e-4 && (a[1] - b[1]).abs() < 1e-4);
            }
            let turn = head_turn(Scheme::W300_68, &turned).unwrap();
            assert!(turn.abs() < 1e-4, "{turn} at {angle}");
        }
        // The nose halfway to the jaw end on the image's right: a turn of +0.5.
        let mut aside = face.clone();
        let (left, right) = (aside[0][0], aside[16][0]);
        aside[30][0] = (left + right) / 2.0 + (right - left) / 4.0;
        let turn = head_turn(Scheme::W300_68, &aside).unwrap();
        assert!((turn - 0.5).abs() < 1e-4, "{turn}");
        assert!(roll(Scheme::W300_68, &face[..10]).is_err());
    }

    #[test]
    fn presence_is_the_mean_score() {
        assert_eq!(presence(&[0.5, 1.0, 0.0]), 0.5);
        assert_eq!(presence(&[]), 0.0);
    }

    #[test]
    fn five_points_are_eye_centres_nose_and_mouth_corners() {
        let five = [
            [10.0, 20.0],
            [30.0, 20.0],
            [20.0, 30.0],
            [12.0, 40.0],
            [28.0, 40.0],
        ];
        let got = five_points(Scheme::W300_68, &face68(five)).unwrap();
        for (g, w) in got.iter().zip(five) {
            assert!(
                (g[0] - w[0]).abs() < 1e-4 && (g[1] - w[1]).abs() < 1e-4,
                "{got:?}"
            );
        }
        assert!(five_points(Scheme::Wflw98, &face68(five)).is_err());
    }

    /// The ArcFace fit against an independent closed form: a 2-D similarity is `z -> a z + b`
    /// over complex numbers, with `a = sum((w - mean w) conj(z - mean z)) / sum |z - mean z|^2`.
    #[test]
    fn arcface_fit_matches_the_complex_closed_form() {
        let from = [
            [101.3, 87.2],
            [139.8, 92.1],
            [118.0, 115.5],
            [99.2, 135.0],
            [133.4, 139.9],
        ];
        let (fit, residual) = fit_similarity(&from, &ARCFACE_112).unwrap();
        let n = 5.0;
        let mean = |ps: &[Point]| {
            let s = ps.iter().fold([0.0f64; 2], |m, p| {
                [m[0] + f64::from(p[0]), m[1] + f64::from(p[1])]
            });
            [s[0] / n, s[1] / n]
        };
        let (mz, mw) = (mean(&from), mean(&ARCFACE_112));
        let (mut num_re, mut num_im, mut den) = (0.0, 0.0, 0.0);
        for (z, w) in from.iter().zip(&ARCFACE_112) {
            let (zx, zy) = (f64::from(z[0]) - mz[0], f64::from(z[1]) - mz[1]);
            let (wx, wy) = (f64::from(w[0]) - mw[0], f64::from(w[1]) - mw[1]);
            // w * conj(z)
            num_re += wx * zx + wy * zy;
            num_im += wy * zx - wx * zy;
            den += zx * zx + zy * zy;
        }
        let (a, b) = (num_re / den, num_im / den);
        let t = [
            mw[0] - (a * mz[0] - b * mz[1]),
            mw[1] - (b * mz[0] + a * mz[1]),
        ];
        let want = [[a, -b, t[0]], [b, a, t[1]]];
        for (row, want_row) in fit.0.iter().zip(want) {
            for (got, want) in row.iter().zip(want_row) {
                assert!((got - want).abs() < 1e-6, "{:?} vs {want:?}", fit.0);
            }
        }
        assert!(residual > 0.0 && residual < 5.0, "{residual}");
    }

    #[test]
    fn a_rotated_face_comes_out_level_and_maps_back() {
        let five = UPRIGHT_FIVE;
        let upright = face68(five);
        let angle = 0.5f32; // about 29 degrees
        let turned: Vec<Point> = upright
            .iter()
            .map(|&p| rotate(p, angle, [100.0, 110.0]))
            .collect();
        for spec in [ChipSpec::Arcface112, "150:0.25".parse().unwrap()] {
            let chip = face_chip(spec, Scheme::W300_68, &turned).unwrap();
            let eyes = five_points(Scheme::W300_68, &turned).unwrap();
            let (l, r) = (chip.to_chip.apply(eyes[0]), chip.to_chip.apply(eyes[1]));
            let tilt = (r[1] - l[1]).atan2(r[0] - l[0]).to_degrees();
            assert!(tilt.abs() < 1.0, "{spec:?}: eye line at {tilt} degrees");
            for &p in &turned {
                let back = chip.to_image.apply(chip.to_chip.apply(p));
                assert!((back[0] - p[0]).abs() < 1e-3 && (back[1] - p[1]).abs() < 1e-3);
            }
            // The crop the runtime samples is the same window.
            let crop = chip.crop();
            let corner = chip.to_image.apply([0.0, 0.0]);
            let via_crop = crop.to_image([0.5 / spec.size() as f32; 2]);
            assert!(
                (corner[0] - via_crop[0]).abs() < 1e-2,
                "{corner:?} vs {via_crop:?}"
            );
            assert!(
                (corner[1] - via_crop[1]).abs() < 1e-2,
                "{corner:?} vs {via_crop:?}"
            );
        }
        // The aligned chip centres the face's box; with no padding its longer side fills the
        // chip (pixel edges -0.5 and 99.5).
        let chip = face_chip("100:0".parse().unwrap(), Scheme::W300_68, &upright).unwrap();
        let mapped: Vec<Point> = upright.iter().map(|&p| chip.to_chip.apply(p)).collect();
        let b = crate::crop::FaceBox::around(&mapped).unwrap();
        let centre = b.center();
        assert!(
            (centre[0] - 49.5).abs() < 1e-3 && (centre[1] - 49.5).abs() < 1e-3,
            "{b:?}"
        );
        assert!((b.width().max(b.height()) - 100.0).abs() < 1e-3, "{b:?}");
    }

    #[test]
    fn chip_specs_are_checked() {
        assert_eq!(
            "arcface112".parse::<ChipSpec>().unwrap(),
            ChipSpec::Arcface112
        );
        assert_eq!(
            "160".parse::<ChipSpec>().unwrap(),
            ChipSpec::Aligned {
                size: 160,
                padding: 0.25
            }
        );
        for bad in ["", "0", "x:1", "150:-1", "arcface", "100000"] {
            assert!(bad.parse::<ChipSpec>().is_err(), "{bad:?}");
        }
    }
}
