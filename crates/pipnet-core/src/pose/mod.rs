//! Head pose from 2-D landmarks: a rigid 3-D mean face ([`MeanShape`]) fitted to a face's
//! landmarks with a weak-perspective (scaled orthographic) camera.
//!
//! Conventions, all in the camera frame of OpenCV: x to the image's right, y down, z away
//! from the camera. The mean shape lives in the same axes as seen on a frontal face (x toward
//! the subject's left, y toward the chin, z into the head), its origin at its centroid, its
//! unit the distance between the outer eye corners. [`HeadPose::rotation`] takes shape
//! coordinates to camera coordinates and is `Rz(roll) * Ry(yaw) * Rx(pitch)` (right-handed
//! rotations, pitch applied first), so in image terms:
//! - `roll > 0`: the head tilts clockwise in the picture (the eye-line angle of
//!   [`crate::roll`], in degrees);
//! - `yaw > 0`: the nose turns toward the image's left (the person turns to their own right);
//! - `pitch > 0`: the nose turns down.
//!
//! Weak perspective needs no focal length: a face far from the camera compared with its depth
//! (every face in ordinary photos) projects as `scale * rotation[0..2] * X + translation`. Yaw
//! and pitch are relative to the mean pose of the 300-W training faces, which the shape was
//! learned in (so "0" is the average of those photos, not a measured frontal direction).

mod face68;
mod learn;

pub use learn::{ShapeFit, learn_mean_shape};

use std::sync::OnceLock;

use nalgebra::{Matrix3, Matrix6, Rotation3, Vector3, Vector6};
use serde::{Deserialize, Serialize};

use crate::detection::wrap_angle;
use crate::{Error, Point, Result, Scheme};

/// A face's head pose ([module docs](self) for the conventions).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadPose {
    /// Degrees, in -90..90.
    pub yaw: f32,
    /// Degrees, in -180..180.
    pub pitch: f32,
    /// Degrees, in -180..180.
    pub roll: f32,
    /// Shape to camera coordinates, row-major.
    pub rotation: [[f32; 3]; 3],
    /// Image pixels: where the shape's origin (its centroid) projects.
    pub translation: [f32; 2],
    /// Pixels per shape unit: the projected outer-eye-corner distance of a frontal face.
    pub scale: f32,
    /// Root-mean-square distance between the landmarks and the fitted shape's projection,
    /// divided by `scale`: like an NME of the rigid fit. Expression and face shape leave
    /// 0.033-0.082 (5-95%) on the validation faces' true landmarks; far above that, the
    /// landmarks are not a face seen this way.
    pub residual: f32,
}

impl HeadPose {
    /// How this pose differs from `before`, the same face's pose on the photo before it was
    /// mirrored (with `mirrored`) and then turned by `roll` degrees, once what those changes
    /// should do is undone (a mirror negates yaw and roll; a turn adds to roll): `[yaw, pitch,
    /// roll]` in degrees, roll wrapped to -180..180. Zero for a pose that follows the photo.
    pub fn change_from(&self, before: &HeadPose, roll: f32, mirrored: bool) -> [f32; 3] {
        let sign = if mirrored { -1.0 } else { 1.0 };
        let roll_change = sign * (self.roll - roll) - before.roll;
        [
            sign * self.yaw - before.yaw,
            self.pitch - before.pitch,
            wrap_angle(roll_change.to_radians()).to_degrees(),
        ]
    }

    /// Where a point of the shape's frame (shape units) lands in the image.
    pub fn project(&self, point: [f32; 3]) -> Point {
        let r = &self.rotation;
        let p = |row: &[f32; 3]| row[0] * point[0] + row[1] * point[1] + row[2] * point[2];
        [
            self.scale * p(&r[0]) + self.translation[0],
            self.scale * p(&r[1]) + self.translation[1],
        ]
    }
}

/// A rigid 3-D face for the landmarks of one scheme.
#[derive(Debug, Clone, PartialEq)]
pub struct MeanShape {
    pub scheme: Scheme,
    /// One point per landmark, in shape units ([module docs](self)).
    pub points: Vec<[f32; 3]>,
}

impl MeanShape {
    /// The shape shipped for `scheme`, learned from the 300-W training landmarks
    /// (`face68.rs` says how); `None` for schemes without one (WFLW 98).
    pub fn for_scheme(scheme: Scheme) -> Option<&'static MeanShape> {
        static FACE68: OnceLock<MeanShape> = OnceLock::new();
        match scheme {
            Scheme::W300_68 => Some(FACE68.get_or_init(|| MeanShape {
                scheme,
                points: face68::FACE68.to_vec(),
            })),
            _ => None,
        }
    }

    /// The nose tip, where previews start the pose axes.
    pub fn nose_tip(&self) -> [f32; 3] {
        self.points[NOSE_TIP]
    }

    /// The head pose whose projection of this shape best fits `landmarks` (least squares over
    /// all points, Gauss-Newton from the affine fit and from its depth-reversed twin, the
    /// better kept).
    pub fn fit(&self, landmarks: &[Point]) -> Result<HeadPose> {
        if landmarks.len() != self.points.len() {
            return Err(Error::SizeMismatch {
                what: "landmarks for the head pose",
                got: landmarks.len(),
                expected: self.points.len(),
            });
        }
        if landmarks.iter().flatten().any(|v| !v.is_finite()) {
            return Err(invalid("the landmarks are not finite"));
        }
        let shape: Vec<Vector3<f64>> = self.points.iter().map(|p| v3(*p)).collect();
        let target: Vec<[f64; 2]> = landmarks
            .iter()
            .map(|p| [f64::from(p[0]), f64::from(p[1])])
            .collect();
        let fit = fit_weak_perspective(&shape, &target)
            .ok_or_else(|| invalid("the landmarks have no extent to fit a head to"))?;
        Ok(fit.pose())
    }
}

/// The head pose of a face with `landmarks` of `scheme`, or `None` where the scheme has no
/// mean shape (WFLW 98) or the landmarks fit none (not finite, no extent).
pub fn head_pose(scheme: Scheme, landmarks: &[Point]) -> Option<HeadPose> {
    MeanShape::for_scheme(scheme)?.fit(landmarks).ok()
}

/// The nose tip's landmark in the 300-W scheme, the only one a mean face is learned for.
const NOSE_TIP: usize = 30;

fn invalid(detail: impl Into<String>) -> Error {
    Error::Invalid {
        what: "head pose",
        detail: detail.into(),
    }
}

fn v3(p: [f32; 3]) -> Vector3<f64> {
    Vector3::new(f64::from(p[0]), f64::from(p[1]), f64::from(p[2]))
}

/// A weak-perspective camera fitted to points: `scale * rotation.xy * X + translation`.
#[derive(Debug, Clone, Copy)]
struct WeakPerspective {
    rotation: Rotation3<f64>,
    scale: f64,
    translation: [f64; 2],
    /// Root-mean-square residual in the target's units.
    rms: f64,
}

impl WeakPerspective {
    fn pose(&self) -> HeadPose {
        let (yaw, pitch, roll) = euler(&self.rotation);
        let m = self.rotation.matrix();
        HeadPose {
            yaw: yaw.to_degrees() as f32,
            pitch: pitch.to_degrees() as f32,
            roll: roll.to_degrees() as f32,
            rotation: std::array::from_fn(|i| std::array::from_fn(|j| m[(i, j)] as f32)),
            translation: self.translation.map(|t| t as f32),
            scale: self.scale as f32,
            residual: (self.rms / self.scale) as f32,
        }
    }
}

/// `(yaw, pitch, roll)` in radians with `r = Rz(roll) * Ry(yaw) * Rx(pitch)`.
fn euler(r: &Rotation3<f64>) -> (f64, f64, f64) {
    let m = r.matrix();
    let yaw = (-m[(2, 0)]).clamp(-1.0, 1.0).asin();
    let pitch = m[(2, 1)].atan2(m[(2, 2)]);
    let roll = m[(1, 0)].atan2(m[(0, 0)]);
    (yaw, pitch, roll)
}

/// The rotation `Rz(roll) * Ry(yaw) * Rx(pitch)` (radians).
fn from_euler(yaw: f64, pitch: f64, roll: f64) -> Rotation3<f64> {
    Rotation3::from_axis_angle(&Vector3::z_axis(), roll)
        * Rotation3::from_axis_angle(&Vector3::y_axis(), yaw)
        * Rotation3::from_axis_angle(&Vector3::x_axis(), pitch)
}

/// Least-squares weak-perspective fit of `shape` to `target`, or `None` when either has no
/// extent. Starts from the affine fit's nearest scaled rotation and from that rotation seen
/// depth-reversed (the two poses orthography confuses), refines both, keeps the better.
fn fit_weak_perspective(shape: &[Vector3<f64>], target: &[[f64; 2]]) -> Option<WeakPerspective> {
    let n = shape.len() as f64;
    let shape_mean = shape.iter().sum::<Vector3<f64>>() / n;
    let target_mean = target
        .iter()
        .fold([0.0; 2], |a, p| [a[0] + p[0] / n, a[1] + p[1] / n]);
    // The affine map A (2x3) minimising |A X - u| over the centred points.
    let mut xx = Matrix3::zeros();
    let mut ux = nalgebra::Matrix2x3::zeros();
    for (x, u) in shape.iter().zip(target) {
        let x = x - shape_mean;
        xx += x * x.transpose();
        let u = nalgebra::Vector2::new(u[0] - target_mean[0], u[1] - target_mean[1]);
        ux += u * x.transpose();
    }
    let affine = ux * xx.try_inverse()?;
    let svd = affine.svd(true, true);
    let (u, v_t) = (svd.u?, svd.v_t?);
    let scale = (svd.singular_values[0] + svd.singular_values[1]) / 2.0;
    if !(scale.is_finite() && scale > 1e-9) {
        return None;
    }
    let rows = u * v_t;
    let r0 = Vector3::new(rows[(0, 0)], rows[(0, 1)], rows[(0, 2)]);
    let r1 = Vector3::new(rows[(1, 0)], rows[(1, 1)], rows[(1, 2)]);
    let start = Rotation3::from_matrix(&Matrix3::from_rows(&[
        r0.transpose(),
        r1.transpose(),
        r0.cross(&r1).transpose(),
    ]));
    // The depth-reversed twin: the same image-plane rotation, the out-of-plane turn mirrored.
    let (yaw, pitch, roll) = euler(&start);
    let twin = from_euler(-yaw, -pitch, roll);
    [start, twin]
        .into_iter()
        .map(|r| refine(shape, target, r, scale))
        .min_by(|a, b| a.rms.total_cmp(&b.rms))
}

/// Gauss-Newton on rotation (a left-multiplied increment), scale and translation.
fn refine(
    shape: &[Vector3<f64>],
    target: &[[f64; 2]],
    mut rotation: Rotation3<f64>,
    mut scale: f64,
) -> WeakPerspective {
    let n = shape.len() as f64;
    let translation_for = |rotation: &Rotation3<f64>, scale: f64| {
        let mut t = [0.0; 2];
        for (x, u) in shape.iter().zip(target) {
            let y = rotation * x;
            t[0] += (u[0] - scale * y.x) / n;
            t[1] += (u[1] - scale * y.y) / n;
        }
        t
    };
    let sum_squares = |rotation: &Rotation3<f64>, scale: f64, t: [f64; 2]| {
        shape
            .iter()
            .zip(target)
            .map(|(x, u)| {
                let y = rotation * x;
                (scale * y.x + t[0] - u[0]).powi(2) + (scale * y.y + t[1] - u[1]).powi(2)
            })
            .sum::<f64>()
    };
    let mut translation = translation_for(&rotation, scale);
    let mut cost = sum_squares(&rotation, scale, translation);
    for _ in 0..30 {
        let mut jtj = Matrix6::zeros();
        let mut jtr = Vector6::zeros();
        for (x, u) in shape.iter().zip(target) {
            let y = rotation * x;
            let res = [
                scale * y.x + translation[0] - u[0],
                scale * y.y + translation[1] - u[1],
            ];
            // d(R X)/d(omega) = -[Y]x for R <- exp([omega]x) R; rows x and y.
            let jx = Vector6::new(0.0, scale * y.z, -scale * y.y, y.x, 1.0, 0.0);
            let jy = Vector6::new(-scale * y.z, 0.0, scale * y.x, y.y, 0.0, 1.0);
            jtj += jx * jx.transpose() + jy * jy.transpose();
            jtr += jx * res[0] + jy * res[1];
        }
        let Some(step) = jtj.cholesky().map(|c| c.solve(&-jtr)) else {
            break;
        };
        let turn = Rotation3::new(Vector3::new(step[0], step[1], step[2]));
        let next_rotation = turn * rotation;
        let next_scale = scale + step[3];
        let next_translation = [translation[0] + step[4], translation[1] + step[5]];
        let next_cost = sum_squares(&next_rotation, next_scale, next_translation);
        if next_cost.is_nan() || next_cost >= cost {
            break;
        }
        let converged = cost - next_cost < 1e-12 * cost.max(1e-300);
        (rotation, scale, translation, cost) =
            (next_rotation, next_scale, next_translation, next_cost);
        if converged {
            break;
        }
    }
    if scale < 0.0 {
        // -s R projects as s Rz(180 degrees) R: the same fit with a positive scale.
        rotation = Rotation3::from_axis_angle(&Vector3::z_axis(), std::f64::consts::PI) * rotation;
        scale = -scale;
    }
    WeakPerspective {
        rotation,
        scale,
        translation,
        rms: (cost / n).sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> &'static MeanShape {
        MeanShape::for_scheme(Scheme::W300_68).unwrap()
    }

    fn pose_at(yaw: f64, pitch: f64, roll: f64, scale: f32, at: [f32; 2]) -> HeadPose {
        let r = from_euler(yaw.to_radians(), pitch.to_radians(), roll.to_radians());
        let m = r.matrix();
        HeadPose {
            yaw: yaw as f32,
            pitch: pitch as f32,
            roll: roll as f32,
            rotation: std::array::from_fn(|i| std::array::from_fn(|j| m[(i, j)] as f32)),
            translation: at,
            scale,
            residual: 0.0,
        }
    }

    #[test]
    fn euler_angles_round_trip_and_name_the_image_directions() {
        for (yaw, pitch, roll) in [(30.0, -20.0, 170.0), (-60.0, 45.0, -10.0), (0.0, 0.0, 0.0)] {
            let r = from_euler(
                f64::to_radians(yaw),
                f64::to_radians(pitch),
                f64::to_radians(roll),
            );
            let (y, p, ro) = euler(&r);
            assert!((y.to_degrees() - yaw).abs() < 1e-9, "{yaw}");
            assert!((p.to_degrees() - pitch).abs() < 1e-9, "{pitch}");
            assert!((ro.to_degrees() - roll).abs() < 1e-9, "{roll}");
        }
        // A point in front of the face (toward the camera: -z) moves left for yaw > 0, down
        // for pitch > 0; roll > 0 turns the x axis toward +y (clockwise on screen).
        let front = [0.0, 0.0, -1.0];
        assert!(pose_at(20.0, 0.0, 0.0, 1.0, [0.0; 2]).project(front)[0] < 0.0);
        assert!(pose_at(0.0, 20.0, 0.0, 1.0, [0.0; 2]).project(front)[1] > 0.0);
        assert!(pose_at(0.0, 0.0, 20.0, 1.0, [0.0; 2]).project([1.0, 0.0, 0.0])[1] > 0.0);
    }

    #[test]
    fn the_fit_recovers_the_pose_the_shape_was_projected_with() {
        let shape = shape();
        for yaw in [-60.0, -30.0, 0.0, 15.0, 45.0] {
            for pitch in [-30.0, 0.0, 25.0] {
                for roll in [-150.0, -20.0, 0.0, 90.0, 180.0] {
                    let truth = pose_at(yaw, pitch, roll, 80.0, [320.0, 240.0]);
                    let points: Vec<Point> =
                        shape.points.iter().map(|&p| truth.project(p)).collect();
                    let fit = shape.fit(&points).unwrap();
                    let close = |a: f32, b: f32| {
                        let d = (a - b).rem_euclid(360.0);
                        d.min(360.0 - d) < 0.01
                    };
                    assert!(
                        close(fit.yaw, truth.yaw)
                            && close(fit.pitch, truth.pitch)
                            && close(fit.roll, truth.roll),
                        "{fit:?} for {yaw}/{pitch}/{roll}"
                    );
                    assert!((fit.scale - 80.0).abs() < 1e-3 && fit.residual < 1e-5);
                    assert!((fit.translation[0] - 320.0).abs() < 1e-2);
                }
            }
        }
    }

    #[test]
    fn mirrored_landmarks_negate_yaw_and_roll_and_keep_pitch() {
        let shape = shape();
        let perm = Scheme::W300_68.flip_permutation();
        let truth = pose_at(35.0, 12.0, 20.0, 50.0, [100.0, 90.0]);
        let points: Vec<Point> = shape.points.iter().map(|&p| truth.project(p)).collect();
        let mirrored: Vec<Point> = perm
            .iter()
            .map(|&j| [640.0 - points[j][0], points[j][1]])
            .collect();
        let fit = shape.fit(&mirrored).unwrap();
        assert!((fit.yaw + 35.0).abs() < 0.01, "{fit:?}");
        assert!((fit.pitch - 12.0).abs() < 0.01, "{fit:?}");
        assert!((fit.roll + 20.0).abs() < 0.01, "{fit:?}");
    }

    #[test]
    fn the_shipped_shape_is_symmetric_with_the_nose_toward_the_camera() {
        let shape = shape();
        let perm = Scheme::W300_68.flip_permutation();
        for (i, p) in shape.points.iter().enumerate() {
            let q = shape.points[perm[i]];
            assert!(
                (p[0] + q[0]).abs() < 1e-4 && (p[1] - q[1]).abs() < 1e-4,
                "{i}"
            );
            assert!((p[2] - q[2]).abs() < 1e-4, "{i}");
        }
        let (a, b) = Scheme::W300_68.normalizer();
        let eyes = (v3(shape.points[a]) - v3(shape.points[b])).norm();
        assert!((eyes - 1.0).abs() < 1e-4);
        // Nose tip (30) nearer the camera than the jaw ends (0, 16); chin (8) below the eyes.
        assert!(shape.points[30][2] < shape.points[0][2] - 0.3);
        assert!(shape.points[8][1] > shape.points[36][1]);
    }

    #[test]
    fn a_change_of_photo_is_undone_before_poses_are_compared() {
        let before = pose_at(10.0, 5.0, 170.0, 1.0, [0.0; 2]);
        let turned = pose_at(10.5, 4.0, -160.0, 1.0, [0.0; 2]);
        let change = turned.change_from(&before, 30.0, false);
        let close = |a: [f32; 3], b: [f32; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
        assert!(
            close(change, [0.5, -1.0, 0.0]),
            "{change:?}: the roll wraps round"
        );
        let mirrored = pose_at(-10.0, 5.0, -170.0, 1.0, [0.0; 2]);
        assert!(close(mirrored.change_from(&before, 0.0, true), [0.0; 3]));
        let mirrored_and_turned = pose_at(-10.0, 5.0, -140.0, 1.0, [0.0; 2]);
        assert!(close(
            mirrored_and_turned.change_from(&before, 30.0, true),
            [0.0; 3]
        ));
    }

    #[test]
    fn bad_landmarks_are_errors() {
        let shape = shape();
        assert!(shape.fit(&[[0.0, 0.0]; 5]).is_err());
        let mut points = vec![[1.0, 2.0]; 68];
        assert!(shape.fit(&points).is_err(), "no extent");
        points[3] = [f32::NAN, 0.0];
        assert!(shape.fit(&points).is_err());
        assert!(MeanShape::for_scheme(Scheme::Wflw98).is_none());
    }
}
