//! Labeled faces on disk: a folder of images with iBUG `.pts` files beside them (one face per
//! file, same stem), or a WFLW annotation list. Coordinates are returned as 0-based pixel
//! centres (the `.pts` convention is 1-based; WFLW lists are already 0-based).

use std::path::{Path, PathBuf};

use image::RgbImage;
use pipnet_core::crop::scaled_size;
use pipnet_core::formats::{parse_pts, parse_wflw_line};
use pipnet_core::{FaceBox, FaceCrop, Point, Scheme};

use crate::error::{Error, Result};
use crate::files::image_beside;
use crate::image_io::load_rgb;
use crate::preprocess::cut_crop;

/// One annotated face.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledFace {
    pub image: PathBuf,
    /// Stable name (the annotation's stem, or the list's image path plus face index).
    pub name: String,
    pub points: Vec<Point>,
    /// Radians the photo is turned by when loaded ([`LabeledFace::turned`]); `points` are
    /// turned already.
    pub roll: f32,
    /// Whether the photo is mirrored left-right when loaded, before any turn
    /// ([`LabeledFace::mirrored`]); `points` are mirrored already.
    pub mirrored: bool,
    /// The factor (at most 1) the photo is shrunk by when loaded, after any mirror and before
    /// any turn ([`LabeledFace::shrunk`]); `points` are shrunk already.
    pub shrink: f32,
}

impl LabeledFace {
    /// The face's photo as evaluation sees it: decoded, mirrored ([`Self::mirrored`]), shrunk
    /// ([`Self::shrink`]), then turned by [`Self::roll`].
    pub fn load(&self, max_pixels: u64) -> Result<RgbImage> {
        let mut photo = load_rgb(&self.image, max_pixels)?;
        if self.mirrored {
            image::imageops::flip_horizontal_in_place(&mut photo);
        }
        if self.shrink < 1.0 {
            let (w, h) = scaled_size(photo.width(), photo.height(), self.shrink);
            photo = image::imageops::resize(&photo, w, h, image::imageops::FilterType::Triangle);
        }
        if self.roll == 0.0 {
            return Ok(photo);
        }
        let (window, side) = FaceCrop::turned_image(photo.width(), photo.height(), self.roll);
        Ok(cut_crop(&photo, &window, side))
    }

    /// This face as read from disk, on its photo mirrored left-right: points mirrored and
    /// renumbered as the scheme's mirror pairs say (the left eye's points become the right
    /// eye's), so the truth is exact. Decodes the photo for its width.
    pub fn mirrored(&self, max_pixels: u64) -> Result<Self> {
        if self.roll != 0.0 || self.mirrored {
            return Err(Error::InvalidInput(format!(
                "{}: already turned or mirrored; mirror the face as read",
                self.name
            )));
        }
        let scheme = Scheme::with_landmarks(self.points.len()).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{}: no landmark scheme has {} points to mirror",
                self.name,
                self.points.len()
            ))
        })?;
        let width = self.load(max_pixels)?.width() as f32;
        let points = scheme
            .flip_permutation()
            .iter()
            .map(|&j| [width - 1.0 - self.points[j][0], self.points[j][1]])
            .collect();
        Ok(Self {
            points,
            mirrored: true,
            ..self.clone()
        })
    }

    /// This face as read from disk (or mirrored), on its photo shrunk so that the longer side
    /// of its true landmark box is `side` pixels (never enlarged), its points shrunk with it:
    /// small faces made from large ones, as a camera further away would see them (the photo is
    /// averaged down, not subsampled). Decodes the photo for its size.
    pub fn shrunk(&self, side: f32, max_pixels: u64) -> Result<Self> {
        if self.roll != 0.0 || self.shrink != 1.0 {
            return Err(Error::InvalidInput(format!(
                "{}: already turned or shrunk; shrink the face as read",
                self.name
            )));
        }
        let b = FaceBox::around(&self.points)
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", self.name)))?;
        let factor = (side / b.width().max(b.height())).min(1.0);
        if factor.is_nan() || factor <= 0.0 {
            return Err(Error::InvalidInput(format!(
                "{}: cannot shrink its face to {side} pixels",
                self.name
            )));
        }
        let photo = self.load(max_pixels)?;
        let (w, h) = scaled_size(photo.width(), photo.height(), factor);
        // Each axis by the factor the rounded size gives, pixel centres mapped onto centres.
        let (fx, fy) = (
            w as f32 / photo.width() as f32,
            h as f32 / photo.height() as f32,
        );
        let points = self
            .points
            .iter()
            .map(|&[x, y]| [(x + 0.5) * fx - 0.5, (y + 0.5) * fy - 0.5])
            .collect();
        Ok(Self {
            points,
            shrink: factor,
            ..self.clone()
        })
    }

    /// This face as read from disk, on its photo turned by `angle` radians about the photo's
    /// centre ([`FaceCrop::turned_image`]: the face's roll grows by `angle`), its points
    /// turned with it: hard faces made from easy ones, with exact truth. Decodes the photo for
    /// its size.
    pub fn turned(&self, angle: f32, max_pixels: u64) -> Result<Self> {
        if self.roll != 0.0 {
            return Err(Error::InvalidInput(format!(
                "{}: already turned; turn the face as read",
                self.name
            )));
        }
        let photo = self.load(max_pixels)?;
        let (window, side) = FaceCrop::turned_image(photo.width(), photo.height(), angle);
        let points = self
            .points
            .iter()
            .map(|&p| window.to_crop(p).map(|v| v * side as f32 - 0.5))
            .collect();
        Ok(Self {
            points,
            roll: angle,
            ..self.clone()
        })
    }
}

/// Reads every `<stem>.pts` in `dir` (not recursive) with its image `<stem>.<image ext>`,
/// sorted by name. A `.pts` without an image, or one that does not parse, is an error naming
/// the file.
pub fn read_pts_folder(dir: &Path) -> Result<Vec<LabeledFace>> {
    let entries = std::fs::read_dir(dir).map_err(Error::io(dir))?;
    let mut faces = Vec::new();
    for entry in entries {
        let path = entry.map_err(Error::io(dir))?.path();
        if path.extension().is_none_or(|e| e != "pts") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        let points = parse_pts(&text)
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
        let image = image_beside(&path).ok_or_else(|| {
            Error::InvalidInput(format!("{}: no image with the same stem", path.display()))
        })?;
        faces.push(LabeledFace {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            image,
            points: points
                .into_iter()
                .map(|[x, y]| [x - 1.0, y - 1.0])
                .collect(),
            roll: 0.0,
            mirrored: false,
            shrink: 1.0,
        });
    }
    faces.sort_by(|a, b| a.name.cmp(&b.name));
    if faces.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: no .pts files",
            dir.display()
        )));
    }
    Ok(faces)
}

/// Reads labeled faces from `path`: a folder of images with `.pts` files, or a WFLW list file
/// whose image paths are relative to `images` (default: the list's folder).
pub fn read_labeled(path: &Path, images: Option<&Path>) -> Result<Vec<LabeledFace>> {
    if path.is_dir() {
        return match images {
            None => read_pts_folder(path),
            Some(_) => Err(Error::InvalidInput(format!(
                "{}: an images folder applies only to a WFLW list file, and this is a folder",
                path.display()
            ))),
        };
    }
    let root = images
        .map(Path::to_path_buf)
        .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
    read_wflw_list(path, &root)
}

/// Reads a WFLW list (`list_98pt_rect_attr_*.txt`); image paths are relative to `images`.
/// A face is named `<image path>_<k>` (its k-th face in the list), so the validation split
/// keeps the faces of one photo together as it does for `.pts` folders.
pub fn read_wflw_list(list: &Path, images: &Path) -> Result<Vec<LabeledFace>> {
    let text = std::fs::read_to_string(list).map_err(Error::io(list))?;
    let mut faces = Vec::new();
    let mut per_image = std::collections::HashMap::<String, usize>::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let record = parse_wflw_line(line, i + 1)
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", list.display())))?;
        let image = images.join(&record.image);
        if !image.is_file() {
            return Err(Error::InvalidInput(format!(
                "{} line {}: image {} not found (pass the folder the list's image paths are \
                 relative to)",
                list.display(),
                i + 1,
                image.display()
            )));
        }
        let k = per_image.entry(record.image.clone()).or_default();
        *k += 1;
        faces.push(LabeledFace {
            image,
            name: format!("{}_{k}", record.image),
            points: record.points,
            roll: 0.0,
            mirrored: false,
            shrink: 1.0,
        });
    }
    if faces.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: no faces in the list",
            list.display()
        )));
    }
    Ok(faces)
}

/// Splits faces into (train, validation) by a seeded rule that depends only on the names: a
/// face is held out when the hash of `seed` and the name of its photo falls in the lowest
/// `fraction`. Faces of the same photo (`afw_123_1`, `afw_123_2`) stay on the same side.
pub fn split_validation(
    faces: Vec<LabeledFace>,
    fraction: f64,
    seed: u64,
) -> (Vec<LabeledFace>, Vec<LabeledFace>) {
    faces.into_iter().partition(|f| {
        let photo = f
            .name
            .rsplit_once('_')
            .map_or(f.name.as_str(), |(stem, _)| stem);
        // FNV-1a over the seed and the photo name: stable across platforms and releases.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.to_le_bytes().iter().chain(photo.as_bytes()) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        (h as f64 / u64::MAX as f64) >= fraction
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(name: &str) -> LabeledFace {
        LabeledFace {
            image: PathBuf::from(format!("{name}.jpg")),
            name: name.into(),
            points: vec![],
            roll: 0.0,
            mirrored: false,
            shrink: 1.0,
        }
    }

    #[test]
    fn test_split_is_seeded_stable_and_keeps_photos_together() {
        // Names shaped like the data set's: source, a 6-10 digit photo id, face number.
        let mut id: u64 = 1_051_618_982;
        let faces: Vec<_> = (0..400)
            .flat_map(|_| {
                id = id.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1) % 9_999_999_967;
                [face(&format!("afw_{id}_1")), face(&format!("afw_{id}_2"))]
            })
            .collect();
        let (train, val) = split_validation(faces.clone(), 0.1, 7);
        assert_eq!(train.len() + val.len(), 800);
        assert!((50..110).contains(&val.len()), "{} held out", val.len());
        for v in &val {
            let (stem, n) = v.name.rsplit_once('_').unwrap();
            let twin = format!("{stem}_{}", if n == "1" { "2" } else { "1" });
            assert!(
                val.iter().any(|w| w.name == twin),
                "{} without {twin}",
                v.name
            );
        }
        let (_, again) = split_validation(faces.clone(), 0.1, 7);
        assert_eq!(val, again);
        let (_, other) = split_validation(faces, 0.1, 8);
        assert_ne!(val, other);
    }

    #[test]
    fn test_pts_folder_reads_points_zero_based() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a_1.pts"),
            "version: 1\nn_points: 2\n{\n1 1\n10.5 20\n}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("a_1.jpg"), b"").unwrap();
        let faces = read_pts_folder(dir.path()).unwrap();
        assert_eq!(faces[0].points, vec![[0.0, 0.0], [9.5, 19.0]]);
        std::fs::write(
            dir.path().join("b.pts"),
            "version: 1\nn_points: 1\n{\n1 1\n}\n",
        )
        .unwrap();
        let err = read_pts_folder(dir.path()).unwrap_err().to_string();
        assert!(err.contains("b.pts: no image"), "{err}");
    }

    #[test]
    fn test_wflw_list_names_faces_per_photo_and_checks_images() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("WFLW_images");
        std::fs::create_dir_all(images.join("51--Dresses")).unwrap();
        std::fs::write(images.join("51--Dresses/a_1.jpg"), b"").unwrap();
        std::fs::write(images.join("51--Dresses/b_2.jpg"), b"").unwrap();
        let line = |image: &str, x0: f32| {
            let mut fields: Vec<String> = (0..98)
                .flat_map(|i| [x0 + i as f32, 2.0 * i as f32])
                .map(|v| v.to_string())
                .collect();
            fields.extend(
                ["1", "2", "200", "220", "0", "0", "0", "0", "0", "0", image].map(String::from),
            );
            fields.join(" ")
        };
        let list = dir.path().join("list_98pt_rect_attr_train.txt");
        let text = [
            line("51--Dresses/a_1.jpg", 10.0),
            String::new(),
            line("51--Dresses/b_2.jpg", 20.0),
            line("51--Dresses/a_1.jpg", 30.0),
        ]
        .join("\n");
        std::fs::write(&list, &text).unwrap();
        let faces = read_labeled(&list, Some(&images)).unwrap();
        let names: Vec<_> = faces.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "51--Dresses/a_1.jpg_1",
                "51--Dresses/b_2.jpg_1",
                "51--Dresses/a_1.jpg_2"
            ]
        );
        // WFLW coordinates are already 0-based: read as written.
        assert_eq!(faces[2].points[3], [33.0, 6.0]);
        assert_eq!(faces[1].image, images.join("51--Dresses/b_2.jpg"));
        // Both faces of a_1.jpg land on the same side of any split.
        for seed in 0..20 {
            let (_, val) = split_validation(faces.clone(), 0.5, seed);
            let a = val.iter().filter(|f| f.name.contains("a_1.jpg")).count();
            assert!(a == 0 || a == 2, "seed {seed}: {a} of a_1.jpg held out");
        }
        // Without the images folder the paths resolve beside the list, where they are not.
        let err = read_labeled(&list, None).unwrap_err().to_string();
        assert!(
            err.contains("line 1: image") && err.contains("not found"),
            "{err}"
        );
        // An images folder given with a .pts folder is a mistake, not ignored.
        assert!(read_labeled(dir.path(), Some(&images)).is_err());
        std::fs::write(&list, "").unwrap();
        let err = read_labeled(&list, Some(&images)).unwrap_err().to_string();
        assert!(err.contains("no faces"), "{err}");
    }

    #[test]
    fn test_a_shrunk_face_keeps_its_points_on_the_same_pixels() {
        // A 200 x 100 photo with one bright pixel per point; shrunk so the 80-pixel box
        // becomes 40 pixels: each point must land where its pixel's brightness went.
        let dir = tempfile::tempdir().unwrap();
        let points = [[60.0f32, 30.0], [140.0, 70.0], [100.0, 50.0]];
        let photo = RgbImage::from_fn(200, 100, |x, y| {
            let lit = points.iter().any(|p| {
                (p[0] as u32..p[0] as u32 + 2).contains(&x)
                    && (p[1] as u32..p[1] as u32 + 2).contains(&y)
            });
            image::Rgb(if lit { [255; 3] } else { [0; 3] })
        });
        let path = dir.path().join("a.png");
        photo.save(&path).unwrap();
        let face = LabeledFace {
            image: path,
            name: "a".into(),
            // The centre of each lit 2 x 2 block.
            points: points.iter().map(|p| [p[0] + 0.5, p[1] + 0.5]).collect(),
            roll: 0.0,
            mirrored: false,
            shrink: 1.0,
        };
        let small = face.shrunk(40.0, u64::MAX).unwrap();
        assert_eq!(small.shrink, 0.5);
        let shrunk = small.load(u64::MAX).unwrap();
        assert_eq!(shrunk.dimensions(), (100, 50));
        for p in &small.points {
            // The block's two-pixel square became one pixel, at the point.
            let [x, y] = p.map(|v| v.round() as u32);
            assert!(shrunk.get_pixel(x, y)[0] > 100, "{p:?}");
            assert!((p[0] - p[0].round()).abs() < 1e-4, "{p:?}");
        }
        // Turning a shrunk face works; shrinking twice, or a turned face, is refused.
        assert!(small.turned(1.0, u64::MAX).is_ok());
        assert!(small.shrunk(20.0, u64::MAX).is_err());
        // Never enlarged.
        assert_eq!(face.shrunk(400.0, u64::MAX).unwrap().shrink, 1.0);
    }
}
