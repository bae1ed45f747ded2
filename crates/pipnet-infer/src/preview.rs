//! Preview images: the photo with each face's box and landmarks drawn, as a JPEG a person can
//! open to check a run at a glance.

use image::RgbImage;
use pipnet_core::formats::FaceAnnotation;
use plotters::prelude::*;

use crate::error::{Error, Result};

/// Draws boxes (green) and landmarks (red dots) on a copy of `image`; sizes follow the face.
pub fn draw(image: &RgbImage, faces: &[FaceAnnotation]) -> Result<RgbImage> {
    let (w, h) = image.dimensions();
    let mut buf = image.as_raw().clone();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let draw_err = |e: String| Error::InvalidInput(format!("drawing the preview: {e}"));
        let px = |v: f32| v.round() as i32;
        for face in faces {
            let b = face.face_box;
            let size = b.width().max(b.height());
            let stroke = ((size / 100.0).round() as u32).clamp(1, 6);
            let radius = ((size / 80.0).round() as i32).clamp(1, 5);
            root.draw(&Rectangle::new(
                [(px(b.x0), px(b.y0)), (px(b.x1), px(b.y1))],
                GREEN.stroke_width(stroke),
            ))
            .map_err(|e| draw_err(e.to_string()))?;
            for p in &face.landmarks {
                root.draw(&Circle::new((px(p[0]), px(p[1])), radius, RED.filled()))
                    .map_err(|e| draw_err(e.to_string()))?;
            }
        }
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| Error::InvalidInput("preview buffer has the wrong size".into()))
}

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
}
