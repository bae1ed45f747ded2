//! Preview images: the photo with each face's box and landmarks drawn, as a JPEG a person can
//! open to check a run at a glance.

use std::path::PathBuf;
use std::sync::OnceLock;

use image::RgbImage;
use pipnet_core::formats::FaceAnnotation;
use pipnet_core::{HeadPose, MeanShape, Point, Scheme};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::error::{Error, Result};

/// Where a sans-serif TrueType font is found on common Linux systems (Debian's
/// `fonts-dejavu-core` first).
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a sans-serif font with plotters, once per process: `PIPNET_FONT`, else DejaVu
/// Sans. Text (preview scores, plot labels) needs one; the error says how to provide it.
pub fn ensure_font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = std::env::var_os("PIPNET_FONT")
                .map(PathBuf::from)
                .or_else(|| {
                    FONT_CANDIDATES
                        .iter()
                        .map(PathBuf::from)
                        .find(|p| p.is_file())
                })
                .ok_or("no TrueType font found: set PIPNET_FONT to a .ttf file")?;
            let bytes =
                std::fs::read(&path).map_err(|e| format!("font {}: {e}", path.display()))?;
            // plotters keeps registered fonts for the whole process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
        })
        .clone()
}

/// Draws each face on a copy of `image`: its box (green) with the detector score above it
/// when a font is there ([`ensure_font`]), the face's contours (jaw, brows, nose, eyes, lips)
/// as lines with round joins when the landmark count is a known scheme's, and the landmarks as
/// red dots. Line
/// widths and text follow the face's size, so small and large faces both read well.
pub fn draw(image: &RgbImage, faces: &[FaceAnnotation]) -> Result<RgbImage> {
    draw_marked(image, faces, Marks::default())
}

/// What a preview draws beyond boxes, contours and points.
#[derive(Debug, Clone, Copy, Default)]
pub struct Marks<'a> {
    /// Written above face `k` instead of its score (e.g. a track id).
    pub labels: Option<&'a [String]>,
    /// Each face's head-pose axes ([`FaceAnnotation::pose`]) from its nose tip, 1.5
    /// outer-eye-corner distances long: x (toward the face's left) red, y (down the face)
    /// green, and the way the face looks (out of it) blue.
    pub pose_axes: bool,
}

/// [`draw`], with the [`Marks`] asked for.
pub fn draw_marked(image: &RgbImage, faces: &[FaceAnnotation], marks: Marks) -> Result<RgbImage> {
    let (w, h) = image.dimensions();
    let with_text = ensure_font().is_ok();
    let mut buf = image.as_raw().clone();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let draw_err = |e: String| Error::InvalidInput(format!("drawing the preview: {e}"));
        let px = |p: [f32; 2]| (p[0].round() as i32, p[1].round() as i32);
        let line_colour = RGBColor(255, 230, 0);
        for (k, face) in faces.iter().enumerate() {
            let b = face.face_box;
            let size = b.width().max(b.height());
            let stroke = ((size / 120.0).round() as u32).clamp(1, 5);
            // A pixel per point on small faces, so the dots do not hide the lines.
            let radius = ((size / 120.0).floor() as i32).clamp(0, 4);
            root.draw(&Rectangle::new(
                [px([b.x0, b.y0]), px([b.x1, b.y1])],
                GREEN.stroke_width(stroke),
            ))
            .map_err(|e| draw_err(e.to_string()))?;
            let points = &face.landmarks;
            let contours = Scheme::with_landmarks(points.len()).map_or(&[][..], Scheme::contours);
            for c in contours {
                let mut line: Vec<(i32, i32)> = (c.first..=c.last).map(|i| px(points[i])).collect();
                if c.closed {
                    line.push(px(points[c.first]));
                }
                // Segment by segment with round joins: a polyline stroked with miter joins
                // shoots a spike far past a corner where the contour turns back on itself
                // (a turned face's mouth corner).
                for segment in line.windows(2) {
                    root.draw(&PathElement::new(
                        segment.to_vec(),
                        line_colour.stroke_width(stroke),
                    ))
                    .map_err(|e| draw_err(e.to_string()))?;
                }
                if stroke > 1 {
                    for &p in &line {
                        let joint = Circle::new(p, stroke.div_ceil(2), line_colour.filled());
                        root.draw(&joint).map_err(|e| draw_err(e.to_string()))?;
                    }
                }
            }
            for &p in points {
                root.draw(&Circle::new(px(p), radius, RED.filled()))
                    .map_err(|e| draw_err(e.to_string()))?;
            }
            if let Some(pose) = face.pose.filter(|_| marks.pose_axes) {
                for (axis, colour) in pose_axes(&pose, points.len()) {
                    let width = colour.stroke_width(stroke.max(2));
                    let line = PathElement::new(axis.map(px).to_vec(), width);
                    root.draw(&line).map_err(|e| draw_err(e.to_string()))?;
                }
            }
            if with_text {
                let height = (size / 7.0).clamp(12.0, 48.0);
                let style = ("sans-serif", height).into_font().color(&GREEN);
                // Above the box, or inside its top edge when the box touches the image's top.
                let y = if b.y0 >= height {
                    b.y0 - height
                } else {
                    b.y0 + 2.0
                };
                let text = marks
                    .labels
                    .and_then(|l| l.get(k).cloned())
                    .unwrap_or_else(|| format!("{:.2}", face.score));
                root.draw(&Text::new(text, px([b.x0 + 2.0, y]), style))
                    .map_err(|e| draw_err(e.to_string()))?;
            }
        }
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| Error::InvalidInput("preview buffer has the wrong size".into()))
}

/// The three axes [`Marks::pose_axes`] draws, as image segments with their colours: from the
/// mean face's nose tip where the scheme has a mean face, else from its origin.
fn pose_axes(pose: &HeadPose, points: usize) -> [([Point; 2], RGBColor); 3] {
    let nose = Scheme::with_landmarks(points)
        .and_then(MeanShape::for_scheme)
        .map_or([0.0; 3], MeanShape::nose_tip);
    let tip = |d: [f32; 3]| pose.project(std::array::from_fn(|k| nose[k] + AXIS_LENGTH * d[k]));
    let from = pose.project(nose);
    [
        ([from, tip([1.0, 0.0, 0.0])], RGBColor(230, 40, 40)),
        ([from, tip([0.0, 1.0, 0.0])], RGBColor(40, 200, 40)),
        ([from, tip([0.0, 0.0, -1.0])], RGBColor(40, 110, 255)),
    ]
}

/// Pose axes' length in mean-face units (outer-eye-corner distances).
const AXIS_LENGTH: f32 = 1.5;

/// JPEG bytes of `image` at quality 90.
pub fn encode_jpeg(image: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(image)
        .map_err(|e| Error::InvalidInput(format!("encoding the preview: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipnet_core::FaceBox;

    #[test]
    fn draws_boxes_and_landmarks_without_touching_the_rest() {
        let image = RgbImage::from_pixel(40, 30, image::Rgb([10, 10, 10]));
        let face = FaceAnnotation {
            face_box: FaceBox::from([5.0, 5.0, 25.0, 25.0]),
            score: 1.0,
            landmarks: vec![[15.0, 15.0]],
            landmark_scores: vec![1.0],
            presence: 1.0,
            five_points: None,
            pose: None,
            chip: None,
        };
        let drawn = draw(&image, &[face]).unwrap();
        assert_eq!(drawn.get_pixel(5, 15).0, [0, 255, 0], "box edge is green");
        assert_eq!(drawn.get_pixel(15, 15).0, [255, 0, 0], "landmark is red");
        assert_eq!(
            drawn.get_pixel(35, 2).0,
            [10, 10, 10],
            "background untouched"
        );
        assert!(encode_jpeg(&drawn).unwrap().starts_with(&[0xFF, 0xD8]));
    }

    #[test]
    fn draws_the_68_point_face_as_lines_and_the_score() {
        let image = RgbImage::from_pixel(400, 400, image::Rgb([10, 10, 10]));
        // Points spread over a circle; only the contours between them can light (200, 300).
        let mut landmarks: Vec<[f32; 2]> = (0..68)
            .map(|i| {
                let a = i as f32 / 68.0 * std::f32::consts::TAU;
                [200.0 + 150.0 * a.cos(), 200.0 + 150.0 * a.sin()]
            })
            .collect();
        // Eye 36..=41 is closed: 41 -> 36 crosses (200, 300) when they sit either side of it.
        landmarks[36] = [150.0, 300.0];
        landmarks[41] = [250.0, 300.0];
        let face = FaceAnnotation {
            face_box: FaceBox::from([50.0, 100.0, 350.0, 350.0]),
            score: 0.87,
            landmarks,
            landmark_scores: vec![1.0; 68],
            presence: 1.0,
            five_points: None,
            pose: None,
            chip: None,
        };
        let drawn = draw(&image, &[face]).unwrap();
        assert_eq!(
            drawn.get_pixel(200, 300).0,
            [255, 230, 0],
            "the eye is closed"
        );
        if ensure_font().is_ok() {
            // The score sits above the box: some green text pixels there.
            let green = (52..120)
                .flat_map(|x| (60..100).map(move |y| (x, y)))
                .filter(|&(x, y)| {
                    drawn.get_pixel(x, y).0[1] > 150 && drawn.get_pixel(x, y).0[0] < 100
                })
                .count();
            assert!(green > 20, "{green} green pixels above the box");
        }
    }

    #[test]
    fn a_contour_that_turns_back_lights_nothing_far_from_it() {
        let image = RgbImage::from_pixel(800, 600, image::Rgb([10, 10, 10]));
        // The outer lip (48..=59, closed) comes down to (490, 300), runs right to the mouth
        // corner (500, 300) and turns straight back to (490, 301) before heading down: a miter
        // join there reaches about d / sin(3 degrees) back along the corner's bisector, far
        // from every drawn segment.
        let mut landmarks = vec![[100.0f32, 500.0]; 68];
        let lip = [
            [400.0, 100.0],
            [450.0, 150.0],
            [490.0, 200.0],
            [490.0, 300.0],
            [500.0, 300.0],
            [490.0, 301.0],
            [490.0, 420.0],
            [450.0, 450.0],
            [420.0, 450.0],
            [400.0, 400.0],
            [380.0, 300.0],
            [390.0, 150.0],
        ];
        landmarks[48..=59].copy_from_slice(&lip);
        let face = FaceAnnotation {
            face_box: FaceBox::from([0.0, 0.0, 600.0, 600.0]),
            score: 0.9,
            landmarks: landmarks.clone(),
            landmark_scores: vec![1.0; 68],
            presence: 1.0,
            five_points: None,
            pose: None,
            chip: None,
        };
        let stroke = 5.0; // 600 px box / 120
        let drawn = draw(&image, &[face]).unwrap();
        let mut segments = Vec::new();
        for c in Scheme::W300_68.contours() {
            let mut line: Vec<[f32; 2]> = (c.first..=c.last).map(|i| landmarks[i]).collect();
            if c.closed {
                line.push(landmarks[c.first]);
            }
            segments.extend(line.windows(2).map(|w| (w[0], w[1])));
        }
        let distance = |p: [f32; 2], (a, b): ([f32; 2], [f32; 2])| {
            let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
            let len = (dx * dx + dy * dy).max(1e-9);
            let t = (((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len).clamp(0.0, 1.0);
            (p[0] - a[0] - t * dx).hypot(p[1] - a[1] - t * dy)
        };
        let far: Vec<(u32, u32)> = (0..800)
            .flat_map(|x| (0..600).map(move |y| (x, y)))
            .filter(|&(x, y)| drawn.get_pixel(x, y).0 == [255, 230, 0])
            .filter(|&(x, y)| {
                let p = [x as f32, y as f32];
                segments.iter().all(|&s| distance(p, s) > stroke + 2.0)
            })
            .collect();
        assert!(
            far.is_empty(),
            "{} contour pixels far from the contour, e.g. {:?}",
            far.len(),
            far.first()
        );
        assert_eq!(
            drawn.get_pixel(490, 250).0,
            [255, 230, 0],
            "the lip is drawn"
        );
    }
}
