//! Rebuilds the `face68-train` layout from 300-W as its owners distribute it, so the training
//! recipe can be reproduced outside this project: each face of `afw/`, `helen/trainset/` and
//! `lfpw/trainset/` (images with iBUG `.pts` files beside them) is cut out with
//! [`DatasetCrop`] (2.2x the landmark box, at most 512 pixels), saved as JPEG (quality 92)
//! with its points moved exactly, and listed in `manifest.tsv`.

use std::path::{Path, PathBuf};

use image::RgbImage;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use pipnet_core::formats::{format_pts, parse_pts};
use pipnet_core::{DatasetCrop, Point};

use crate::error::{Error, Result};
use crate::files::{image_beside, write_atomic};
use crate::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use crate::labeled::LabeledFace;

/// The 300-W training subsets: output prefix and folder under the source root.
pub const SUBSETS_300W: [(&str, &str); 3] = [
    ("afw", "afw"),
    ("helen", "helen/trainset"),
    ("lfpw", "lfpw/trainset"),
];

/// Context around the landmark box and the longest saved side, as in face68-train.
pub const CONTEXT: f32 = 2.2;
pub const MAX_SIDE: u32 = 512;
const JPEG_QUALITY: u8 = 92;

/// What a rebuild wrote: faces per subset found under the source.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RebuildSummary {
    pub subsets: Vec<(String, usize)>,
}

impl RebuildSummary {
    pub fn faces(&self) -> usize {
        self.subsets.iter().map(|(_, n)| n).sum()
    }
}

/// The output stem of a face: `<prefix>_<stem>`; LFPW images (`image_0001`) hold one face
/// each and become `lfpw_0001_1`.
fn output_stem(prefix: &str, stem: &str) -> String {
    match (prefix, stem.strip_prefix("image_")) {
        ("lfpw", Some(number)) => format!("lfpw_{number}_1"),
        _ => format!("{prefix}_{stem}"),
    }
}

/// The image beside a `.pts` file (same stem).
fn image_for(pts: &Path) -> Result<PathBuf> {
    image_beside(pts).ok_or_else(|| {
        Error::InvalidInput(format!(
            "{}: no image with the same name (.jpg, .png, ...) beside it",
            pts.display()
        ))
    })
}

/// Rebuilds the layout of `src` (a 300-W tree) into `out`; every subset found is used, and at
/// least one must be there. Fails on the first face it cannot rebuild, naming the file.
pub fn rebuild_300w(src: &Path, out: &Path) -> Result<RebuildSummary> {
    let mut summary = RebuildSummary::default();
    let mut manifest =
        String::from("split\tstem\twidth\theight\tsource\tcrop_x0\tcrop_y0\tscale\n");
    for (prefix, folder) in SUBSETS_300W {
        let dir = src.join(folder);
        if !dir.is_dir() {
            continue;
        }
        let mut pts_files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(Error::io(&dir))?
            .map(|e| e.map(|e| e.path()).map_err(Error::io(&dir)))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pts"))
            .collect();
        pts_files.sort();
        for pts in &pts_files {
            let line = rebuild_face(src, prefix, pts, out)?;
            manifest.push_str(&line);
        }
        summary.subsets.push((prefix.to_string(), pts_files.len()));
    }
    if summary.subsets.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{} holds none of the 300-W training folders ({}); point it at the folder that \
             contains them",
            src.display(),
            SUBSETS_300W.map(|(_, f)| f).join(", ")
        )));
    }
    write_atomic(&out.join("manifest.tsv"), manifest.as_bytes())?;
    Ok(summary)
}

/// Cuts one face out and writes its JPEG and `.pts`; returns its manifest line.
fn rebuild_face(src: &Path, prefix: &str, pts: &Path, out: &Path) -> Result<String> {
    let text = std::fs::read_to_string(pts).map_err(Error::io(pts))?;
    let bad = |detail: String| Error::InvalidInput(format!("{}: {detail}", pts.display()));
    let points: Vec<Point> = parse_pts(&text)
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .map(|[x, y]| [x - 1.0, y - 1.0])
        .collect();
    if points.len() != 68 {
        return Err(bad(format!("{} points, 300-W has 68", points.len())));
    }
    let image_path = image_for(pts)?;
    let photo = load_rgb(&image_path, DEFAULT_MAX_PIXELS)?;
    let stem = pts
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = output_stem(prefix, &stem);
    let cut = FaceCut {
        context: CONTEXT,
        max_side: MAX_SIDE,
        quality: JPEG_QUALITY,
    };
    let (crop, _) = cut.write(&photo, &points, pts, out, &name)?;
    let source = image_path
        .strip_prefix(src)
        .unwrap_or(&image_path)
        .to_string_lossy()
        .into_owned();
    Ok(format!(
        "train\t{name}\t{}\t{}\t{source}\t{}\t{}\t{}\n",
        crop.out_width,
        crop.out_height,
        crop.x0,
        crop.y0,
        crop.scale()
    ))
}

/// How faces are cut out: [`DatasetCrop`]'s context and longest side, and the JPEG quality.
struct FaceCut {
    context: f32,
    max_side: u32,
    quality: u8,
}

impl FaceCut {
    /// Cuts the face at `points` (0-based) out of `photo` and writes `<name>.jpg` and
    /// `<name>.pts` (its points moved exactly) into `out`; `source` (the file the face came
    /// from) is named when the face cannot be cut. Returns the crop and the bytes written.
    fn write(
        &self,
        photo: &RgbImage,
        points: &[Point],
        source: &Path,
        out: &Path,
        name: &str,
    ) -> Result<(DatasetCrop, u64)> {
        let crop = DatasetCrop::around(
            points,
            photo.width(),
            photo.height(),
            self.context,
            self.max_side,
        )
        .map_err(|e| Error::InvalidInput(format!("{}: {e}", source.display())))?;
        let cut = image::imageops::crop_imm(photo, crop.x0, crop.y0, crop.width, crop.height);
        let face = if (crop.out_width, crop.out_height) == (crop.width, crop.height) {
            cut.to_image()
        } else {
            image::imageops::resize(&*cut, crop.out_width, crop.out_height, FilterType::Lanczos3)
        };
        let jpeg_path = out.join(format!("{name}.jpg"));
        let mut jpeg = Vec::new();
        face.write_with_encoder(JpegEncoder::new_with_quality(&mut jpeg, self.quality))
            .map_err(|e| Error::Image {
                path: jpeg_path.clone(),
                message: format!("encoding: {e}"),
            })?;
        write_atomic(&jpeg_path, &jpeg)?;
        let moved: Vec<Point> = points
            .iter()
            .map(|&p| {
                let [x, y] = crop.to_crop(p);
                [x + 1.0, y + 1.0]
            })
            .collect();
        let pts = format_pts(&moved);
        write_atomic(&out.join(format!("{name}.pts")), pts.as_bytes())?;
        Ok((crop, (jpeg.len() + pts.len()) as u64))
    }
}

/// How large one face is cut by [`write_face_crops`]: `context` times its landmark box's
/// longer side, at most `max_side` pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CutSize {
    pub context: f32,
    pub max_side: u32,
}

/// Writes `faces` again as a folder of the same layout, each cut to its `sizes` entry (one per
/// face): a compact copy of a training set for a machine the full photos cannot travel to.
/// Names are kept, so a validation split of the copy (which depends on names alone) matches the
/// original's. Returns each face's cut, to move other geometry of the face into the copy, and
/// the bytes written.
pub fn write_face_crops(
    faces: &[LabeledFace],
    sizes: &[CutSize],
    out: &Path,
    quality: u8,
) -> Result<(Vec<DatasetCrop>, u64)> {
    if sizes.len() != faces.len() {
        return Err(Error::InvalidInput(format!(
            "{} cut sizes for {} faces",
            sizes.len(),
            faces.len()
        )));
    }
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let mut bytes = 0;
    let mut crops = Vec::with_capacity(faces.len());
    for (face, size) in faces.iter().zip(sizes) {
        let cut = FaceCut {
            context: size.context,
            max_side: size.max_side,
            quality,
        };
        let photo = load_rgb(&face.image, DEFAULT_MAX_PIXELS)?;
        let (crop, written) = cut.write(&photo, &face.points, &face.image, out, &face.name)?;
        crops.push(crop);
        bytes += written;
    }
    Ok((crops, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_output_stems_follow_face68_train() {
        assert_eq!(output_stem("afw", "134212_2"), "afw_134212_2");
        assert_eq!(output_stem("helen", "100032540_1"), "helen_100032540_1");
        assert_eq!(output_stem("lfpw", "image_0046"), "lfpw_0046_1");
    }
}
