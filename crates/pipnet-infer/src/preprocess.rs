//! Face crop -> model input: bilinear sampling through the crop's similarity transform, written
//! straight into the `[3, S, S]` planes of the input tensor with the model's normalisation.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use pipnet_core::{FaceChip, FaceCrop};

use crate::error::{Error, Result};

/// Per-channel normalisation folded into one multiply-add: `v * scale[c] + shift[c]` equals
/// `(v / 255 - mean[c]) / std[c]`.
#[derive(Debug, Clone, Copy)]
pub struct Normalization {
    scale: [f32; 3],
    shift: [f32; 3],
}

impl Normalization {
    pub fn new(mean: [f32; 3], std: [f32; 3]) -> Self {
        Self {
            scale: [0, 1, 2].map(|c| 1.0 / (255.0 * std[c])),
            shift: [0, 1, 2].map(|c| -mean[c] / std[c]),
        }
    }
}

/// Samples `crop` of `image` into `out` (`3 * size * size` floats, CHW). Pixels outside the
/// image read as black, which is what training sees at image borders too.
pub fn write_crop(
    image: &RgbImage,
    crop: &FaceCrop,
    size: usize,
    norm: &Normalization,
    out: &mut [f32],
) {
    if crop.angle == 0.0 {
        write_upright_crop(image, crop, size, norm, out);
    } else {
        write_rotated_crop(image, crop, size, norm, out);
    }
}

/// One axis of bilinear sampling: the two source indices (clamped into the image) and their
/// weights, zero for an index outside the image so it reads as black.
#[derive(Debug, Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

/// Taps for `count` output pixels whose centres fall at `start + k * step` along an axis of
/// `len` source pixels.
fn taps(len: u32, start: f32, step: f32, count: usize) -> Vec<Tap> {
    let last = i64::from(len) - 1;
    (0..count)
        .map(|k| {
            let p = start + k as f32 * step;
            let p0 = p.floor();
            let f = p - p0;
            let i0 = p0 as i64;
            let inside = |i: i64| if (0..=last).contains(&i) { 1.0 } else { 0.0 };
            Tap {
                i0: i0.clamp(0, last.max(0)) as usize,
                i1: (i0 + 1).clamp(0, last.max(0)) as usize,
                w0: (1.0 - f) * inside(i0),
                w1: f * inside(i0 + 1),
            }
        })
        .collect()
}

/// An axis-aligned crop is separable: every row shares the column taps and every column the
/// row taps, so each output pixel costs a few multiply-adds and no bounds tests.
fn write_upright_crop(
    image: &RgbImage,
    crop: &FaceCrop,
    size: usize,
    norm: &Normalization,
    out: &mut [f32],
) {
    debug_assert_eq!(out.len(), 3 * size * size);
    let plane = size * size;
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 {
        // Nothing to sample: all black.
        for (c, channel) in out.chunks_exact_mut(plane).enumerate() {
            channel.fill(norm.shift[c]);
        }
        return;
    }
    let raw = image.as_raw();
    let row_len = w as usize * 3;
    // Crop pixel u has its centre at (u + 0.5) / S; the crop maps that to
    // centre + side * ((u + 0.5) / S - 0.5) in the image.
    let step = crop.side / size as f32;
    let start = |c: f32| c + step * 0.5 - crop.side * 0.5;
    let xs = taps(w, start(crop.center[0]), step, size);
    let ys = taps(h, start(crop.center[1]), step, size);
    let (r_out, rest) = out.split_at_mut(plane);
    let (g_out, b_out) = rest.split_at_mut(plane);
    for (v, ty) in ys.iter().enumerate() {
        let row0 = &raw[ty.i0 * row_len..][..row_len];
        let row1 = &raw[ty.i1 * row_len..][..row_len];
        let at = v * size;
        let rows = r_out[at..at + size]
            .iter_mut()
            .zip(&mut g_out[at..at + size])
            .zip(&mut b_out[at..at + size]);
        for (((r, g), b), tx) in rows.zip(&xs) {
            let (a0, a1) = (tx.i0 * 3, tx.i1 * 3);
            let sample = |c: usize| {
                let top = tx.w0 * f32::from(row0[a0 + c]) + tx.w1 * f32::from(row0[a1 + c]);
                let bottom = tx.w0 * f32::from(row1[a0 + c]) + tx.w1 * f32::from(row1[a1 + c]);
                (ty.w0 * top + ty.w1 * bottom) * norm.scale[c] + norm.shift[c]
            };
            *r = sample(0);
            *g = sample(1);
            *b = sample(2);
        }
    }
}

/// Averages `image` down to `width` x `height` with a triangle filter as wide as the step, so
/// nothing aliases (the `image` crate's `Triangle` resize, through `fast_image_resize`'s SIMD
/// convolution: the `image` crate's took longer than the detector run on the picture it made).
/// `resizer` keeps its buffers between calls.
pub fn shrink(
    resizer: &mut Resizer,
    image: &RgbImage,
    width: u32,
    height: u32,
) -> Result<RgbImage> {
    let failed = |e: String| {
        Error::InvalidInput(format!(
            "shrinking a {}x{} image to {width}x{height}: {e}",
            image.width(),
            image.height()
        ))
    };
    let source = ImageRef::new(
        image.width(),
        image.height(),
        image.as_raw(),
        PixelType::U8x3,
    )
    .map_err(|e| failed(e.to_string()))?;
    let mut shrunk = Image::new(width, height, PixelType::U8x3);
    let triangle = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    resizer
        .resize(&source, &mut shrunk, &triangle)
        .map_err(|e| failed(e.to_string()))?;
    RgbImage::from_raw(width, height, shrunk.into_vec())
        .ok_or_else(|| failed("wrong buffer size".into()))
}

/// Cuts an aligned face chip ([`pipnet_core::face_chip`]) out of `image` as 8-bit RGB.
pub fn cut_chip(image: &RgbImage, chip: &FaceChip) -> RgbImage {
    cut_crop(image, &chip.crop(), chip.size)
}

/// Samples `crop` of `image` into a `size` x `size` 8-bit RGB image: the model input's
/// bilinear sampler, so pixels outside the image are black here too.
pub fn cut_crop(image: &RgbImage, crop: &FaceCrop, size: u32) -> RgbImage {
    let plane = size as usize * size as usize;
    let mut planes = vec![0.0f32; 3 * plane];
    // mean 0, std 1/255: the sampled values stay in 0..255.
    let identity = Normalization::new([0.0; 3], [1.0 / 255.0; 3]);
    write_crop(image, crop, size as usize, &identity, &mut planes);
    let pixels = (0..plane)
        .flat_map(|i| [0, 1, 2].map(|c| planes[c * plane + i].round().clamp(0.0, 255.0) as u8))
        .collect();
    // `size * size * 3` bytes by construction.
    RgbImage::from_raw(size, size, pixels).unwrap_or_default()
}

/// Mirrors `[N, 3, S, S]` crops left to right in place (reverses every row), for test-time
/// flip averaging.
pub fn mirror_crops(input: &mut [f32], size: usize) {
    for row in input.chunks_exact_mut(size) {
        row.reverse();
    }
}

/// The general case: step through the image along each output row. Along a row the sample
/// point moves in a straight line, so the pixels whose four neighbours all lie inside the image
/// form one run ([`inside_run`]), sampled without bounds tests; only the pixels before and
/// after it take the border path, where a missing neighbour reads black.
fn write_rotated_crop(
    image: &RgbImage,
    crop: &FaceCrop,
    size: usize,
    norm: &Normalization,
    out: &mut [f32],
) {
    debug_assert_eq!(out.len(), 3 * size * size);
    let plane = size * size;
    let (w, h) = (image.width() as i64, image.height() as i64);
    let raw = image.as_raw();
    let t = crop.to_image_transform();
    // Crop pixel (u, v) has centre ((u + 0.5) / S, (v + 0.5) / S) in crop-normalised units; a
    // similarity moves linearly along a row: row start + u x the image-space delta of one
    // pixel (computed, not accumulated, so f32 rounding does not drift across wide crops).
    let m = t.to_homogeneous();
    let inv = 1.0 / size as f32;
    let (dxu, dyu) = (m[(0, 0)] * inv, m[(1, 0)] * inv);
    let row_len = w as usize * 3;
    let (r_out, rest) = out.split_at_mut(plane);
    let (g_out, b_out) = rest.split_at_mut(plane);
    let mut write = |at: usize, rgb: [f32; 3]| {
        r_out[at] = rgb[0] * norm.scale[0] + norm.shift[0];
        g_out[at] = rgb[1] * norm.scale[1] + norm.shift[1];
        b_out[at] = rgb[2] * norm.scale[2] + norm.shift[2];
    };
    for v in 0..size {
        let cv = (v as f32 + 0.5) * inv;
        let x_row = m[(0, 0)] * 0.5 * inv + m[(0, 1)] * cv + m[(0, 2)];
        let y_row = m[(1, 0)] * 0.5 * inv + m[(1, 1)] * cv + m[(1, 2)];
        let at_u = |u: usize| (x_row + u as f32 * dxu, y_row + u as f32 * dyu);
        let inside = inside_run(size, |u| {
            let (x, y) = at_u(u);
            let ((xi, _), (yi, _)) = (floor_split(x), floor_split(y));
            xi >= 0 && yi >= 0 && xi + 1 < w && yi + 1 < h
        });
        for u in (0..inside.start).chain(inside.end..size) {
            let (x, y) = at_u(u);
            write(v * size + u, sample_border(raw, w, h, x, y));
        }
        for u in inside {
            let (x, y) = at_u(u);
            // Inside, x and y are not negative: truncation is the floor.
            let (xi, yi) = (x as usize, y as usize);
            let i00 = yi * row_len + xi * 3;
            let rows = [&raw[i00..i00 + 6], &raw[i00 + row_len..i00 + row_len + 6]];
            let rgb = bilinear(x - xi as f32, y - yi as f32, |dx, dy, c| {
                f32::from(rows[dy][dx * 3 + c])
            });
            write(v * size + u, rgb);
        }
    }
}

/// The run of `0..len` where `inside` holds, given that it holds on one run at most (a line
/// crosses a rectangle once): a scan finds where it starts, a binary search where it ends.
fn inside_run(len: usize, inside: impl Fn(usize) -> bool) -> std::ops::Range<usize> {
    let Some(start) = (0..len).find(|&u| inside(u)) else {
        return 0..0;
    };
    // Binary search for the end: `inside` is true at `start` and false from the end on.
    let (mut lo, mut hi) = (start, len);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if inside(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    start..hi
}

/// Bilinear sample at image point `(x, y)` where some of the four neighbours may lie outside
/// the image: those read as black.
fn sample_border(raw: &[u8], w: i64, h: i64, x: f32, y: f32) -> [f32; 3] {
    let ((xi, fx), (yi, fy)) = (floor_split(x), floor_split(y));
    if !(xi >= -1 && yi >= -1 && xi < w && yi < h) {
        return [0.0; 3];
    }
    bilinear(fx, fy, |dx, dy, c| {
        let (px, py) = (xi + dx as i64, yi + dy as i64);
        if px >= 0 && py >= 0 && px < w && py < h {
            f32::from(raw[((py * w + px) * 3) as usize + c])
        } else {
            0.0
        }
    })
}

/// The bilinear mix, per channel, of the four neighbours `at(dx, dy, channel)` (each offset
/// is 0 or 1) of a point `fx`, `fy` of the way past the first: one formula for the sampler's
/// inside run and its border.
#[inline(always)]
fn bilinear(fx: f32, fy: f32, at: impl Fn(usize, usize, usize) -> f32) -> [f32; 3] {
    let (gx, gy) = (1.0 - fx, 1.0 - fy);
    let weights = [gx * gy, fx * gy, gx * fy, fx * fy];
    let mix = |c: usize| {
        weights[0] * at(0, 0, c)
            + weights[1] * at(1, 0, c)
            + weights[2] * at(0, 1, c)
            + weights[3] * at(1, 1, c)
    };
    [mix(0), mix(1), mix(2)]
}

/// `(floor(x), x - floor(x))` without a call into libm: baseline x86-64 has no rounding
/// instruction, so `f32::floor` is a function call per sample there. Saturates far outside any
/// image, where the caller reads black anyway.
fn floor_split(x: f32) -> (i64, f32) {
    let t = x as i64;
    let i = if t as f32 > x { t - 1 } else { t };
    (i, x - i as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// A `w` x `h` image whose channels vary along x, along y and with both.
    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 7 % 256) as u8,
                (y * 11 % 256) as u8,
                ((x * y) % 256) as u8,
            ])
        })
    }

    fn identity_norm() -> Normalization {
        // scale 1/255, shift 0: output = v / 255.
        Normalization::new([0.0; 3], [1.0; 3])
    }

    #[test]
    fn test_normalization_matches_the_contract_formula() {
        let n = Normalization::new([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        for c in 0..3 {
            let v = 200.0f32;
            let mean = [0.485, 0.456, 0.406][c];
            let std = [0.229, 0.224, 0.225][c];
            assert!((v * n.scale[c] + n.shift[c] - (v / 255.0 - mean) / std).abs() < 1e-5);
        }
    }

    #[test]
    fn test_whole_image_crop_at_native_size_copies_pixels() {
        let image = RgbImage::from_fn(8, 8, |x, y| Rgb([(x * 30) as u8, (y * 30) as u8, 7]));
        let crop = FaceCrop::whole_image(8, 8);
        let mut out = vec![0.0; 3 * 64];
        write_crop(&image, &crop, 8, &identity_norm(), &mut out);
        for y in 0..8 {
            for x in 0..8 {
                let at = y * 8 + x;
                assert!(
                    (out[at] * 255.0 - (x * 30) as f32).abs() < 1e-3,
                    "R at {x},{y}"
                );
                assert!(
                    (out[64 + at] * 255.0 - (y * 30) as f32).abs() < 1e-3,
                    "G at {x},{y}"
                );
                assert!((out[128 + at] * 255.0 - 7.0).abs() < 1e-3);
            }
        }
    }

    #[test]
    fn test_upright_fast_path_matches_the_general_sampler() {
        let image = pattern(37, 23);
        let norm = Normalization::new([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        // Inside, over every edge, larger than the image, and tiny.
        for crop in [
            FaceCrop::new([18.0, 11.0], 16.0, 0.0),
            FaceCrop::new([2.0, 20.0], 30.0, 0.0),
            FaceCrop::new([18.0, 11.0], 80.0, 0.0),
            FaceCrop::new([36.4, 0.3], 3.0, 0.0),
        ] {
            let (mut fast, mut general) = (vec![0.0; 3 * 24 * 24], vec![0.0; 3 * 24 * 24]);
            write_upright_crop(&image, &crop, 24, &norm, &mut fast);
            write_rotated_crop(&image, &crop, 24, &norm, &mut general);
            for (i, (a, b)) in fast.iter().zip(&general).enumerate() {
                assert!((a - b).abs() < 1e-3, "{crop:?} value {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn test_outside_the_image_is_black_and_rectangles_are_padded() {
        let image = RgbImage::from_pixel(8, 4, Rgb([255, 255, 255]));
        let crop = FaceCrop::whole_image(8, 4);
        let mut out = vec![0.0; 3 * 64];
        write_crop(&image, &crop, 8, &identity_norm(), &mut out);
        // Rows 0-1 and 6-7 of the square crop lie outside the 8x4 image.
        assert_eq!(out[0], 0.0);
        assert_eq!(out[7 * 8 + 3], 0.0);
        assert!((out[3 * 8 + 3] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn test_downscale_samples_between_pixels() {
        // 2x2 crop of a 4x4 image whose columns alternate 0/100: each output pixel centre sits
        // between two columns, so it reads their mean.
        let image = RgbImage::from_fn(4, 4, |x, _| Rgb([if x % 2 == 0 { 0 } else { 100 }; 3]));
        let crop = FaceCrop::whole_image(4, 4);
        let mut out = vec![0.0; 3 * 4];
        write_crop(&image, &crop, 2, &identity_norm(), &mut out);
        for v in &out {
            assert!((v * 255.0 - 50.0).abs() < 1e-3, "{v}");
        }
    }

    proptest::proptest! {
        #[test]
        fn floor_split_is_floor_and_fraction(x in -300.0f32..300.0) {
            for x in [x, x.round(), x.trunc() + 0.5] {
                let (i, f) = floor_split(x);
                proptest::prop_assert_eq!(i as f32, x.floor());
                proptest::prop_assert_eq!(f, x - x.floor());
            }
        }

        /// The turned sampler's run without bounds tests reads what the border path reads at
        /// every pixel: crops inside the image, over its edges and beyond, at any angle.
        #[test]
        fn turned_crops_read_what_the_border_path_reads(
            cx in -20.0f32..60.0,
            cy in -20.0f32..45.0,
            side in 2.0f32..90.0,
            angle in -3.2f32..3.2,
        ) {
            let image = pattern(37, 23);
            let crop = FaceCrop::new([cx, cy], side, angle);
            let size = 16;
            let mut out = vec![0.0; 3 * size * size];
            write_rotated_crop(&image, &crop, size, &identity_norm(), &mut out);
            let (w, h) = (37, 23);
            for v in 0..size {
                for u in 0..size {
                    let s = size as f32;
                    let [x, y] = crop.to_image([(u as f32 + 0.5) / s, (v as f32 + 0.5) / s]);
                    let want = sample_border(image.as_raw(), w, h, x, y);
                    for (c, want) in want.iter().enumerate() {
                        let got = out[c * size * size + v * size + u] * 255.0;
                        proptest::prop_assert!(
                            (got - want).abs() < 0.05,
                            "pixel ({u}, {v}) channel {c}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn shrink_averages_like_the_image_crates_triangle_filter() {
        let image = pattern(301, 203);
        let mut resizer = Resizer::new();
        for (w, h) in [(256, 173), (150, 101), (97, 31)] {
            let ours = shrink(&mut resizer, &image, w, h).unwrap();
            let reference =
                image::imageops::resize(&image, w, h, image::imageops::FilterType::Triangle);
            let worst = ours
                .as_raw()
                .iter()
                .zip(reference.as_raw())
                .map(|(&a, &b)| a.abs_diff(b))
                .max();
            assert!(worst <= Some(2), "{w}x{h}: off by {worst:?}");
        }
        // Single-pixel stripes of 0 and 200 average out to about 100 (the triangle leaves a
        // ripple of a few levels at this 10:3 step) instead of aliasing into bands.
        let stripes = RgbImage::from_fn(200, 20, |x, _| Rgb([if x % 2 == 0 { 0 } else { 200 }; 3]));
        let grey = shrink(&mut resizer, &stripes, 60, 6).unwrap();
        assert!(
            grey.pixels().all(|p| p.0[0].abs_diff(100) <= 8),
            "{:?}",
            grey.get_pixel(5, 3)
        );
    }

    #[test]
    fn a_chip_shows_the_image_pixels_it_maps_to() {
        let image = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, 7]));
        // Chip pixel (u, v) is image pixel (u + 10, v + 20).
        let to_chip = pipnet_core::Similarity([[1.0, 0.0, -10.0], [0.0, 1.0, -20.0]]);
        let chip = FaceChip {
            size: 16,
            to_chip,
            to_image: to_chip.inverse(),
            residual: 0.0,
        };
        let cut = cut_chip(&image, &chip);
        assert_eq!(cut.dimensions(), (16, 16));
        for (u, v) in [(0, 0), (15, 3), (7, 15)] {
            assert_eq!(
                cut.get_pixel(u, v),
                image.get_pixel(u + 10, v + 20),
                "({u}, {v})"
            );
        }
        // Past the image's bottom edge: black.
        let below = FaceChip {
            to_chip: pipnet_core::Similarity([[1.0, 0.0, 0.0], [0.0, 1.0, -40.0]]),
            to_image: pipnet_core::Similarity([[1.0, 0.0, 0.0], [0.0, 1.0, 40.0]]),
            ..chip
        };
        assert_eq!(cut_chip(&image, &below).get_pixel(3, 15).0, [0, 0, 0]);
    }
}
