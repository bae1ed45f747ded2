//! Training samples: a face crop from the landmark box (the runtime's own crop rule and
//! sampler), randomly rotated, scaled, shifted, mirrored, re-lit and occluded, as in the paper.
//! Training from scratch leans on these: there are no pretrained weights to fall back on.

use image::RgbImage;
use pipnet_core::{CropRule, FaceBox, FaceCrop, Point, Scheme, landmark_crop};
use pipnet_infer::preprocess::{Normalization, write_crop};
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

/// Ranges of the random transforms. `Default` is the recipe of toolchain-notes.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Augmentation {
    /// Rotation drawn from U(-deg, deg).
    pub rotation_deg: f32,
    /// Crop side multiplied by U(min, max).
    pub scale: (f32, f32),
    /// Crop centre moved by U(-s, s) of the side, on each axis.
    pub shift: f32,
    pub flip_probability: f32,
    /// Pixel values multiplied by U(min, max)...
    pub brightness: (f32, f32),
    /// ...then moved by U(-b, b) (in 0..1 pixel units).
    pub brightness_shift: f32,
    pub occlusion_probability: f32,
    /// Side of the occluding rectangle as a fraction of the crop, U(min, max) per axis.
    pub occlusion_size: (f32, f32),
    /// Probability of turning the crop gray (for gray test photos).
    pub grayscale_probability: f32,
    /// Probability of centring a labeled face's sample on the crop the face detector makes of
    /// it (what `annotate`'s one landmark pass sees) instead of on its landmark box: the
    /// detector's box error, face by face, joins the random transforms. Faces the detector
    /// misses keep the landmark crop. The detector runs once over the training photos.
    pub detector_crop_probability: f32,
    /// Draw the rotation about the face's own roll instead of about upright: the landmark crop
    /// turned to the true eye line ([`pipnet_core::landmark_crop`]), a detector crop at its own
    /// angle. This is what the runtime's crops look like since they turn with the face, so the
    /// rotation range only has to cover their residual roll.
    pub roll_aligned: bool,
}

impl Default for Augmentation {
    fn default() -> Self {
        Self {
            rotation_deg: 30.0,
            scale: (0.9, 1.1),
            shift: 0.05,
            flip_probability: 0.5,
            brightness: (0.7, 1.3),
            brightness_shift: 0.1,
            occlusion_probability: 0.5,
            occlusion_size: (0.125, 1.0 / 3.0),
            grayscale_probability: 0.0,
            detector_crop_probability: 0.0,
            roll_aligned: false,
        }
    }
}

impl Augmentation {
    /// The side of the axis-aligned square, centred on the face's base crop and in units of
    /// its side, that holds every pixel an augmented crop can sample: the largest crop,
    /// rotated by the largest angle, moved by the largest shift on both axes.
    pub fn reach(&self) -> f32 {
        let side = self.scale.0.max(self.scale.1).max(0.0);
        let angle = self.rotation_deg.abs().min(45.0).to_radians();
        side * (angle.cos() + angle.sin() + 2.0 * self.shift.abs())
    }
}

/// Everything needed to turn a labeled face into network input.
#[derive(Debug, Clone)]
pub struct SampleSpec<'a> {
    pub rule: CropRule,
    pub scheme: Scheme,
    pub input_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The scheme's horizontal-flip permutation.
    pub flip: &'a [usize],
}

/// One draw of the random transforms, independent of the output size: the same augmented
/// face can be rendered for the student and, larger, for a teacher (distillation).
#[derive(Debug, Clone, PartialEq)]
pub struct SampleDraw {
    pub crop: FaceCrop,
    pub flip: bool,
    pub gray: bool,
    /// Pixel values (0..1) become `gain * v + offset`.
    pub gain: f32,
    pub offset: f32,
    /// Occluding rectangle `[x0, y0, w, h]` in fractions of the crop, and its colour (0..1).
    pub occlusion: Option<([f32; 4], [f32; 3])>,
}

/// Where a sample's crop starts from: the face's landmarks (cropped by the rule), and the
/// detector's crop of the face when it found it.
#[derive(Debug, Clone, Copy)]
pub struct SampleBase<'a> {
    pub points: &'a [Point],
    pub detected: Option<&'a FaceCrop>,
    pub image_size: (u32, u32),
}

/// Draws the transforms of one sample; without `augment`, the rule's landmark crop as it is.
pub fn draw_sample(
    face: SampleBase<'_>,
    spec: &SampleSpec<'_>,
    augment: Option<&Augmentation>,
    rng: &mut impl Rng,
) -> SampleDraw {
    let (width, height) = face.image_size;
    let rule = &spec.rule;
    let aligned = augment
        .filter(|aug| aug.roll_aligned)
        .and_then(|_| landmark_crop(rule, spec.scheme, face.points).ok());
    let mut base = aligned.unwrap_or_else(|| {
        FaceBox::around(face.points)
            .map(|b| rule.crop(&b))
            .unwrap_or_else(|_| FaceCrop::whole_image(width, height))
    });
    let Some(aug) = augment else {
        return SampleDraw {
            crop: base,
            flip: false,
            gray: false,
            gain: 1.0,
            offset: 0.0,
            occlusion: None,
        };
    };
    if aug.detector_crop_probability > 0.0 {
        // The coin is tossed for every face, found or not, so the draws stay aligned.
        let toss = rng.random::<f32>() < aug.detector_crop_probability;
        if let Some(detected) = face.detected.filter(|_| toss) {
            base = *detected;
        }
    }
    let uniform = |rng: &mut _, (lo, hi): (f32, f32)| {
        if hi > lo {
            RngExt::random_range(rng, lo..hi)
        } else {
            lo
        }
    };
    let side = base.side * uniform(rng, aug.scale);
    let shift = |rng: &mut _| uniform(rng, (-aug.shift, aug.shift)) * side;
    let center = [base.center[0] + shift(rng), base.center[1] + shift(rng)];
    let mut angle = uniform(rng, (-aug.rotation_deg, aug.rotation_deg)).to_radians();
    if aug.roll_aligned {
        angle += base.angle;
    }
    let flip = rng.random::<f32>() < aug.flip_probability;
    let gray = rng.random::<f32>() < aug.grayscale_probability;
    let gain = uniform(rng, aug.brightness);
    let offset = uniform(rng, (-aug.brightness_shift, aug.brightness_shift));
    let occlusion = (rng.random::<f32>() < aug.occlusion_probability).then(|| {
        let w = uniform(rng, aug.occlusion_size).clamp(0.0, 1.0);
        let h = uniform(rng, aug.occlusion_size).clamp(0.0, 1.0);
        let x0 = rng.random::<f32>() * (1.0 - w);
        let y0 = rng.random::<f32>() * (1.0 - h);
        ([x0, y0, w, h], [0, 1, 2].map(|_| rng.random::<f32>()))
    });
    SampleDraw {
        crop: FaceCrop::new(center, side, angle),
        flip,
        gray,
        gain,
        offset,
        occlusion,
    }
}

/// Renders `draw` of `points`' face into `out` (`[3, S, S]`, `S = spec.input_size`) and
/// returns the points in crop-normalised units (mirrored and permuted when flipped).
pub fn render_sample(
    image: &RgbImage,
    points: &[Point],
    draw: &SampleDraw,
    spec: &SampleSpec<'_>,
    out: &mut [f32],
) -> Vec<Point> {
    let s = spec.input_size;
    let norm = Normalization::new(spec.mean, spec.std);
    write_crop(image, &draw.crop, s, &norm, out);
    let mut in_crop: Vec<Point> = points.iter().map(|&p| draw.crop.to_crop(p)).collect();
    if draw.flip {
        mirror_planes(out, s);
        let mirrored: Vec<Point> = in_crop.iter().map(|p| [1.0 - p[0], p[1]]).collect();
        in_crop = spec.flip.iter().map(|&from| mirrored[from]).collect();
    }
    let plane = s * s;
    if draw.gray {
        // Luma of the de-normalised channels, written back normalised per channel.
        for i in 0..plane {
            let v: [f32; 3] = [0, 1, 2].map(|c| out[c * plane + i] * spec.std[c] + spec.mean[c]);
            let y = 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2];
            for c in 0..3 {
                out[c * plane + i] = (y - spec.mean[c]) / spec.std[c];
            }
        }
    }
    // Brightness in pixel units, applied in normalised space: v' = a v + b.
    let (a, b) = (draw.gain, draw.offset);
    if (a, b) != (1.0, 0.0) {
        for c in 0..3 {
            let offset = (a * spec.mean[c] + b - spec.mean[c]) / spec.std[c];
            for v in &mut out[c * plane..(c + 1) * plane] {
                *v = *v * a + offset;
            }
        }
    }
    if let Some(([x0, y0, w, h], colour)) = draw.occlusion {
        let w = ((w * s as f32) as usize).clamp(1, s);
        let h = ((h * s as f32) as usize).clamp(1, s);
        let x0 = ((x0 * s as f32) as usize).min(s - w);
        let y0 = ((y0 * s as f32) as usize).min(s - h);
        for c in 0..3 {
            let value = (colour[c] - spec.mean[c]) / spec.std[c];
            for y in y0..y0 + h {
                out[c * plane + y * s + x0..c * plane + y * s + x0 + w].fill(value);
            }
        }
    }
    in_crop
}

/// Writes the crop of `points`' face into `out` (`[3, S, S]`) and returns the points in
/// crop-normalised units. With `augment`, the crop and pixels are randomised from `rng`.
pub fn make_sample(
    image: &RgbImage,
    points: &[Point],
    spec: &SampleSpec<'_>,
    augment: Option<&Augmentation>,
    rng: &mut impl Rng,
    out: &mut [f32],
) -> Vec<Point> {
    let base = SampleBase {
        points,
        detected: None,
        image_size: image.dimensions(),
    };
    let draw = draw_sample(base, spec, augment, rng);
    render_sample(image, points, &draw, spec, out)
}

/// Mirrors each `S x S` plane left-right in place.
fn mirror_planes(data: &mut [f32], s: usize) {
    for row in data.chunks_exact_mut(s) {
        row.reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn test_reach_holds_the_largest_rotated_shifted_crop() {
        let none = Augmentation {
            rotation_deg: 0.0,
            scale: (1.0, 1.0),
            shift: 0.0,
            ..Augmentation::default()
        };
        assert!((none.reach() - 1.0).abs() < 1e-6);
        // 1.1 x (cos 30 + sin 30 + 2 x 0.05)
        assert!((Augmentation::default().reach() - 1.6126).abs() < 1e-3);
    }

    fn face_points() -> Vec<Point> {
        crate::seeded::synthetic_mean_face(68)
            .iter()
            .map(|p| [40.0 + 60.0 * p[0], 30.0 + 70.0 * p[1]])
            .collect()
    }

    fn spec(flip: &[usize]) -> SampleSpec<'_> {
        SampleSpec {
            rule: CropRule::default(),
            scheme: Scheme::W300_68,
            input_size: 32,
            mean: [0.5; 3],
            std: [0.25; 3],
            flip,
        }
    }

    #[test]
    fn test_without_augmentation_points_fill_the_crop_as_the_rule_says() {
        let image = RgbImage::from_pixel(160, 160, Rgb([128, 128, 128]));
        let flip = Scheme::W300_68.flip_permutation();
        let mut out = vec![0.0; 3 * 32 * 32];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let pts = make_sample(
            &image,
            &face_points(),
            &spec(&flip),
            None,
            &mut rng,
            &mut out,
        );
        let b = FaceBox::around(&pts).unwrap();
        // Landmark box x 1.1, centred: the box spans 1/1.1 of the crop on its long side.
        assert!((b.height() - 1.0 / 1.1).abs() < 1e-4, "{b:?}");
        assert!(((b.y0 + b.y1) / 2.0 - 0.5).abs() < 1e-4);
    }

    #[test]
    fn test_flip_round_trip_restores_points_and_pixels() {
        // Mirroring twice (pixels and permuted points) is the identity.
        let flip = Scheme::W300_68.flip_permutation();
        let pts: Vec<Point> = (0..68)
            .map(|i| [i as f32 / 100.0, 1.0 - i as f32 / 90.0])
            .collect();
        let once: Vec<Point> = flip.iter().map(|&f| [1.0 - pts[f][0], pts[f][1]]).collect();
        let twice: Vec<Point> = flip
            .iter()
            .map(|&f| [1.0 - once[f][0], once[f][1]])
            .collect();
        for (a, b) in pts.iter().zip(&twice) {
            assert!((a[0] - b[0]).abs() < 1e-6 && a[1] == b[1]);
        }
        // The left outer eye corner (36) of a mirrored face is the old right one (45), moved.
        assert_eq!(once[36], [1.0 - pts[45][0], pts[45][1]]);
        let mut planes: Vec<f32> = (0..2 * 4 * 4).map(|v| v as f32).collect();
        let original = planes.clone();
        mirror_planes(&mut planes, 4);
        assert_eq!(planes[0], 3.0);
        mirror_planes(&mut planes, 4);
        assert_eq!(planes, original);
    }

    #[test]
    fn test_flipped_sample_moves_a_marked_pixel_with_its_landmark() {
        // A bright dot under landmark 36 must end up under landmark 45 after a forced flip.
        let pts = face_points();
        let mut image = RgbImage::from_pixel(160, 160, Rgb([0, 0, 0]));
        let [x, y] = pts[36];
        for dy in -1..=1 {
            for dx in -1..=1 {
                image.put_pixel(
                    (x.round() as i32 + dx) as u32,
                    (y.round() as i32 + dy) as u32,
                    Rgb([255; 3]),
                );
            }
        }
        let flip = Scheme::W300_68.flip_permutation();
        let aug = Augmentation {
            rotation_deg: 0.0,
            scale: (1.0, 1.0),
            shift: 0.0,
            flip_probability: 1.0,
            brightness: (1.0, 1.0),
            brightness_shift: 0.0,
            occlusion_probability: 0.0,
            ..Default::default()
        };
        let mut out = vec![0.0; 3 * 32 * 32];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let spec = spec(&flip);
        let moved = make_sample(&image, &pts, &spec, Some(&aug), &mut rng, &mut out);
        let [u, v] = moved[45].map(|c| (c * 32.0) as usize);
        let bright = out[v * 32 + u] * 0.25 + 0.5;
        assert!(bright > 0.5, "pixel under landmark 45 is {bright}");
    }

    #[test]
    fn test_one_draw_renders_the_same_sample_at_two_sizes() {
        // A smooth image, so a 64 px rendering averaged 2x2 is close to the 32 px one; the
        // occluder and brightness land on the same part of the crop at both sizes.
        let image = RgbImage::from_fn(200, 200, |x, y| {
            Rgb([(x + y) as u8 / 2, (x / 2 + 20) as u8, (y / 2 + 40) as u8])
        });
        let flip = Scheme::W300_68.flip_permutation();
        let aug = Augmentation {
            occlusion_probability: 1.0,
            flip_probability: 1.0,
            ..Augmentation::default()
        };
        let pts = face_points();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let small_spec = spec(&flip);
        let large_spec = SampleSpec {
            input_size: 64,
            ..small_spec.clone()
        };
        let base = SampleBase {
            points: &pts,
            detected: None,
            image_size: image.dimensions(),
        };
        let draw = draw_sample(base, &small_spec, Some(&aug), &mut rng);
        assert!(draw.flip && draw.occlusion.is_some());
        let mut small = vec![0.0; 3 * 32 * 32];
        let mut large = vec![0.0; 3 * 64 * 64];
        let a = render_sample(&image, &pts, &draw, &small_spec, &mut small);
        let b = render_sample(&image, &pts, &draw, &large_spec, &mut large);
        assert_eq!(a, b);
        let mut far = 0;
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let at = |u: usize, v: usize| large[c * 64 * 64 + v * 64 + u];
                    let mean = (at(2 * x, 2 * y)
                        + at(2 * x + 1, 2 * y)
                        + at(2 * x, 2 * y + 1)
                        + at(2 * x + 1, 2 * y + 1))
                        / 4.0;
                    // Normalised units (std 0.25): 0.2 is 0.05 of the pixel range.
                    if (mean - small[c * 32 * 32 + y * 32 + x]).abs() > 0.2 {
                        far += 1;
                    }
                }
            }
        }
        // Only the occluder's edge (at most one pixel row or column of 32) may differ.
        assert!(far <= 3 * 2 * 32, "{far} pixels differ");
    }

    #[test]
    fn test_detector_crop_probability_picks_the_detected_crop() {
        let pts = face_points();
        let detected = FaceCrop::new([75.0, 70.0], 90.0, 0.0);
        let still = |p: f32| Augmentation {
            rotation_deg: 0.0,
            scale: (1.0, 1.0),
            shift: 0.0,
            detector_crop_probability: p,
            ..Augmentation::default()
        };
        let flip = Scheme::W300_68.flip_permutation();
        let spec = spec(&flip);
        let landmark_crop = spec.rule.crop(&FaceBox::around(&pts).unwrap());
        let draw = |p: f32, detected: Option<&FaceCrop>, seed: u64| {
            let base = SampleBase {
                points: &pts,
                detected,
                image_size: (160, 160),
            };
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            draw_sample(base, &spec, Some(&still(p)), &mut rng).crop
        };
        for seed in 0..8 {
            assert_eq!(draw(1.0, Some(&detected), seed), detected);
            assert_eq!(draw(0.0, Some(&detected), seed), landmark_crop);
            // A face the detector missed keeps its landmark crop.
            assert_eq!(draw(1.0, None, seed), landmark_crop);
        }
        let picked = (0..200)
            .filter(|&seed| draw(0.5, Some(&detected), seed) == detected)
            .count();
        assert!((60..140).contains(&picked), "{picked} of 200 at p = 0.5");
    }

    #[test]
    fn test_roll_aligned_rotations_turn_about_the_eye_line() {
        // The face tilted by 25 degrees: aligned draws stay within the range of its eye line's
        // roll, upright ones of 0; a detector crop keeps its own angle.
        let tilt = 25f32.to_radians();
        let pts: Vec<Point> = face_points()
            .iter()
            .map(|&p| {
                let [x, y] = pipnet_core::crop::turn([p[0] - 70.0, p[1] - 65.0], tilt);
                [x + 70.0, y + 65.0]
            })
            .collect();
        let flip = Scheme::W300_68.flip_permutation();
        let spec = spec(&flip);
        let detected = FaceCrop::new([70.0, 65.0], 90.0, -0.5);
        let angles = |aligned: bool, detector: f32| -> Vec<f32> {
            let aug = Augmentation {
                rotation_deg: 10.0,
                roll_aligned: aligned,
                detector_crop_probability: detector,
                ..Augmentation::default()
            };
            (0..100)
                .map(|seed| {
                    let base = SampleBase {
                        points: &pts,
                        detected: Some(&detected),
                        image_size: (160, 160),
                    };
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    draw_sample(base, &spec, Some(&aug), &mut rng).crop.angle
                })
                .collect()
        };
        let roll = pipnet_core::roll(Scheme::W300_68, &pts).unwrap();
        assert!(
            roll.abs() > 0.3,
            "the tilted face's eye line is level: {roll}"
        );
        let within = |angles: &[f32], about: f32| {
            angles
                .iter()
                .all(|a| (a - about).abs() <= 10f32.to_radians() + 1e-5)
        };
        assert!(within(&angles(true, 0.0), roll));
        assert!(within(&angles(false, 0.0), 0.0));
        assert!(!within(&angles(true, 0.0), 0.0));
        assert!(within(&angles(true, 1.0), -0.5));
    }
}
