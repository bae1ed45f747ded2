//! Annotating a folder of images: walk, skip finished work, batch faces through the model,
//! write one JSON per image atomically, and record every failure without stopping.

use std::path::{Path, PathBuf};

use image::RgbImage;
use pipnet_core::FaceCrop;
use pipnet_core::formats::{FaceAnnotation, ImageAnnotation};

use crate::error::{Error, Result};
use crate::image_io::load_rgb;
use crate::model::LandmarkModel;

/// File extensions treated as images when walking a folder.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp", "ppm", "pgm", "pnm",
];

/// How faces are found in each image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaceSource {
    /// Each image is one pre-cropped face: the centred square around its longest side.
    WholeImageIsFace,
}

/// One folder run.
#[derive(Debug, Clone)]
pub struct FolderJob {
    /// Folders (walked recursively) and files.
    pub inputs: Vec<PathBuf>,
    pub out_dir: PathBuf,
    pub faces: FaceSource,
    /// Redo images whose output is already newer than the image.
    pub force: bool,
    pub max_pixels: u64,
}

/// One image that could not be annotated.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Failure {
    pub image: String,
    pub error: String,
}

/// What a folder run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FolderSummary {
    pub images: usize,
    pub annotated: usize,
    pub skipped: usize,
    pub faces: usize,
    pub failures: Vec<Failure>,
}

/// An image to process: where it is, and the name its output is keyed by.
#[derive(Debug, Clone)]
struct Item {
    path: PathBuf,
    /// Path relative to the input folder (or the file name for a file input), `/`-separated.
    name: String,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn collect(inputs: &[PathBuf]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for input in inputs {
        if input.is_file() {
            let name = input.file_name().map(|n| n.to_string_lossy().into_owned());
            items.push(Item {
                path: input.clone(),
                name: name.unwrap_or_default(),
            });
            continue;
        }
        if !input.is_dir() {
            return Err(Error::Io {
                path: input.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            });
        }
        let mut found: Vec<Item> = Vec::new();
        for entry in walkdir::WalkDir::new(input).follow_links(true) {
            let entry = entry.map_err(|e| Error::Io {
                path: e.path().unwrap_or(input).to_path_buf(),
                source: e.into(),
            })?;
            if entry.file_type().is_file() && is_image(entry.path()) {
                let rel = entry.path().strip_prefix(input).unwrap_or(entry.path());
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                found.push(Item {
                    path: entry.path().to_path_buf(),
                    name: parts.join("/"),
                });
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        items.extend(found);
    }
    Ok(items)
}

/// The JSON output of `name` under `out_dir`: the image's relative path plus `.json`, so
/// `a.jpg` and `a.png` never collide.
pub fn output_path(out_dir: &Path, name: &str) -> PathBuf {
    out_dir.join(format!("{name}.json"))
}

/// True when `output` exists and was modified after `image`.
fn is_done(image: &Path, output: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((modified(image), modified(output)), (Some(i), Some(o)) if o >= i)
}

/// Writes `contents` to `path` through a temporary file in the same folder and a rename, so a
/// reader (or a killed run) never sees a partial file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(Error::io(dir))?;
    std::io::Write::write_all(&mut tmp, contents).map_err(Error::io(path))?;
    tmp.persist(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Annotates every image of `job`, batching faces across images. `on_image` is called once per
/// image (done, skipped or failed) so a caller can show progress.
pub fn annotate_folder(
    model: &mut LandmarkModel,
    job: &FolderJob,
    mut on_image: impl FnMut(&FolderSummary),
) -> Result<FolderSummary> {
    let items = collect(&job.inputs)?;
    let mut summary = FolderSummary {
        images: items.len(),
        ..Default::default()
    };
    let batch = model.batch_size();
    let mut pending: Vec<(Item, RgbImage)> = Vec::with_capacity(batch);
    for item in items {
        let out = output_path(&job.out_dir, &item.name);
        if !job.force && is_done(&item.path, &out) {
            summary.skipped += 1;
            on_image(&summary);
            continue;
        }
        match load_rgb(&item.path, job.max_pixels) {
            Ok(image) => pending.push((item, image)),
            Err(e) => {
                summary.failures.push(Failure {
                    image: item.name,
                    error: e.to_string(),
                });
                on_image(&summary);
            }
        }
        if pending.len() == batch {
            flush(model, job, &mut pending, &mut summary, &mut on_image)?;
        }
    }
    flush(model, job, &mut pending, &mut summary, &mut on_image)?;
    let failures: String = summary
        .failures
        .iter()
        .map(|f| serde_json::to_string(f).unwrap_or_default() + "\n")
        .collect();
    write_atomic(&job.out_dir.join("failures.jsonl"), failures.as_bytes())?;
    Ok(summary)
}

/// Runs the pending images as one batch and writes their outputs. A batch that fails at
/// inference is retried image by image so one bad input cannot sink its neighbours.
fn flush(
    model: &mut LandmarkModel,
    job: &FolderJob,
    pending: &mut Vec<(Item, RgbImage)>,
    summary: &mut FolderSummary,
    on_image: &mut impl FnMut(&FolderSummary),
) -> Result<()> {
    // The crops of each pending image, decided once.
    let crops: Vec<Vec<FaceCrop>> = pending
        .iter()
        .map(|(_, image)| match job.faces {
            FaceSource::WholeImageIsFace => {
                vec![FaceCrop::whole_image(image.width(), image.height())]
            }
        })
        .collect();
    let images: &[(Item, RgbImage)] = pending;
    let faces_of = |i: usize| crops[i].iter().map(move |&c| (&images[i].1, c));
    let faces: Vec<(&RgbImage, FaceCrop)> = (0..images.len()).flat_map(faces_of).collect();
    let results: Vec<Result<Vec<crate::FaceLandmarks>>> = match model.landmarks(&faces) {
        Ok(all) => {
            let mut it = all.into_iter();
            crops
                .iter()
                .map(|c| Ok(it.by_ref().take(c.len()).collect()))
                .collect()
        }
        Err(_) if images.len() > 1 => (0..images.len())
            .map(|i| model.landmarks(&faces_of(i).collect::<Vec<_>>()))
            .collect(),
        Err(e) => vec![Err(e)],
    };
    for ((item, image), result) in pending.drain(..).zip(results) {
        let outcome = result.and_then(|faces| {
            let annotation = ImageAnnotation {
                image: item.name.clone(),
                width: image.width(),
                height: image.height(),
                faces: faces
                    .iter()
                    .map(|f| FaceAnnotation {
                        face_box: f.crop.bounds(),
                        score: 1.0,
                        landmarks: f.in_image.clone(),
                        landmark_scores: f.scores(),
                    })
                    .collect(),
            };
            write_atomic(
                &output_path(&job.out_dir, &item.name),
                annotation.to_json().as_bytes(),
            )?;
            Ok(faces.len())
        });
        match outcome {
            Ok(n) => {
                summary.annotated += 1;
                summary.faces += n;
            }
            Err(e) => summary.failures.push(Failure {
                image: item.name,
                error: e.to_string(),
            }),
        }
        on_image(summary);
    }
    Ok(())
}
