//! Reading images the way a user expects to see them: EXIF orientation applied, any colour
//! type (gray, RGBA, 16-bit, palette) converted to 8-bit RGB, and a pixel-count guard checked
//! before the pixels are decoded.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Default `--max-pixels`: 100 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// Decodes `path` into upright 8-bit RGB. Fails (naming the file) on unreadable, corrupt,
/// truncated or non-image files and on images with more than `max_pixels` pixels.
pub fn load_rgb(path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    decode_rgb(&bytes, path, max_pixels)
}

/// [`load_rgb`] on a file's bytes already in memory; `path` names it in errors.
pub fn decode_rgb(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let image_err = |message: String| Error::Image {
        path: path.to_path_buf(),
        message,
    };
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(Error::io(path))?;
    match reader.format() {
        None => return Err(image_err("not a recognised image format".into())),
        // The JPEG decoder fills a file cut short with grey instead of failing.
        Some(image::ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            return Err(image_err(
                "truncated JPEG: the file ends before its end-of-image marker".into(),
            ));
        }
        Some(_) => {}
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| image_err(format!("cannot decode: {e}")))?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(image_err(format!(
            "{w}x{h} = {pixels} pixels is over the limit of {max_pixels} (raise --max-pixels)"
        )));
    }
    // A broken EXIF block should not cost the image: treat it as upright.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| image_err(format!("cannot decode: {e}")))?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// True when a JPEG's marker segments run through to its end-of-image marker. Walks the
/// segments from the start (skipping each by its length, so thumbnails inside APP1 are not
/// mistaken for the image) and, after each start-of-scan, the entropy-coded data, where an
/// 0xFF byte is always followed by 0x00 or a restart marker until the next real marker.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut at = 2;
    loop {
        // Fill bytes (0xFF runs) may precede a marker.
        while bytes.get(at) == Some(&0xFF) && bytes.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(at), bytes.get(at + 1)) else {
            return false;
        };
        at += 2;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = bytes
            .get(at..at + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return false;
        };
        at += len;
        if marker == 0xDA {
            // Entropy-coded data runs to the first 0xFF not followed by 0x00 or RSTn.
            loop {
                match (bytes.get(at), bytes.get(at + 1)) {
                    (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => at += 2,
                    (Some(0xFF), Some(_)) => break,
                    (Some(_), _) => at += 1,
                    (None, _) => return false,
                }
            }
        }
    }
}

/// Layout of one pixel in a caller's 8-bit buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    Rgb,
    Bgr,
    Rgba,
    Bgra,
    Gray,
}

impl PixelFormat {
    pub fn channels(self) -> usize {
        match self {
            PixelFormat::Rgb | PixelFormat::Bgr => 3,
            PixelFormat::Rgba | PixelFormat::Bgra => 4,
            PixelFormat::Gray => 1,
        }
    }
}

/// Copies a caller's pixel buffer (rows `stride` bytes apart) into an RGB image, checking every
/// size first: zero sizes, a stride shorter than a row, sizes that overflow, or a buffer shorter
/// than `stride * (height - 1) + row` are errors, never out-of-bounds reads.
pub fn rgb_from_buffer(
    pixels: &[u8],
    width: usize,
    height: usize,
    stride: usize,
    format: PixelFormat,
    max_pixels: u64,
) -> Result<RgbImage> {
    let invalid = |m: String| Error::InvalidInput(m);
    if width == 0 || height == 0 {
        return Err(invalid(format!("image size {width}x{height} is empty")));
    }
    let (w, h) = match (u32::try_from(width), u32::try_from(height)) {
        (Ok(w), Ok(h)) if (w as u64) * (h as u64) <= max_pixels => (w, h),
        _ => {
            return Err(invalid(format!(
                "image size {width}x{height} is over the limit of {max_pixels} pixels"
            )));
        }
    };
    let row = width
        .checked_mul(format.channels())
        .ok_or_else(|| invalid(format!("width {width} overflows")))?;
    if stride < row {
        return Err(invalid(format!(
            "stride {stride} is shorter than a row ({width} pixels x {} bytes = {row})",
            format.channels()
        )));
    }
    let needed = stride
        .checked_mul(height - 1)
        .and_then(|n| n.checked_add(row))
        .ok_or_else(|| invalid(format!("stride {stride} x height {height} overflows")))?;
    if pixels.len() < needed {
        return Err(invalid(format!(
            "buffer has {} bytes, a {width}x{height} image with stride {stride} needs {needed}",
            pixels.len()
        )));
    }
    let mut out = RgbImage::new(w, h);
    for (y, dst) in out.chunks_exact_mut(width * 3).enumerate() {
        let src = &pixels[y * stride..][..row];
        for (d, s) in dst
            .chunks_exact_mut(3)
            .zip(src.chunks_exact(format.channels()))
        {
            let rgb = match format {
                PixelFormat::Rgb | PixelFormat::Rgba => [s[0], s[1], s[2]],
                PixelFormat::Bgr | PixelFormat::Bgra => [s[2], s[1], s[0]],
                PixelFormat::Gray => [s[0]; 3],
            };
            d.copy_from_slice(&rgb);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    #[test]
    fn buffers_of_every_format_give_the_same_rgb() {
        // 2x2 image, rows padded to 10 bytes.
        let rgb = [[10u8, 20, 30], [40, 50, 60], [70, 80, 90], [100, 110, 120]];
        let pack = |f: PixelFormat| -> Vec<u8> {
            let mut buf = vec![0xEE; 10 + 2 * f.channels()];
            for (i, p) in rgb.iter().enumerate() {
                let at = (i / 2) * 10 + (i % 2) * f.channels();
                let px: Vec<u8> = match f {
                    PixelFormat::Rgb => p.to_vec(),
                    PixelFormat::Bgr => vec![p[2], p[1], p[0]],
                    PixelFormat::Rgba => vec![p[0], p[1], p[2], 255],
                    PixelFormat::Bgra => vec![p[2], p[1], p[0], 255],
                    PixelFormat::Gray => vec![p[0]],
                };
                buf[at..at + px.len()].copy_from_slice(&px);
            }
            buf
        };
        for f in [
            PixelFormat::Rgb,
            PixelFormat::Bgr,
            PixelFormat::Rgba,
            PixelFormat::Bgra,
        ] {
            let image = rgb_from_buffer(&pack(f), 2, 2, 10, f, 100).unwrap();
            assert_eq!(image.get_pixel(1, 1).0, [100, 110, 120], "{f:?}");
            assert_eq!(image.get_pixel(0, 1).0, [70, 80, 90], "{f:?}");
        }
        let gray = rgb_from_buffer(&pack(PixelFormat::Gray), 2, 2, 10, PixelFormat::Gray, 100);
        assert_eq!(gray.unwrap().get_pixel(1, 0).0, [40, 40, 40]);
    }

    #[test]
    fn truncated_jpegs_are_told_from_whole_ones() {
        let image = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let mut jpeg = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90);
        // An EXIF block first, so a marker-looking byte pair inside a segment is skipped.
        encoder
            .set_exif_metadata(vec![0x4D, 0x4D, 0x00, 0x2A, 0xFF, 0xD9, 0xFF, 0xDA])
            .unwrap();
        ImageEncoder::write_image(
            encoder,
            image.as_raw(),
            64,
            48,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
        assert!(jpeg_is_complete(&jpeg));
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"trailing bytes after the image");
        assert!(jpeg_is_complete(&trailing));
        for cut in [jpeg.len() - 2, jpeg.len() * 2 / 3, jpeg.len() / 3, 40, 3] {
            assert!(
                !jpeg_is_complete(&jpeg[..cut]),
                "cut at {cut} of {}",
                jpeg.len()
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.jpg");
        std::fs::write(&path, &jpeg[..jpeg.len() * 2 / 3]).unwrap();
        let err = load_rgb(&path, DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(err.to_string().contains("truncated JPEG"), "{err}");
        std::fs::write(&path, &jpeg).unwrap();
        assert_eq!(
            load_rgb(&path, DEFAULT_MAX_PIXELS).unwrap().dimensions(),
            (64, 48)
        );
    }

    #[test]
    fn bad_sizes_are_errors() {
        let buf = vec![0u8; 64];
        let f = PixelFormat::Rgb;
        for (w, h, stride, needle) in [
            (0, 4, 12, "empty"),
            (4, 4, 11, "shorter than a row"),
            (4, 6, 12, "needs 72"),
            (usize::MAX, 1, usize::MAX, "over the limit"),
            (4, usize::MAX / 2, 12, "over the limit"),
        ] {
            let err = rgb_from_buffer(&buf, w, h, stride, f, 1 << 20).unwrap_err();
            assert!(err.to_string().contains(needle), "{w}x{h}/{stride}: {err}");
        }
    }
}
