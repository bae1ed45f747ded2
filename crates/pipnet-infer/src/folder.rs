//! Annotating a folder of images: walk, skip finished work, find faces, batch them through the
//! landmark model, write each image's outputs atomically, and record every failure without
//! stopping.
//!
//! Two threads overlap the work: a loader decodes images and runs the face detector while the
//! caller's thread runs landmark batches and writes. A bounded channel between them keeps
//! memory flat however large the folder is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use image::RgbImage;
use pipnet_core::FaceBox;
use pipnet_core::formats::{FaceAnnotation, ImageAnnotation, format_pts};

use crate::error::{Error, Result};
use crate::image_io::load_rgb;
use crate::pipeline::{Face, Faces, LocatedFace, Pipeline, locate};
use crate::preview;

/// File extensions treated as images when walking a folder.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp", "ppm", "pgm", "pnm",
];

/// How faces are found in each image.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FaceSource {
    /// The pipeline's face detector.
    Detect,
    /// Each image is one pre-cropped face: the centred square around its longest side.
    WholeImageIsFace,
    /// Tight landmark boxes per image, keyed by the image's path relative to its input folder
    /// (`/`-separated). An image without an entry is a failure, not an empty result.
    Boxes(HashMap<String, Vec<FaceBox>>),
}

impl FaceSource {
    /// Reads a `--boxes` file: a JSON object mapping image paths to lists of
    /// `[x0, y0, x1, y1]` boxes in pixels.
    pub fn read_boxes(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let boxes: HashMap<String, Vec<FaceBox>> = serde_json::from_str(&text).map_err(|e| {
            Error::InvalidInput(format!(
                "{}: expected a JSON object mapping image paths to lists of \
                     [x0, y0, x1, y1] boxes: {e}",
                path.display()
            ))
        })?;
        Ok(FaceSource::Boxes(boxes))
    }

    fn faces_of(&self, name: &str) -> Result<Faces> {
        match self {
            FaceSource::Detect => Ok(Faces::Detect),
            FaceSource::WholeImageIsFace => Ok(Faces::WholeImage),
            FaceSource::Boxes(map) => map
                .get(name)
                .map(|b| Faces::LandmarkBoxes(b.clone()))
                .ok_or_else(|| {
                    Error::InvalidInput(format!("no entry for {name:?} in the boxes file"))
                }),
        }
    }
}

/// What is written per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// `<image>.json`: boxes, scores, landmarks ([`ImageAnnotation`]).
    #[default]
    Json,
    /// `<image>.csv`: one row per face.
    Csv,
    /// `<image stem>_<k>.pts` per face (iBUG layout, 1-based pixel coordinates).
    Pts,
}

impl std::str::FromStr for OutputFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "json" => Ok(Self::Json),
            "csv" => Ok(Self::Csv),
            "pts" => Ok(Self::Pts),
            other => Err(Error::InvalidInput(format!(
                "unknown format {other:?} (expected json, csv or pts)"
            ))),
        }
    }
}

/// One folder run.
#[derive(Debug, Clone)]
pub struct FolderJob {
    /// Folders (walked recursively) and files.
    pub inputs: Vec<PathBuf>,
    pub out_dir: PathBuf,
    pub faces: FaceSource,
    pub format: OutputFormat,
    /// Also write a JPEG per image with boxes and landmarks drawn ([`preview_path`]).
    pub preview: bool,
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

/// The image files of `inputs` (files, or folders walked recursively), each folder's sorted by
/// relative path: the same walk as [`annotate_folder`].
pub fn image_paths(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    Ok(collect(inputs)?.into_iter().map(|item| item.path).collect())
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

/// The output of image `name` under `out_dir` that marks it done: the image's relative path
/// plus `.json` or `.csv` (so `a.jpg` and `a.png` never collide), or the first face's `.pts`.
pub fn output_path(out_dir: &Path, name: &str, format: OutputFormat) -> PathBuf {
    match format {
        OutputFormat::Json => out_dir.join(format!("{name}.json")),
        OutputFormat::Csv => out_dir.join(format!("{name}.csv")),
        OutputFormat::Pts => pts_path(out_dir, name, 0),
    }
}

/// The `.pts` file of face `k` (0-based) of image `name`: `<stem>_<k + 1>.pts`, as 300-W names
/// faces.
fn pts_path(out_dir: &Path, name: &str, k: usize) -> PathBuf {
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    out_dir.join(format!("{stem}_{}.pts", k + 1))
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

/// Removes temporaries a killed run left in `out_dir` (`write_atomic` names them `.tmp*`).
fn remove_stale_temporaries(out_dir: &Path) {
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
fn is_done(image: &Path, output: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((modified(image), modified(output)), (Some(i), Some(o)) if o >= i)
}

/// Writes `contents` to `path` through a temporary file in the same folder and a rename, so a
/// reader (or a killed run) never sees a partial file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let mut builder = tempfile::Builder::new();
    // tempfile creates private (0600) files; outputs are ordinary files others may read.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut tmp = builder.tempfile_in(dir).map_err(Error::io(dir))?;
    std::io::Write::write_all(&mut tmp, contents).map_err(Error::io(path))?;
    tmp.persist(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// What the loader thread hands over for one image.
enum Loaded {
    Skipped,
    Failed(Item, Error),
    Ready(Item, RgbImage, Vec<LocatedFace>),
}

/// Annotates every image of `job`: faces found as `job.faces` says, landmarks in batches of the
/// model's batch size across images. `on_image` is called once per image (done, skipped or
/// failed) so a caller can show progress.
pub fn annotate_folder(
    pipeline: &mut Pipeline,
    job: &FolderJob,
    mut on_image: impl FnMut(&FolderSummary),
) -> Result<FolderSummary> {
    let items = collect(&job.inputs)?;
    std::fs::create_dir_all(&job.out_dir).map_err(Error::io(&job.out_dir))?;
    remove_stale_temporaries(&job.out_dir);
    let mut summary = FolderSummary {
        images: items.len(),
        ..Default::default()
    };
    let batch = pipeline.model.batch_size();
    let rule = pipeline.model.metadata().crop;
    let min_face = pipeline.min_face;
    let mut detector = pipeline.detector.take();
    let (send, receive) = sync_channel::<Loaded>(batch);
    let result = std::thread::scope(|scope| {
        let detector = detector.as_mut();
        scope.spawn(move || load_all(items, job, detector, &rule, min_face, send));
        consume(pipeline, job, receive, &mut summary, &mut on_image)
    });
    pipeline.detector = detector;
    result?;
    let failures: String = summary
        .failures
        .iter()
        .map(|f| serde_json::to_string(f).unwrap_or_default() + "\n")
        .collect();
    write_atomic(&job.out_dir.join("failures.jsonl"), failures.as_bytes())?;
    Ok(summary)
}

/// Loader thread: decode each image and locate its faces, in order. Stops early when the
/// consumer has gone (an error there ends the run).
fn load_all(
    items: Vec<Item>,
    job: &FolderJob,
    mut detector: Option<&mut crate::detect::FaceDetector>,
    rule: &pipnet_core::CropRule,
    min_face: Option<f32>,
    send: SyncSender<Loaded>,
) {
    for item in items {
        let done = output_path(&job.out_dir, &item.name, job.format);
        let loaded = if !job.force && is_done(&item.path, &done) {
            Loaded::Skipped
        } else {
            let located = load_rgb(&item.path, job.max_pixels).and_then(|image| {
                let faces = job.faces.faces_of(&item.name)?;
                let found = locate(detector.as_deref_mut(), rule, min_face, &image, &faces)?;
                Ok((image, found))
            });
            match located {
                Ok((image, found)) => Loaded::Ready(item, image, found),
                Err(e) => Loaded::Failed(item, e),
            }
        };
        if send.send(loaded).is_err() {
            return;
        }
    }
}

/// Caller's thread: gather images until a batch of faces is ready, run it, write outputs.
fn consume(
    pipeline: &mut Pipeline,
    job: &FolderJob,
    receive: Receiver<Loaded>,
    summary: &mut FolderSummary,
    on_image: &mut impl FnMut(&FolderSummary),
) -> Result<()> {
    let batch = pipeline.model.batch_size();
    let mut pending: Vec<(Item, RgbImage, Vec<LocatedFace>)> = Vec::new();
    let mut pending_faces = 0;
    for loaded in receive {
        match loaded {
            Loaded::Skipped => {
                summary.skipped += 1;
                on_image(summary);
            }
            Loaded::Failed(item, e) => {
                summary.failures.push(Failure {
                    image: item.name,
                    error: e.to_string(),
                });
                on_image(summary);
            }
            Loaded::Ready(item, image, faces) => {
                pending_faces += faces.len();
                pending.push((item, image, faces));
                if pending_faces >= batch || pending.len() >= batch {
                    flush(pipeline, job, &mut pending, summary, on_image)?;
                    pending_faces = 0;
                }
            }
        }
    }
    flush(pipeline, job, &mut pending, summary, on_image)
}

/// Runs the pending images' faces as one batch and writes their outputs. A batch that fails at
/// inference is retried image by image so one bad input cannot sink its neighbours.
fn flush(
    pipeline: &mut Pipeline,
    job: &FolderJob,
    pending: &mut Vec<(Item, RgbImage, Vec<LocatedFace>)>,
    summary: &mut FolderSummary,
    on_image: &mut impl FnMut(&FolderSummary),
) -> Result<()> {
    let images: Vec<&RgbImage> = pending.iter().map(|(_, image, _)| image).collect();
    let located: Vec<&[LocatedFace]> = pending.iter().map(|(_, _, f)| f.as_slice()).collect();
    let results: Vec<Result<Vec<Face>>> = match pipeline.landmarks_of(&images, &located) {
        Ok(all) => all.into_iter().map(Ok).collect(),
        Err(_) if images.len() > 1 => images
            .iter()
            .zip(&located)
            .map(|(image, faces)| {
                let mut one = pipeline.landmarks_of(&[image], &[faces])?;
                Ok(one.pop().unwrap_or_default())
            })
            .collect(),
        Err(e) => vec![Err(e)],
    };
    for ((item, image, _), result) in pending.drain(..).zip(results) {
        let outcome = result.and_then(|faces| {
            write_outputs(job, &item.name, &image, &faces)?;
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

/// Writes one image's outputs, each atomically; the file that marks the image done
/// ([`output_path`]) goes last, so a killed run redoes the image rather than trusting a half.
fn write_outputs(job: &FolderJob, name: &str, image: &RgbImage, faces: &[Face]) -> Result<()> {
    let annotation = ImageAnnotation {
        image: name.to_string(),
        width: image.width(),
        height: image.height(),
        faces: faces
            .iter()
            .map(|f| FaceAnnotation {
                face_box: f.face_box(),
                score: f.score(),
                landmarks: f.landmarks.in_image.clone(),
                landmark_scores: f.landmarks.scores(),
            })
            .collect(),
    };
    if job.preview {
        let drawn = preview::draw(image, &annotation.faces)?;
        write_atomic(
            &preview_path(&job.out_dir, name),
            &preview::encode_jpeg(&drawn)?,
        )?;
    }
    match job.format {
        OutputFormat::Json => write_atomic(
            &output_path(&job.out_dir, name, job.format),
            annotation.to_json().as_bytes(),
        ),
        OutputFormat::Csv => write_atomic(
            &output_path(&job.out_dir, name, job.format),
            annotation.to_csv().as_bytes(),
        ),
        OutputFormat::Pts => {
            // Later faces first, so face 1 (the done marker) is written last.
            for (k, face) in annotation.faces.iter().enumerate().rev() {
                let one_based: Vec<_> = face
                    .landmarks
                    .iter()
                    .map(|p| [p[0] + 1.0, p[1] + 1.0])
                    .collect();
                write_atomic(
                    &pts_path(&job.out_dir, name, k),
                    format_pts(&one_based).as_bytes(),
                )?;
            }
            Ok(())
        }
    }
}
