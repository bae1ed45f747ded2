//! Crop geometry: face box -> square face crop, and back.
//!
//! Image coordinates are 0-based pixel centres (pixel `i` covers `[i - 0.5, i + 0.5]`), the
//! convention of the 300-W tools once 1 is subtracted from `.pts` values. Crop-normalised
//! coordinates run from 0 to 1 across the crop square, so crop pixel `u` of an `S`-pixel crop
//! has its centre at `(u + 0.5) / S`. A [`FaceCrop`] is the similarity transform between the two.

use nalgebra::{Isometry2, Point2, Similarity2, Vector2};

use crate::{Error, Point, Result};

/// An axis-aligned box in image pixels, `[x0, y0, x1, y1]` with `x0 <= x1`, `y0 <= y1`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
// Read through f64, so a number beyond f32 becomes an infinite coordinate that the per-image
// checks reject with that image named, instead of failing the whole file.
#[serde(from = "[f64; 4]", into = "[f32; 4]")]
pub struct FaceBox {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

impl From<[f32; 4]> for FaceBox {
    fn from([x0, y0, x1, y1]: [f32; 4]) -> Self {
        Self { x0, y0, x1, y1 }
    }
}

impl From<[f64; 4]> for FaceBox {
    fn from(b: [f64; 4]) -> Self {
        b.map(|v| v as f32).into()
    }
}

impl From<FaceBox> for [f32; 4] {
    fn from(b: FaceBox) -> Self {
        [b.x0, b.y0, b.x1, b.y1]
    }
}

impl FaceBox {
    /// The tight box around a set of points (the 300-W "landmark box").
    pub fn around(points: &[Point]) -> Result<Self> {
        if points.is_empty()
            || points
                .iter()
                .any(|p| !p[0].is_finite() || !p[1].is_finite())
        {
            return Err(Error::Invalid {
                what: "landmark box",
                detail: "needs at least one point and only finite coordinates".into(),
            });
        }
        let mut b = Self::from([f32::MAX, f32::MAX, f32::MIN, f32::MIN]);
        for p in points {
            b.x0 = b.x0.min(p[0]);
            b.y0 = b.y0.min(p[1]);
            b.x1 = b.x1.max(p[0]);
            b.y1 = b.y1.max(p[1]);
        }
        Ok(b)
    }

    pub fn width(&self) -> f32 {
        self.x1 - self.x0
    }

    pub fn height(&self) -> f32 {
        self.y1 - self.y0
    }

    /// Checks that a caller's box can be a face in a `width` x `height` image: finite, with
    /// `x0 < x1` and `y0 < y1`, overlapping the image, and no side over
    /// [`Self::MAX_SIDE_OVER_IMAGE`] times the image's longer side. Landmarks for anything else
    /// would be made-up numbers.
    pub fn check_in_image(&self, width: u32, height: u32) -> Result<()> {
        let invalid = |detail: String| Error::Invalid {
            what: "face box",
            detail: format!(
                "[{}, {}, {}, {}]: {detail}",
                self.x0, self.y0, self.x1, self.y1
            ),
        };
        let [x0, y0, x1, y1]: [f32; 4] = (*self).into();
        if ![x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
            return Err(invalid("coordinates must be finite numbers".into()));
        }
        if x0 >= x1 || y0 >= y1 {
            return Err(invalid("expected x0 < x1 and y0 < y1".into()));
        }
        let side = self.width().max(self.height());
        if side < 1.0 {
            return Err(invalid("is smaller than a pixel".into()));
        }
        let (w, h) = (width as f32, height as f32);
        if x1 <= 0.0 || y1 <= 0.0 || x0 >= w || y0 >= h {
            return Err(invalid(format!("lies outside the {width}x{height} image")));
        }
        if side > Self::MAX_SIDE_OVER_IMAGE * w.max(h) {
            return Err(invalid(format!(
                "is more than {}x the {width}x{height} image",
                Self::MAX_SIDE_OVER_IMAGE
            )));
        }
        Ok(())
    }

    /// How much larger than the image a caller's box may be ([`Self::check_in_image`]).
    pub const MAX_SIDE_OVER_IMAGE: f32 = 4.0;

    pub fn center(&self) -> Point {
        [(self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0]
    }

    /// Intersection over union of the two boxes (0 when either is empty).
    pub fn iou(&self, other: &Self) -> f32 {
        let inter = self.intersection_area(other);
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// The share of the smaller box that lies in both (0 when either is empty): 1 when one
    /// box holds the other, however much larger it is.
    pub fn overlap_of_smaller(&self, other: &Self) -> f32 {
        let smaller = self.area().min(other.area());
        if smaller > 0.0 {
            self.intersection_area(other) / smaller
        } else {
            0.0
        }
    }

    fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    fn intersection_area(&self, other: &Self) -> f32 {
        let (a, b) = (self, other);
        let iw = (a.x1.min(b.x1) - a.x0.max(b.x0)).max(0.0);
        let ih = (a.y1.min(b.y1) - a.y0.max(b.y0)).max(0.0);
        iw * ih
    }
}

/// How a square crop is made from a face box: side = `scale * max(w, h)`, centre = box centre
/// shifted by `shift * side`. The model's `pipnet.crop` metadata records the rule it was
/// trained with (`landmark_box_scale=1.1`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropRule {
    pub scale: f32,
    pub shift_x: f32,
    pub shift_y: f32,
}

impl Default for CropRule {
    /// The contract's default: the landmark box enlarged 1.1 times, centred.
    fn default() -> Self {
        Self {
            scale: 1.1,
            shift_x: 0.0,
            shift_y: 0.0,
        }
    }
}

impl CropRule {
    /// Parses `pipnet.crop`, e.g. `landmark_box_scale=1.1` (optionally `,shift_x=..,shift_y=..`).
    pub fn parse(text: &str) -> Result<Self> {
        let mut rule = Self {
            scale: f32::NAN,
            shift_x: 0.0,
            shift_y: 0.0,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let invalid = |detail: String| Error::Invalid {
                what: "crop rule",
                detail,
            };
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| invalid(format!("{part:?} is not key=value")))?;
            let value: f32 = value
                .trim()
                .parse()
                .map_err(|_| invalid(format!("{part:?}: value is not a number")))?;
            match key.trim() {
                "landmark_box_scale" => rule.scale = value,
                "shift_x" => rule.shift_x = value,
                "shift_y" => rule.shift_y = value,
                other => return Err(invalid(format!("unknown key {other:?}"))),
            }
        }
        if !(rule.scale.is_finite() && rule.scale > 0.0) {
            return Err(Error::Invalid {
                what: "crop rule",
                detail: format!("{text:?} needs a positive landmark_box_scale"),
            });
        }
        Ok(rule)
    }

    /// The `pipnet.crop` text for this rule (shifts only when non-zero).
    pub fn to_metadata(&self) -> String {
        let mut text = format!("landmark_box_scale={}", self.scale);
        if self.shift_x != 0.0 || self.shift_y != 0.0 {
            text.push_str(&format!(
                ",shift_x={},shift_y={}",
                self.shift_x, self.shift_y
            ));
        }
        text
    }

    /// The crop this rule makes from `face`.
    pub fn crop(&self, face: &FaceBox) -> FaceCrop {
        let side = self.scale * face.width().max(face.height());
        let [cx, cy] = face.center();
        FaceCrop::new(
            [cx + self.shift_x * side, cy + self.shift_y * side],
            side,
            0.0,
        )
    }

    /// The crop this rule makes from a box in a turned frame: made in that frame (so the
    /// shifts run along the face's own axes), then turned back into the image. An upright box
    /// gives exactly [`Self::crop`].
    pub fn crop_turned(&self, face: &TurnedBox) -> FaceCrop {
        let upright = self.crop(&face.face_box);
        FaceCrop::new(turn(upright.center, face.angle), upright.side, face.angle)
    }
}

/// A `width` x `height` image's size scaled by `factor`, each side rounded and at least one
/// pixel: what a resize by that factor makes.
pub fn scaled_size(width: u32, height: u32, factor: f32) -> (u32, u32) {
    let size = |n: u32| ((n as f32 * factor).round() as u32).max(1);
    (size(width), size(height))
}

/// `p` turned by `angle` radians about the image origin (the [`FaceCrop`] convention: positive
/// turns x towards y).
pub fn turn(p: Point, angle: f32) -> Point {
    if angle == 0.0 {
        return p;
    }
    let (s, c) = angle.sin_cos();
    [c * p[0] - s * p[1], s * p[0] + c * p[1]]
}

/// A face's box in its own upright frame: `face_box` bounds the face after the image is turned
/// by `-angle` about the origin, so a tilted face gets the tight box it would have upright and
/// a crop made from it ([`CropRule::crop_turned`]) shows the network an upright face. `angle`
/// follows [`FaceCrop`]: the face's x axis, its eye line, points along `(cos a, sin a)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnedBox {
    pub face_box: FaceBox,
    pub angle: f32,
}

impl TurnedBox {
    /// An untilted box.
    pub fn upright(face_box: FaceBox) -> Self {
        Self {
            face_box,
            angle: 0.0,
        }
    }

    /// The tight box of `points` in the frame turned by `angle`.
    pub fn around(points: &[Point], angle: f32) -> Result<Self> {
        let levelled: Vec<Point> = points.iter().map(|&p| turn(p, -angle)).collect();
        Ok(Self {
            face_box: FaceBox::around(&levelled)?,
            angle,
        })
    }
}

/// A square crop of an image: centre and side in image pixels, rotation in radians
/// (counter-clockwise in a y-down image means the crop's x axis points along
/// `(cos a, sin a)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceCrop {
    pub center: Point,
    pub side: f32,
    pub angle: f32,
}

impl FaceCrop {
    pub fn new(center: Point, side: f32, angle: f32) -> Self {
        Self {
            center,
            side,
            angle,
        }
    }

    /// The whole image as one crop: the centred square around its longest side.
    pub fn whole_image(width: u32, height: u32) -> Self {
        let (w, h) = (width as f32, height as f32);
        Self::new([(w - 1.0) / 2.0, (h - 1.0) / 2.0], w.max(h), 0.0)
    }

    /// The window that shows a `width` x `height` image turned by `angle` about its centre
    /// (content turning x towards y, so a face in it gains `angle` of roll), on the smallest
    /// square canvas of whole pixels that holds all of it; and that canvas's side. Canvas pixel
    /// `u` shows image point `to_image((u + 0.5) / side)`.
    pub fn turned_image(width: u32, height: u32, angle: f32) -> (Self, u32) {
        let (w, h) = (width as f32, height as f32);
        let (s, c) = (angle.sin().abs(), angle.cos().abs());
        // Rounded to a thousandth first, so a quarter turn's float error adds no pixel.
        let fit = |v: f32| ((v * 1000.0).round() / 1000.0).ceil().max(1.0);
        let side = fit(w * c + h * s).max(fit(w * s + h * c));
        let crop = Self::new([(w - 1.0) / 2.0, (h - 1.0) / 2.0], side, -angle);
        (crop, side as u32)
    }

    /// Crop-normalised -> image pixels: `p_img = centre + R(angle) * side * (p - 0.5)`.
    pub fn to_image_transform(&self) -> Similarity2<f32> {
        let centre = Vector2::new(self.center[0], self.center[1]);
        let rotate = Isometry2::new(centre, self.angle);
        let half = Vector2::new(-0.5, -0.5);
        rotate * Similarity2::new(half * self.side, 0.0, self.side)
    }

    pub fn to_image(&self, p: Point) -> Point {
        let q = self.to_image_transform() * Point2::new(p[0], p[1]);
        [q.x, q.y]
    }

    pub fn to_crop(&self, p: Point) -> Point {
        let q = self.to_image_transform().inverse() * Point2::new(p[0], p[1]);
        [q.x, q.y]
    }

    /// The axis-aligned bounds of the crop square in the image.
    pub fn bounds(&self) -> FaceBox {
        let corners = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]].map(|p| self.to_image(p));
        // Four finite corners always give a box.
        FaceBox::around(&corners).unwrap_or(FaceBox::from([0.0; 4]))
    }
}

/// How `face68-train` was cut from the 300-W photos: a square `context` times the landmark
/// box's longer side, centred on the box, widened to whole pixels (`floor` of the start, `ceil`
/// of the end), clipped to the photo (so crops at an edge are not square), then scaled down so
/// the longer side is at most `max_side` pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DatasetCrop {
    /// Top-left pixel of the cut in the photo.
    pub x0: u32,
    pub y0: u32,
    /// Size of the cut in the photo.
    pub width: u32,
    pub height: u32,
    /// Size of the saved crop.
    pub out_width: u32,
    pub out_height: u32,
}

impl DatasetCrop {
    /// The cut for a face whose 0-based `points` lie in a `photo_width` x `photo_height` photo.
    pub fn around(
        points: &[Point],
        photo_width: u32,
        photo_height: u32,
        context: f32,
        max_side: u32,
    ) -> Result<Self> {
        let b = FaceBox::around(points)?;
        let side = context * b.width().max(b.height());
        let [cx, cy] = b.center();
        let clip = |v: f32, limit: u32| v.clamp(0.0, limit as f32) as u32;
        let (x0, x1) = (
            clip((cx - side / 2.0).floor(), photo_width),
            clip((cx + side / 2.0).ceil(), photo_width),
        );
        let (y0, y1) = (
            clip((cy - side / 2.0).floor(), photo_height),
            clip((cy + side / 2.0).ceil(), photo_height),
        );
        if x1 <= x0 || y1 <= y0 {
            return Err(Error::Invalid {
                what: "dataset crop",
                detail: format!(
                    "the face's landmark box {:?} lies outside the {photo_width}x{photo_height} \
                     photo",
                    <[f32; 4]>::from(b)
                ),
            });
        }
        let (width, height) = (x1 - x0, y1 - y0);
        let scale = (max_side as f32 / width.max(height) as f32).min(1.0);
        let (out_width, out_height) = scaled_size(width, height, scale);
        Ok(Self {
            x0,
            y0,
            width,
            height,
            out_width,
            out_height,
        })
    }

    /// The scale from photo to saved crop (1 when the cut was small enough).
    pub fn scale(&self) -> f32 {
        self.out_width.max(self.out_height) as f32 / self.width.max(self.height) as f32
    }

    /// A 0-based photo point in the saved crop, pixel centres kept exact:
    /// `x' = (x - x0 + 0.5) * sx - 0.5` with `sx` = saved width / cut width (`y` likewise).
    pub fn to_crop(&self, p: Point) -> Point {
        let sx = self.out_width as f32 / self.width as f32;
        let sy = self.out_height as f32 / self.height as f32;
        [
            (p[0] - self.x0 as f32 + 0.5) * sx - 0.5,
            (p[1] - self.y0 as f32 + 0.5) * sy - 0.5,
        ]
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_a_box_beyond_f32_reads_as_infinite() {
        let b: super::FaceBox = serde_json::from_str("[1.5, 2, 1e39, 4]").unwrap();
        assert_eq!((b.x0, b.y0, b.y1), (1.5, 2.0, 4.0));
        assert_eq!(b.x1, f32::INFINITY);
    }

    #[test]
    fn test_dataset_crop_matches_face68_manifest_rows() {
        // A face whose landmark box is 200 x 100 at (400, 300): side 2.2 * 200 = 440 around
        // the centre (500, 350): [280, 720) x [130, 570), under 512 so unscaled.
        let points = [[400.0, 300.0], [600.0, 400.0]];
        let c = DatasetCrop::around(&points, 1000, 1000, 2.2, 512).unwrap();
        assert_eq!((c.x0, c.y0, c.width, c.height), (280, 130, 440, 440));
        assert_eq!((c.out_width, c.out_height), (440, 440));
        assert_eq!(c.to_crop([400.0, 300.0]), [120.0, 170.0]);
        // Clipped at the photo's right edge: not square.
        let c = DatasetCrop::around(&points, 700, 1000, 2.2, 512).unwrap();
        assert_eq!((c.x0, c.width), (280, 420));
        // Too large: scaled so the longer side is 512, points moved by pixel centres.
        let big = [[0.0, 0.0], [1000.0, 500.0]];
        let c = DatasetCrop::around(&big, 4000, 4000, 2.2, 512).unwrap();
        assert_eq!((c.x0, c.width, c.out_width), (0, 1600, 512));
        assert!((c.scale() - 0.32).abs() < 1e-6);
        let p = c.to_crop([-0.5 + c.x0 as f32, 0.0]);
        assert!(
            (p[0] + 0.5).abs() < 1e-5,
            "the left pixel edge stays the left edge: {p:?}"
        );
        assert!(DatasetCrop::around(&points, 100, 100, 2.2, 512).is_err());
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn test_landmark_box_crop_is_square_and_centred() {
        let face = FaceBox::around(&[[10.0, 20.0], [50.0, 40.0]]).unwrap();
        let crop = CropRule::default().crop(&face);
        assert!((crop.side - 44.0).abs() < 1e-5);
        assert_eq!(crop.center, [30.0, 30.0]);
        let tl = crop.to_image([0.0, 0.0]);
        assert!(
            (tl[0] - 8.0).abs() < 1e-4 && (tl[1] - 8.0).abs() < 1e-4,
            "{tl:?}"
        );
        let mid = crop.to_crop([30.0, 30.0]);
        assert!((mid[0] - 0.5).abs() < 1e-6 && (mid[1] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn test_turned_crop_is_the_upright_crop_turned_with_the_face() {
        let rule = CropRule {
            scale: 1.2,
            shift_x: 0.05,
            shift_y: -0.1,
        };
        let face = [[10.0, 20.0], [50.0, 40.0], [30.0, 70.0]];
        let upright = rule.crop(&FaceBox::around(&face).unwrap());
        assert_eq!(
            rule.crop_turned(&TurnedBox::around(&face, 0.0).unwrap()),
            upright
        );
        // The same face turned by 0.7 rad about (300, -40): the crop turns with it, and each
        // point keeps its crop-normalised place.
        let (angle, pivot) = (0.7f32, [300.0f32, -40.0]);
        let about = |p: Point| {
            let q = turn([p[0] - pivot[0], p[1] - pivot[1]], angle);
            [q[0] + pivot[0], q[1] + pivot[1]]
        };
        let tilted: Vec<Point> = face.iter().map(|&p| about(p)).collect();
        let crop = rule.crop_turned(&TurnedBox::around(&tilted, angle).unwrap());
        assert!((crop.side - upright.side).abs() < 1e-3, "{crop:?}");
        assert!((crop.angle - angle).abs() < 1e-6);
        for (p, q) in face.iter().zip(&tilted) {
            let (a, b) = (upright.to_crop(*p), crop.to_crop(*q));
            assert!(
                (a[0] - b[0]).abs() < 1e-4 && (a[1] - b[1]).abs() < 1e-4,
                "{a:?} {b:?}"
            );
        }
    }

    #[test]
    fn test_a_turned_image_window_turns_points_and_holds_the_whole_image() {
        // A quarter turn of a 200 x 100 image: a 200-pixel square canvas; the top-left pixel
        // lands at the top right of the turned picture (x towards y: clockwise on screen).
        let (window, side) = FaceCrop::turned_image(200, 100, std::f32::consts::FRAC_PI_2);
        assert_eq!(side, 200);
        let to_canvas = |p: Point| window.to_crop(p).map(|v| v * side as f32 - 0.5);
        let tl = to_canvas([0.0, 0.0]);
        assert!((tl[0] - 149.0).abs() < 1e-3 && tl[1].abs() < 1e-3, "{tl:?}");
        // At 30 degrees every corner of the image stays on the canvas.
        let (window, side) = FaceCrop::turned_image(300, 200, std::f32::consts::FRAC_PI_6);
        for corner in [[-0.5, -0.5], [299.5, -0.5], [-0.5, 199.5], [299.5, 199.5]] {
            let q = window.to_crop(corner);
            assert!(q.iter().all(|v| (-1e-4..=1.0 + 1e-4).contains(v)), "{q:?}");
        }
        assert_eq!(side, (300.0f32 * 0.866 + 200.0 * 0.5).ceil() as u32);
        // Unturned: the square around the longer side.
        assert_eq!(FaceCrop::turned_image(30, 20, 0.0).1, 30);
    }

    #[test]
    fn test_rotation_turns_the_crop_x_axis() {
        let crop = FaceCrop::new([100.0, 100.0], 40.0, std::f32::consts::FRAC_PI_2);
        // Crop x axis points along +y of the image.
        let p = crop.to_image([1.0, 0.5]);
        assert!(
            (p[0] - 100.0).abs() < 1e-4 && (p[1] - 120.0).abs() < 1e-4,
            "{p:?}"
        );
    }

    #[test]
    fn test_crop_rule_metadata_round_trip() {
        let rule = CropRule::parse("landmark_box_scale=1.1").unwrap();
        assert_eq!(rule, CropRule::default());
        let shifted = CropRule {
            scale: 1.25,
            shift_x: 0.0,
            shift_y: -0.05,
        };
        assert_eq!(CropRule::parse(&shifted.to_metadata()).unwrap(), shifted);
        for bad in [
            "",
            "scale=1",
            "landmark_box_scale=abc",
            "landmark_box_scale=-1",
            "x",
        ] {
            assert!(CropRule::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn test_whole_image_crop_covers_the_longest_side() {
        let crop = FaceCrop::whole_image(200, 100);
        let b = crop.bounds();
        assert!(
            (b.x0 + 0.5).abs() < 1e-4 && (b.x1 - 199.5).abs() < 1e-4,
            "{b:?}"
        );
        assert!((b.height() - 200.0).abs() < 1e-4);
    }

    #[test]
    fn boxes_are_checked_against_the_image() {
        let ok = FaceBox::from([10.0, 20.0, 60.0, 80.0]);
        assert!(ok.check_in_image(100, 100).is_ok());
        // Partly outside is fine: faces at the border are real.
        assert!(
            FaceBox::from([-20.0, -20.0, 30.0, 30.0])
                .check_in_image(100, 100)
                .is_ok()
        );
        let bad = [
            ([f32::NAN, 0.0, 10.0, 10.0], "finite"),
            ([0.0, 0.0, f32::INFINITY, 10.0], "finite"),
            ([50.0, 0.0, 10.0, 10.0], "x0 < x1"),
            ([0.0, 10.0, 10.0, 10.0], "y0 < y1"),
            ([100.0, 0.0, 150.0, 50.0], "outside"),
            ([-50.0, 0.0, 0.0, 50.0], "outside"),
            ([0.0, 0.0, 1e30, 1e30], "more than 4x"),
            ([5.0, 5.0, 5.5, 5.5], "smaller than a pixel"),
        ];
        for (b, why) in bad {
            let err = FaceBox::from(b)
                .check_in_image(100, 100)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{b:?}: {err}");
        }
    }

    /// Coordinates as hostile callers write them: anything, or plausible pixels.
    fn coordinate() -> impl Strategy<Value = f32> {
        prop_oneof![any::<f32>(), -200.0f32..3000.0]
    }

    proptest! {
        /// A box that passes the check always makes a finite crop of positive size that
        /// overlaps the image: nothing downstream sees garbage.
        #[test]
        fn checked_boxes_make_sound_crops(
            b in prop::array::uniform4(coordinate()),
            w in 1u32..4000,
            h in 1u32..4000,
        ) {
            let face = FaceBox::from(b);
            if face.check_in_image(w, h).is_ok() {
                let crop = CropRule::default().crop(&face);
                prop_assert!(crop.side.is_finite() && crop.side >= 1.0, "{crop:?}");
                prop_assert!(crop.center.iter().all(|v| v.is_finite()), "{crop:?}");
                let bounds = crop.bounds();
                prop_assert!(bounds.x1 > 0.0 && bounds.x0 < w as f32, "{bounds:?}");
            }
        }

        #[test]
        fn prop_crop_round_trips(
            cx in -500.0f32..500.0, cy in -500.0f32..500.0, side in 1.0f32..1000.0,
            angle in -3.2f32..3.2, px in -1.0f32..2.0, py in -1.0f32..2.0,
        ) {
            let crop = FaceCrop::new([cx, cy], side, angle);
            let back = crop.to_crop(crop.to_image([px, py]));
            prop_assert!((back[0] - px).abs() < 1e-4 && (back[1] - py).abs() < 1e-4);
            // Distances scale by the side length.
            let a = crop.to_image([0.0, 0.0]);
            let b = crop.to_image([1.0, 0.0]);
            let d = ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
            prop_assert!((d - side).abs() < 1e-3 * side);
        }
    }
}
