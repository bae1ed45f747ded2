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
    let image_err = |message: String| Error::Image {
        path: path.to_path_buf(),
        message,
    };
    let reader = ImageReader::open(path)
        .map_err(Error::io(path))?
        .with_guessed_format()
        .map_err(Error::io(path))?;
    if reader.format().is_none() {
        return Err(image_err("not a recognised image format".into()));
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
