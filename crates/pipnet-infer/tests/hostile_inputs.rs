//! Property tests: every decoder of outside input ends in a result or a clear error, never a
//! panic. Image files are real photos re-encoded in each format, then cut short and corrupted
//! at random; caller buffers get random sizes, strides and formats; boxes files random JSON.
//! A case that ever fails is kept by proptest in `proptest-regressions/` and replayed first.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::OnceLock;

use image::{ImageFormat, RgbImage};
use pipnet_infer::ErrorKind;
use pipnet_infer::folder::FaceSource;
use pipnet_infer::image_io::{DEFAULT_MAX_PIXELS, PixelFormat, decode_rgb, rgb_from_buffer};
use proptest::prelude::*;

/// A real photo, shrunk so that each decode is quick, encoded as JPEG, PNG, WebP and GIF.
fn encoded_photos() -> &'static [(ImageFormat, Vec<u8>)] {
    static FILES: OnceLock<Vec<(ImageFormat, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let photo = image::open(common::sample_photos().join("2008_002470.jpg"))
            .expect("sample photo")
            .resize(96, 64, image::imageops::FilterType::Triangle)
            .to_rgb8();
        [
            ImageFormat::Jpeg,
            ImageFormat::Png,
            ImageFormat::WebP,
            ImageFormat::Gif,
        ]
        .into_iter()
        .map(|format| {
            let mut bytes = std::io::Cursor::new(Vec::new());
            let rgba = image::DynamicImage::ImageRgb8(photo.clone()).to_rgba8();
            // The GIF and WebP encoders take RGBA; the others RGB.
            match format {
                ImageFormat::Gif | ImageFormat::WebP => rgba.write_to(&mut bytes, format),
                _ => photo.write_to(&mut bytes, format),
            }
            .unwrap_or_else(|e| panic!("encoding {format:?}: {e}"));
            (format, bytes.into_inner())
        })
        .collect()
    })
}

fn decode(bytes: &[u8]) -> pipnet_infer::Result<RgbImage> {
    decode_rgb(bytes, Path::new("fuzzed"), DEFAULT_MAX_PIXELS)
}

#[test]
fn the_unharmed_files_decode() {
    for (format, bytes) in encoded_photos() {
        let image = decode(bytes).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(image.dimensions(), (96, 64), "{format:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Cut short and with bytes overwritten: decoded (the damage may sit in pixel data) or an
    /// image error that names the file, never a panic.
    #[test]
    fn truncated_and_corrupted_files_fail_cleanly(
        which in 0usize..4,
        keep in 0.0f64..=1.0,
        flips in prop::collection::vec((0.0f64..1.0, any::<u8>()), 0..8),
    ) {
        let (_, original) = &encoded_photos()[which];
        let mut bytes = original[..(original.len() as f64 * keep) as usize].to_vec();
        for (at, value) in flips {
            if !bytes.is_empty() {
                let i = ((bytes.len() as f64 * at) as usize).min(bytes.len() - 1);
                bytes[i] = value;
            }
        }
        match decode(&bytes) {
            Ok(image) => prop_assert!(image.width() > 0 && image.height() > 0),
            Err(e) => {
                prop_assert!(matches!(e.kind(), ErrorKind::Image | ErrorKind::Io), "{e}");
                prop_assert!(e.to_string().contains("fuzzed"), "{e}");
            }
        }
    }

    /// Arbitrary bytes are refused as images (or, by chance, read as one).
    #[test]
    fn random_bytes_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    /// The C ABI's buffer copy: every combination of sizes, stride, format and buffer length
    /// is either copied or refused; a refusal is an invalid-input error.
    #[test]
    fn caller_buffers_of_any_geometry_are_checked(
        width in prop_oneof![0usize..40, Just(usize::MAX), Just(1usize << 32)],
        height in prop_oneof![0usize..40, Just(usize::MAX)],
        stride in prop_oneof![0usize..200, Just(usize::MAX)],
        format in 0usize..5,
        len in 0usize..8000,
    ) {
        let format = [
            PixelFormat::Rgb,
            PixelFormat::Bgr,
            PixelFormat::Rgba,
            PixelFormat::Bgra,
            PixelFormat::Gray,
        ][format];
        let pixels = vec![7u8; len];
        match rgb_from_buffer(&pixels, width, height, stride, format, DEFAULT_MAX_PIXELS) {
            Ok(image) => {
                prop_assert_eq!(image.dimensions(), (width as u32, height as u32));
                prop_assert!(stride * (height - 1) + width * format.channels() <= len);
            }
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::InvalidInput),
        }
    }

    /// Boxes files: random JSON-like text is read or refused with a message naming the file.
    #[test]
    fn random_boxes_files_are_read_or_refused(
        text in prop_oneof![
            ".{0,64}",
            r#"\{"[a-z./]{0,8}": \[(\[(-?[0-9]{1,40}(\.[0-9]+)?(e[0-9]{1,3})?, ?){0,5}\], ?){0,3}\]\}"#,
        ]
    ) {
        if let Err(e) = FaceSource::boxes_from_json(&text, Path::new("boxes.json")) {
            prop_assert!(e.to_string().contains("boxes.json"), "{e}");
        }
    }
}
