//! Where an image's outputs go, how they are written as one set, and what replaces an earlier
//! run's.

use std::path::{Path, PathBuf};

use image::RgbImage;
use pipnet_core::formats::{ChipRecord, FaceAnnotation, ImageAnnotation, format_pts};
use pipnet_core::{ChipSpec, Scheme, face_chip};

use super::job::{OutputFormat, Run};
use super::shard::Shard;
use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::pipeline::Face;
use crate::preprocess::cut_chip;
use crate::preview;

/// The failure list of a run: `failures.jsonl`, or `failures-K-of-N.jsonl` for a shard, so
/// shards writing into one output folder never overwrite each other's.
pub fn failures_path(out_dir: &Path, shard: Option<Shard>) -> PathBuf {
    out_dir.join(match shard {
        None => "failures.jsonl".to_string(),
        Some(s) => format!("failures-{}-of-{}.jsonl", s.index, s.count),
    })
}

/// The output of image `name` under `out_dir` that marks it done: the image's relative path
/// plus `.json` or `.csv` (so `a.jpg` and `a.png` never collide), or the first face's `.pts`.
pub fn output_path(out_dir: &Path, name: &str, format: OutputFormat) -> PathBuf {
    match format {
        OutputFormat::Json => out_dir.join(format!("{name}.json")),
        OutputFormat::Csv => out_dir.join(format!("{name}.csv")),
        OutputFormat::Pts => pts_path(out_dir, name, 0),
    }
}

/// What names image `name`'s outputs: the output file itself, or for `.pts` the per-face
/// files' common prefix (`<stem>_`). Two images with the same stem collide.
pub(super) fn output_stem(out_dir: &Path, name: &str, format: OutputFormat) -> PathBuf {
    match format {
        OutputFormat::Pts => out_dir.join(format!("{}_", pts_stem(name))),
        _ => output_path(out_dir, name, format),
    }
}

/// Image `name` without its extension: what its `.pts` files are named by.
fn pts_stem(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(stem, _)| stem)
}

/// The `.pts` file of face `k` (0-based) of image `name`: `<stem>_<k + 1>.pts`, as 300-W names
/// faces.
pub(super) fn pts_path(out_dir: &Path, name: &str, k: usize) -> PathBuf {
    out_dir.join(format!("{}_{}.pts", pts_stem(name), k + 1))
}

/// The preview JPEG of image `name`: `preview/<name>`, with `.jpg` added unless the name is a
/// JPEG's already.
pub fn preview_path(out_dir: &Path, name: &str) -> PathBuf {
    let lower = name.to_ascii_lowercase();
    let dir = out_dir.join("preview");
    if lower.ends_with(".jpg") || lower.ends_with(".jpeg") {
        dir.join(name)
    } else {
        dir.join(format!("{name}.jpg"))
    }
}

/// The folder of image `name`'s chips: `chips/<name>/`, one `<k>.png` per face (k from 1).
pub fn chips_dir(out_dir: &Path, name: &str) -> PathBuf {
    out_dir.join("chips").join(name)
}

/// Every output of image `name` under `out_dir`, in any format: its `.json` and `.csv`, its
/// per-face `.pts` from face 1 up while they exist (faces are written 2, 3, ... and face 1 last,
/// and removed from the top, so only face 1 can be missing below the others), its preview, and
/// its chips folder followed by the chips in it.
fn existing_outputs(out_dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = [OutputFormat::Json, OutputFormat::Csv]
        .map(|format| output_path(out_dir, name, format))
        .into_iter()
        .chain([preview_path(out_dir, name)])
        .filter(|path| path.is_file())
        .collect();
    found.extend(
        (0..)
            .map(|k| (k, pts_path(out_dir, name, k)))
            .take_while(|(k, path)| *k == 0 || path.is_file())
            .filter_map(|(_, path)| path.is_file().then_some(path)),
    );
    let chips = chips_dir(out_dir, name);
    if let Ok(entries) = std::fs::read_dir(&chips) {
        found.push(chips.clone());
        found.extend(entries.flatten().map(|entry| entry.path()));
    }
    found
}

/// Removes image `name`'s earlier outputs that are not in `new_set`, last found first (a chips
/// folder after its chips), so that the folder holds one run's outputs per image whatever the
/// sequence of runs: a face fewer, another format, no previews or chips this time.
pub(super) fn remove_stale_outputs(out_dir: &Path, name: &str, new_set: &[PathBuf]) -> Result<()> {
    for path in existing_outputs(out_dir, name).iter().rev() {
        if new_set.contains(path) {
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir(path)
        } else {
            std::fs::remove_file(path)
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Io {
                    path: path.clone(),
                    source: e,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Removes temporaries a killed run left in `out_dir` (`write_atomic` names them `.tmp*`).
pub(super) fn remove_stale_temporaries(out_dir: &Path) {
    for entry in walkdir::WalkDir::new(out_dir).into_iter().flatten() {
        let stale =
            entry.file_type().is_file() && entry.file_name().to_string_lossy().starts_with(".tmp");
        if stale {
            // Best effort: a temporary we cannot remove is harmless.
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// True when `output` exists and was modified after `image`.
pub(super) fn is_done(image: &Path, output: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((modified(image), modified(output)), (Some(i), Some(o)) if o >= i)
}

/// Writes one image's outputs, each atomically, and removes what is left of its earlier ones;
/// the file that marks the image done ([`output_path`]) goes last, so a killed run redoes the
/// image rather than trusting a half.
pub(super) fn write_outputs(
    run: &Run<'_>,
    name: &str,
    image: &RgbImage,
    faces: &[Face],
) -> Result<()> {
    let job = run.job;
    let mut annotation = ImageAnnotation {
        image: name.to_string(),
        width: image.width(),
        height: image.height(),
        faces: faces.iter().map(|f| f.annotation(run.scheme)).collect(),
        made_by: Some(run.made_by.clone()),
    };
    let mut new_set = Vec::new();
    if let Some(spec) = job.chips {
        new_set.extend(write_chips(
            &job.out_dir,
            name,
            image,
            spec,
            run.scheme,
            &mut annotation.faces,
        )?);
    }
    if job.preview {
        let marks = preview::Marks {
            pose_axes: job.pose_axes,
            ..Default::default()
        };
        let drawn = preview::draw_marked(image, &annotation.faces, marks)?;
        let path = preview_path(&job.out_dir, name);
        write_atomic(&path, &preview::encode_jpeg(&drawn)?)?;
        new_set.push(path);
    }
    let marker = output_path(&job.out_dir, name, job.format);
    let data: Vec<(PathBuf, String)> = match job.format {
        OutputFormat::Json => vec![(marker, annotation.to_json())],
        OutputFormat::Csv => vec![(marker, annotation.to_csv(run.scheme.num_landmarks()))],
        // Faces 2, 3, ... and face 1 (the done marker) last.
        OutputFormat::Pts => {
            let faces = &annotation.faces;
            (1..faces.len())
                .chain((0..faces.len()).take(1))
                .map(|k| {
                    let one_based: Vec<_> = faces[k]
                        .landmarks
                        .iter()
                        .map(|p| [p[0] + 1.0, p[1] + 1.0])
                        .collect();
                    (pts_path(&job.out_dir, name, k), format_pts(&one_based))
                })
                .collect()
        }
    };
    new_set.extend(data.iter().map(|(path, _)| path.clone()));
    let Some(((marker, text), rest)) = data.split_last() else {
        return remove_stale_outputs(&job.out_dir, name, &new_set);
    };
    for (path, text) in rest {
        write_atomic(path, text.as_bytes())?;
    }
    remove_stale_outputs(&job.out_dir, name, &new_set)?;
    write_atomic(marker, text.as_bytes())
}

/// Writes each face's chip to `chips/<name>/<k>.png` and records it in the face, and the
/// records (file, transform and inverse per face) to `chips/<name>/chips.json`, so that they are
/// kept whatever the output format; the folder is made even for an image without faces, since
/// it marks the chips done. Returns the folder and the files written.
fn write_chips(
    out_dir: &Path,
    name: &str,
    image: &RgbImage,
    spec: ChipSpec,
    scheme: Scheme,
    faces: &mut [FaceAnnotation],
) -> Result<Vec<PathBuf>> {
    let dir = chips_dir(out_dir, name);
    let mut written = vec![dir.clone()];
    for (k, face) in faces.iter_mut().enumerate() {
        let chip = face_chip(spec, scheme, &face.landmarks)
            .map_err(|e| Error::InvalidInput(format!("chip of face {}: {e}", k + 1)))?;
        let mut png = Vec::new();
        cut_chip(image, &chip)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| Error::InvalidInput(format!("encoding chip {}: {e}", k + 1)))?;
        let file = format!("chips/{name}/{}.png", k + 1);
        let path = out_dir.join(&file);
        write_atomic(&path, &png)?;
        written.push(path);
        face.chip = Some(ChipRecord { file, chip });
    }
    let records: Vec<&ChipRecord> = faces.iter().filter_map(|f| f.chip.as_ref()).collect();
    let path = dir.join("chips.json");
    let text = serde_json::to_string_pretty(&records).unwrap_or_default() + "\n";
    write_atomic(&path, text.as_bytes())?;
    written.push(path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_outputs_of_an_image_go_and_its_new_set_and_other_images_stay() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let touch = |rel: &str| write_atomic(&out.join(rel), b"x").unwrap();
        // Face 1 missing: a run killed before its done marker.
        for rel in [
            "sub/a.jpg.json",
            "sub/a_2.pts",
            "sub/a_3.pts",
            "preview/sub/a.jpg",
            "chips/sub/a.jpg/1.png",
            "chips/sub/a.jpg/2.png",
            "sub/ab_1.pts",
            "sub/a_x.pts",
        ] {
            touch(rel);
        }
        let new_set = [out.join("sub/a_1.pts"), out.join("chips/sub/a.jpg")];
        remove_stale_outputs(out, "sub/a.jpg", &new_set).unwrap();
        let mut left: Vec<String> = walkdir::WalkDir::new(out)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().strip_prefix(out).unwrap().display().to_string())
            .collect();
        left.sort();
        // Another image's files and files that are no output of this one stay.
        assert_eq!(left, ["sub/a_x.pts", "sub/ab_1.pts"]);
        assert!(
            out.join("chips/sub/a.jpg").is_dir(),
            "the new set's chips folder"
        );
        remove_stale_outputs(out, "sub/a.jpg", &[]).unwrap();
        assert!(!out.join("chips/sub/a.jpg").exists());
    }
}
