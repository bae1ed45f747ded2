//! Annotating a folder of images: walk, skip finished work, find faces, batch them through the
//! landmark model, write each image's outputs atomically, and record every failure without
//! stopping.
//!
//! Loader threads (one per core when faces are detected, each with a detector session of its
//! own) decode images and find their faces while the caller's thread runs landmark batches
//! and writes. A bounded channel between them keeps memory flat however large the folder is.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

use image::RgbImage;
use pipnet_core::FaceBox;
use pipnet_core::formats::{
    ChipRecord, FaceAnnotation, ImageAnnotation, Provenance, RunSettings, format_pts,
};
use pipnet_core::{ChipSpec, Scheme, face_chip};

use crate::detect::{FaceDetector, RollSearch};
use crate::error::{Error, Result};
use crate::files::{IMAGE_EXTENSIONS, is_image, write_atomic};
use crate::image_io::load_rgb;
use crate::pipeline::{Face, Faces, LocatedFace, Pipeline, fan_out, loader_detectors, locate};
use crate::preprocess::cut_chip;
use crate::preview;
use crate::run_record::{RUN_RECORD, claim_output_folder};

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
    Boxes {
        boxes: HashMap<String, Vec<FaceBox>>,
        /// SHA-256 of the boxes file's text, recorded with the outputs.
        sha256: String,
    },
}

impl FaceSource {
    /// Reads a `--boxes` file: a JSON object mapping image paths to lists of
    /// `[x0, y0, x1, y1]` boxes in pixels.
    pub fn read_boxes(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        Self::boxes_from_json(&text, path)
    }

    /// [`Self::read_boxes`] on the file's text; `path` names it in errors. The boxes' values
    /// are checked per image, against the image ([`FaceBox::check_in_image`]).
    pub fn boxes_from_json(text: &str, path: &Path) -> Result<Self> {
        let boxes: HashMap<String, Vec<FaceBox>> = serde_json::from_str(text).map_err(|e| {
            Error::InvalidInput(format!(
                "{}: expected a JSON object mapping image paths to lists of \
                     [x0, y0, x1, y1] boxes: {e}",
                path.display()
            ))
        })?;
        Ok(FaceSource::Boxes {
            boxes,
            sha256: crate::runtime::sha256_hex(text.as_bytes()),
        })
    }

    /// The name outputs record for this source ([`RunSettings::faces`]).
    fn record_name(&self) -> &'static str {
        match self {
            FaceSource::Detect => "detector",
            FaceSource::WholeImageIsFace => "crops",
            FaceSource::Boxes { .. } => "boxes",
        }
    }

    fn faces_of(&self, name: &str) -> Result<Faces> {
        match self {
            FaceSource::Detect => Ok(Faces::Detect),
            FaceSource::WholeImageIsFace => Ok(Faces::WholeImage),
            FaceSource::Boxes { boxes, .. } => boxes
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
    /// Only this shard's images ([`Shard`]); `None`: all of them.
    pub shard: Option<Shard>,
    /// Also write an aligned chip per face ([`chips_dir`]).
    pub chips: Option<ChipSpec>,
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
    /// Images named: each image file found once (however many inputs name it), and each
    /// input, folder entry or boxes-file entry that could not be read as one.
    pub images: usize,
    pub annotated: usize,
    pub skipped: usize,
    pub faces: usize,
    /// Faces (of those kept) whose landmarks come from a second pass.
    pub second_passes: usize,
    /// Detected faces dropped as false: presence under the pipeline's `min_presence`, or
    /// landmarks over another face's.
    pub faces_dropped: usize,
    pub failures: Vec<Failure>,
    /// Folders under the inputs that were not walked because they hold a run's outputs (the
    /// output folder, or one with a [`RUN_RECORD`]).
    pub output_folders_skipped: Vec<PathBuf>,
}

/// An image to process: where it is, and the name its output is keyed by.
#[derive(Debug, Clone)]
struct Item {
    path: PathBuf,
    /// Path relative to the input folder (or the file name for a file input), `/`-separated.
    name: String,
}

/// The image files of `inputs` (files, or folders walked recursively), each folder's sorted by
/// relative path: the same walk as [`annotate_folder`], except that here the first entry the
/// walk cannot read is an error.
pub fn image_paths(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let walk = walk_inputs(inputs, None);
    if let Some(first) = walk.failures.into_iter().next() {
        return Err(Error::InvalidInput(format!(
            "{}: {}",
            first.image, first.error
        )));
    }
    Ok(walk.items.into_iter().map(|item| item.path).collect())
}

/// What a walk over the inputs found.
#[derive(Default)]
struct Walk {
    items: Vec<Item>,
    /// Every input or folder entry the walk could not read, or must not annotate.
    failures: Vec<Failure>,
    /// Output folders met on the way and not walked ([`is_output_folder`]).
    output_folders: Vec<PathBuf>,
}

/// True when `dir` holds a run's outputs: it is `out_dir` (canonical), or holds a
/// [`RUN_RECORD`]. A walk never enters one, so a run's previews are never annotated as photos
/// and an output folder inside the input cannot feed on itself.
fn is_output_folder(dir: &Path, out_dir: Option<&Path>) -> bool {
    dir.join(RUN_RECORD).is_file()
        || out_dir.is_some_and(|out| std::fs::canonicalize(dir).is_ok_and(|c| c == out))
}

/// The images of `inputs`, and a failure for every input or folder entry the walk could not
/// read (a missing input, a symbolic link loop or a broken link, an unreadable folder) or that
/// is a run's output: those are reported, never a reason to stop. `out_dir` is the run's
/// output folder, canonical. Photos that merely sit below `--out` (`annotate data/photos --out
/// data`) are fine: only the folders runs write images into (`preview/`, `chips/`) are not.
fn walk_inputs(inputs: &[PathBuf], out_dir: Option<&Path>) -> Walk {
    let mut walk = Walk::default();
    let written_by_runs = |path: &Path| {
        out_dir.is_some_and(|out| {
            std::fs::canonicalize(path).is_ok_and(|c| {
                c.starts_with(out.join("preview")) || c.starts_with(out.join("chips"))
            })
        })
    };
    for input in inputs {
        if input.is_file() {
            if written_by_runs(input) {
                walk.failures.push(Failure {
                    image: input.display().to_string(),
                    error: "is a preview or chip of this output folder; not annotated".into(),
                });
                continue;
            }
            let name = input.file_name().map(|n| n.to_string_lossy().into_owned());
            walk.items.push(Item {
                path: input.clone(),
                name: name.unwrap_or_default(),
            });
            continue;
        }
        if !input.is_dir() {
            walk.failures.push(Failure {
                image: input.display().to_string(),
                error: "no such file or folder".into(),
            });
            continue;
        }
        if is_output_folder(input, out_dir) || written_by_runs(input) {
            walk.failures.push(Failure {
                image: input.display().to_string(),
                error: format!(
                    "holds the outputs of a pipnet run (it is --out or its previews or chips, \
                     or holds {RUN_RECORD}); not annotated"
                ),
            });
            continue;
        }
        let mut found: Vec<Item> = Vec::new();
        let mut skipped = Vec::new();
        let entries = walkdir::WalkDir::new(input)
            .follow_links(true)
            .into_iter()
            .filter_entry(|entry| {
                let prune = entry.depth() > 0
                    && entry.file_type().is_dir()
                    && is_output_folder(entry.path(), out_dir);
                if prune {
                    skipped.push(entry.path().to_path_buf());
                }
                !prune
            });
        for entry in entries {
            match entry {
                Ok(entry) if entry.file_type().is_file() && is_image(entry.path()) => {
                    found.push(Item {
                        path: entry.path().to_path_buf(),
                        name: relative_name(input, entry.path()),
                    });
                }
                Ok(_) => {}
                Err(e) => walk.failures.push(Failure {
                    image: e
                        .path()
                        .map_or_else(|| input.display().to_string(), |p| relative_name(input, p)),
                    error: walk_error_text(&e),
                }),
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        walk.items.extend(found);
        walk.output_folders.extend(skipped);
    }
    walk
}

/// Drops images that are the same file as an earlier one (an input named twice, a file and its
/// folder), and refuses, naming both, two different images that would write the same output:
/// inputs whose relative paths agree, or (`.pts`, named by stem) `a.jpg` beside `a.png`.
fn unique_outputs(items: Vec<Item>, job: &FolderJob) -> Result<Vec<Item>> {
    let mut files: HashSet<PathBuf> = HashSet::new();
    let mut by_output: HashMap<PathBuf, usize> = HashMap::new();
    let mut kept: Vec<Item> = Vec::with_capacity(items.len());
    for item in items {
        let file = std::fs::canonicalize(&item.path).unwrap_or_else(|_| item.path.clone());
        if !files.insert(file) {
            continue;
        }
        let mut outputs = vec![output_stem(&job.out_dir, &item.name, job.format)];
        if job.preview {
            outputs.push(preview_path(&job.out_dir, &item.name));
        }
        for output in outputs {
            if let Some(&other) = by_output.get(&output) {
                let pts_hint = if job.format == OutputFormat::Pts {
                    " (.pts files are named by the image's name without its extension; \
                     --format json or csv keep it)"
                } else {
                    ""
                };
                return Err(Error::InvalidInput(format!(
                    "{} and {} would both write {}{pts_hint}: annotate them into separate \
                     --out folders, or rename one; nothing was written",
                    kept[other].path.display(),
                    item.path.display(),
                    output.display()
                )));
            }
            by_output.insert(output, kept.len());
        }
        kept.push(item);
    }
    Ok(kept)
}

/// `path` relative to the input folder `root`, `/`-separated: the name outputs are keyed by.
fn relative_name(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

/// What went wrong reading one folder entry, without the path (the failure names it).
fn walk_error_text(e: &walkdir::Error) -> String {
    if let Some(ancestor) = e.loop_ancestor() {
        return format!(
            "symbolic link loop (points back to {}); skipped",
            ancestor.display()
        );
    }
    match e.io_error() {
        Some(io) if io.kind() == std::io::ErrorKind::NotFound => {
            "broken symbolic link or vanished file; skipped".into()
        }
        Some(io) => format!("cannot read this entry: {io}; skipped"),
        None => format!("{e}; skipped"),
    }
}

/// A deterministic slice of a folder run, for N processes (cluster array jobs) that together
/// cover a folder exactly once: image `name` belongs to shard `index` of `count` when a hash of
/// its relative path is `index` modulo `count`. The hash (SHA-256) is the same on every machine
/// and in every run, so resuming a shard finds its own images again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based.
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub fn new(index: u32, count: u32) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(Error::InvalidInput(format!(
                "shard {index}/{count}: expected K/N with N >= 1 and 0 <= K < N"
            )));
        }
        Ok(Self { index, count })
    }

    pub fn contains(&self, name: &str) -> bool {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(name.as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(head) % u64::from(self.count) == u64::from(self.index)
    }

    /// The shard a cluster scheduler gave this process, from its environment (`var` looks a
    /// variable up): a Slurm job array (`SLURM_ARRAY_TASK_ID`, `..._COUNT`, and `..._MIN`,
    /// `..._STEP` for arrays that do not start at 0 or step by more than 1), or a Kubernetes
    /// Indexed Job (`JOB_COMPLETION_INDEX`; Kubernetes does not expose the number of
    /// completions, so it comes from `count`, else `PIPNET_SHARD_COUNT`). `count`, else
    /// `PIPNET_SHARD_COUNT`, also overrides Slurm's count. `None` outside both.
    pub fn from_scheduler(
        var: impl Fn(&str) -> Option<String>,
        count: Option<u32>,
    ) -> Result<Option<Self>> {
        let number = |key: &str| -> Result<Option<u32>> {
            var(key)
                .map(|v| {
                    v.trim().parse::<u32>().map_err(|_| {
                        Error::InvalidInput(format!("{key}={v:?} is not a whole number"))
                    })
                })
                .transpose()
        };
        let count = match count {
            Some(n) => Some(n),
            None => number("PIPNET_SHARD_COUNT")?,
        };
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let tasks = match count {
                Some(n) => n,
                None => number("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                    Error::InvalidInput(
                        "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: \
                         give the number of shards with --shard-count"
                            .into(),
                    )
                })?,
            };
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let index = id.checked_sub(min).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
                ))
            })? / step;
            return Self::new(index, tasks).map(Some);
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = count.ok_or_else(|| {
                Error::InvalidInput(
                    "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but the number of \
                     shards is not: pass --shard-count N or set PIPNET_SHARD_COUNT to the \
                     Job's completions"
                        .into(),
                )
            })?;
            return Self::new(index, count).map(Some);
        }
        Ok(None)
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidInput(format!("shard {s:?}: expected K/N, e.g. 0/4"));
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        Self::new(
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        )
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

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
fn output_stem(out_dir: &Path, name: &str, format: OutputFormat) -> PathBuf {
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
fn pts_path(out_dir: &Path, name: &str, k: usize) -> PathBuf {
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

/// The settings of `pipeline` and `faces` that decide a run's results.
pub fn run_settings(pipeline: &Pipeline, faces: &FaceSource) -> RunSettings {
    let detect = *faces == FaceSource::Detect;
    let detector = pipeline.detector.as_ref().filter(|_| detect);
    RunSettings {
        model: pipeline.model.id().clone(),
        faces: faces.record_name().into(),
        detector: detector.map(|d| d.id().clone()),
        boxes_sha256: match faces {
            FaceSource::Boxes { sha256, .. } => Some(sha256.clone()),
            _ => None,
        },
        // The size searched down to, the detector's default when none was asked for.
        min_face: detector.map(|d| pipeline.options.min_face.unwrap_or(d.settings().min_face)),
        second_pass: pipeline.options.second_pass.to_string(),
        roll_search: if detect {
            pipeline.options.roll_search.to_string()
        } else {
            String::new()
        },
        flip: pipeline.model.flip_average(),
        // Given boxes and crops are never dropped.
        min_presence: if detect {
            pipeline.options.min_presence
        } else {
            0.0
        },
        track: None,
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
fn remove_stale_outputs(out_dir: &Path, name: &str, new_set: &[PathBuf]) -> Result<()> {
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

/// What a loader thread hands over for one image.
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
    std::fs::create_dir_all(&job.out_dir).map_err(Error::io(&job.out_dir))?;
    let out_dir = std::fs::canonicalize(&job.out_dir).map_err(Error::io(&job.out_dir))?;
    let walk = walk_inputs(&job.inputs, Some(&out_dir));
    // Nothing at all to annotate is a wrong path or extension, not a finished run; a shard
    // left with no images of a folder that has some is fine.
    if walk.items.is_empty() && walk.failures.is_empty() {
        let inputs: Vec<String> = job.inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::InvalidInput(format!(
            "no images in {}: image files end in .{}",
            inputs.join(", "),
            IMAGE_EXTENSIONS.join(", .")
        )));
    }
    let mut unreadable = walk.failures;
    // Before the shard split: shards share one output folder.
    let mut items = unique_outputs(walk.items, job)?;
    if let Some(shard) = job.shard {
        items.retain(|item| shard.contains(&item.name));
        unreadable.retain(|f| shard.contains(&f.image));
    }
    unreadable.extend(unmatched_boxes(&job.faces, &items, job.shard));
    let made_by = Provenance {
        pipnet: env!("CARGO_PKG_VERSION").into(),
        settings: run_settings(pipeline, &job.faces),
    };
    let default_min_face = pipeline.detector.as_ref().map(|d| d.settings().min_face);
    claim_output_folder(&job.out_dir, &made_by, default_min_face, job.force, || {
        items
            .iter()
            .try_for_each(|item| remove_stale_outputs(&job.out_dir, &item.name, &[]))
    })?;
    remove_stale_temporaries(&job.out_dir);
    let mut summary = FolderSummary {
        images: items.len(),
        output_folders_skipped: walk.output_folders,
        ..Default::default()
    };
    let batch = pipeline.model.batch_size();
    let rule = pipeline.model.metadata().crop;
    let search = (pipeline.options.min_face, pipeline.options.roll_search);
    let sessions = match &pipeline.detector {
        Some(d) if job.faces == FaceSource::Detect => d.for_loaders(items.len()),
        _ => Ok(Vec::new()),
    };
    let result = sessions.and_then(|mut sessions| {
        let detectors = loader_detectors(&mut sessions);
        let load = |item, detector: Option<&mut FaceDetector>| {
            load_one(item, job, detector, &rule, search)
        };
        fan_out(items, detectors, batch, load, |receive| {
            let run = Run {
                job,
                made_by: &made_by,
                scheme: pipeline.model.metadata().scheme,
            };
            consume(pipeline, &run, receive, &mut summary, &mut on_image)
        })
    });
    result?;
    // Every input named counts: the images found and those the walk or the boxes file name
    // but that could not be read, so annotated + done + failed = images.
    summary.images += unreadable.len();
    summary.failures.extend(unreadable);
    // Loaders finish in no fixed order; the report should not depend on it.
    summary.failures.sort_by(|a, b| a.image.cmp(&b.image));
    let failures: String = summary
        .failures
        .iter()
        .map(|f| serde_json::to_string(f).unwrap_or_default() + "\n")
        .collect();
    write_atomic(&failures_path(&job.out_dir, job.shard), failures.as_bytes())?;
    Ok(summary)
}

/// A failure for each entry of a boxes file (of this shard) that names no input image: a typo
/// there would otherwise go unnoticed.
fn unmatched_boxes(faces: &FaceSource, items: &[Item], shard: Option<Shard>) -> Vec<Failure> {
    let FaceSource::Boxes { boxes: map, .. } = faces else {
        return Vec::new();
    };
    let names: HashSet<&str> = items.iter().map(|i| i.name.as_str()).collect();
    let mut missing: Vec<Failure> = map
        .keys()
        .filter(|key| !names.contains(key.as_str()) && shard.is_none_or(|s| s.contains(key)))
        .map(|key| Failure {
            image: key.clone(),
            error: "the boxes file has an entry for this image, but no input holds it (keys \
                    are paths relative to their input folder, `/`-separated)"
                .into(),
        })
        .collect();
    missing.sort_by(|a, b| a.image.cmp(&b.image));
    missing
}

/// On a loader thread: decode one image and locate its faces, unless its output is done.
fn load_one(
    item: Item,
    job: &FolderJob,
    detector: Option<&mut FaceDetector>,
    rule: &pipnet_core::CropRule,
    search: (Option<f32>, RollSearch),
) -> Loaded {
    let done = output_path(&job.out_dir, &item.name, job.format);
    let preview_done = !job.preview || is_done(&item.path, &preview_path(&job.out_dir, &item.name));
    let chips_done = job.chips.is_none() || chips_dir(&job.out_dir, &item.name).is_dir();
    if !job.force && is_done(&item.path, &done) && preview_done && chips_done {
        return Loaded::Skipped;
    }
    let located = load_rgb(&item.path, job.max_pixels).and_then(|image| {
        let faces = job.faces.faces_of(&item.name)?;
        let found = locate(detector, rule, search, &image, &faces)?;
        Ok((image, found))
    });
    match located {
        Ok((image, found)) => Loaded::Ready(item, image, found),
        Err(e) => Loaded::Failed(item, e),
    }
}

/// A job and what its outputs record as having made them.
struct Run<'a> {
    job: &'a FolderJob,
    made_by: &'a Provenance,
    scheme: Scheme,
}

/// Caller's thread: gather images until a batch of faces is ready, run it, write outputs.
fn consume(
    pipeline: &mut Pipeline,
    run: &Run<'_>,
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
                    flush(pipeline, run, &mut pending, summary, on_image)?;
                    pending_faces = 0;
                }
            }
        }
    }
    flush(pipeline, run, &mut pending, summary, on_image)
}

/// Runs the pending images' faces as one batch and writes their outputs. A batch that fails at
/// inference is retried image by image so one bad input cannot sink its neighbours.
fn flush(
    pipeline: &mut Pipeline,
    run: &Run<'_>,
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
        let outcome = result.and_then(|mut faces| {
            summary.faces_dropped += pipeline.drop_false_detections(&mut faces);
            write_outputs(run, &item.name, &image, &faces)?;
            Ok((faces.len(), faces.iter().filter(|f| f.second_pass).count()))
        });
        match outcome {
            Ok((n, second)) => {
                summary.annotated += 1;
                summary.faces += n;
                summary.second_passes += second;
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

/// Writes one image's outputs, each atomically, and removes what is left of its earlier ones;
/// the file that marks the image done ([`output_path`]) goes last, so a killed run redoes the
/// image rather than trusting a half.
fn write_outputs(run: &Run<'_>, name: &str, image: &RgbImage, faces: &[Face]) -> Result<()> {
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
        let drawn = preview::draw(image, &annotation.faces)?;
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
    fn shards_cover_every_name_exactly_once() {
        let names: Vec<String> = (0..500).map(|i| format!("dir/{i}.jpg")).collect();
        let shards: Vec<Shard> = (0..4).map(|k| Shard::new(k, 4).unwrap()).collect();
        let mut sizes = [0usize; 4];
        for name in &names {
            let owners: Vec<usize> = (0..4).filter(|&k| shards[k].contains(name)).collect();
            assert_eq!(owners.len(), 1, "{name} is in shards {owners:?}");
            sizes[owners[0]] += 1;
        }
        // A hash split, not a round robin: roughly even, never empty at this size.
        assert!(sizes.iter().all(|&n| (80..=170).contains(&n)), "{sizes:?}");
        assert!(Shard::new(0, 1).unwrap().contains("anything"));
    }

    #[test]
    fn shard_text_is_checked() {
        assert_eq!(
            "2/5".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 5 }
        );
        for bad in ["5/5", "1/0", "1", "a/3", "-1/3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad:?} accepted");
        }
    }

    fn env<'a>(pairs: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn schedulers_name_the_shard() {
        let shard = |pairs: &[(&str, &str)], count| Shard::from_scheduler(env(pairs), count);
        assert_eq!(shard(&[], None).unwrap(), None);
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ];
        assert_eq!(
            shard(&slurm, None).unwrap(),
            Some(Shard { index: 3, count: 8 })
        );
        // `--array=1-8` counts from 1; `--array=0-14:2` steps by 2.
        let from_one = [
            ("SLURM_ARRAY_TASK_ID", "8"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ];
        assert_eq!(
            shard(&from_one, None).unwrap(),
            Some(Shard { index: 7, count: 8 })
        );
        let stepped = [
            ("SLURM_ARRAY_TASK_ID", "14"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
        ];
        assert_eq!(
            shard(&stepped, None).unwrap(),
            Some(Shard { index: 7, count: 8 })
        );
        let k8s = [("JOB_COMPLETION_INDEX", "2")];
        assert_eq!(
            shard(&k8s, Some(3)).unwrap(),
            Some(Shard { index: 2, count: 3 })
        );
        let with_count = [("JOB_COMPLETION_INDEX", "2"), ("PIPNET_SHARD_COUNT", "5")];
        assert_eq!(
            shard(&with_count, None).unwrap(),
            Some(Shard { index: 2, count: 5 })
        );
        let bad_count = [("JOB_COMPLETION_INDEX", "0"), ("PIPNET_SHARD_COUNT", "x")];
        assert!(shard(&bad_count, None).is_err());
        let err = shard(&k8s, None).unwrap_err().to_string();
        assert!(err.contains("PIPNET_SHARD_COUNT"), "{err}");
        assert!(shard(&k8s, Some(2)).is_err(), "index 2 of 2 shards");
        assert!(shard(&[("SLURM_ARRAY_TASK_ID", "x")], Some(2)).is_err());
    }

    #[test]
    fn walk_reports_loops_broken_links_and_missing_inputs_and_goes_on() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("in");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.jpg"), b"x").unwrap();
        std::fs::write(root.join("b.png"), b"x").unwrap();
        std::fs::write(root.join("notes.txt"), b"x").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&root, root.join("sub/loop")).unwrap();
            std::os::unix::fs::symlink(root.join("gone.jpg"), root.join("broken.jpg")).unwrap();
        }
        let missing = tmp.path().join("missing");
        let Walk {
            items, failures, ..
        } = walk_inputs(&[root.clone(), missing.clone()], None);
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["b.png", "sub/a.jpg"]);
        let failed: Vec<(&str, &str)> = failures
            .iter()
            .map(|f| (f.image.as_str(), f.error.as_str()))
            .collect();
        assert!(
            failed.contains(&(missing.to_str().unwrap(), "no such file or folder")),
            "{failed:?}"
        );
        #[cfg(unix)]
        {
            assert!(
                failed
                    .iter()
                    .any(|(image, e)| *image == "sub/loop" && e.contains("loop")),
                "{failed:?}"
            );
            assert!(
                failed
                    .iter()
                    .any(|(image, e)| *image == "broken.jpg" && e.contains("broken")),
                "{failed:?}"
            );
            assert_eq!(failures.len(), 3, "{failed:?}");
        }
    }

    #[test]
    fn walk_skips_the_output_folder_and_folders_holding_a_run_record() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("in");
        for dir in ["out/preview", "old", "keep"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for file in ["a.jpg", "out/preview/a.jpg", "old/b.jpg", "keep/c.jpg"] {
            std::fs::write(root.join(file), b"x").unwrap();
        }
        std::fs::write(root.join("old").join(RUN_RECORD), b"{}").unwrap();
        let out = std::fs::canonicalize(root.join("out")).unwrap();
        let walk = walk_inputs(std::slice::from_ref(&root), Some(&out));
        let names: Vec<&str> = walk.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a.jpg", "keep/c.jpg"]);
        let mut skipped = walk.output_folders.clone();
        skipped.sort();
        assert_eq!(skipped, [root.join("old"), root.join("out")]);
        // The output folder named as an input, or a preview in it: failures, not images.
        let walk = walk_inputs(
            &[root.join("out"), root.join("out/preview/a.jpg")],
            Some(&out),
        );
        assert!(walk.items.is_empty());
        assert_eq!(walk.failures.len(), 2, "{:?}", walk.failures);
        // Photos below the output folder are photos: `annotate in/keep in/a.jpg --out in`.
        let above = std::fs::canonicalize(&root).unwrap();
        let walk = walk_inputs(&[root.join("keep"), root.join("a.jpg")], Some(&above));
        assert_eq!(walk.items.len(), 2, "{:?}", walk.failures);
    }

    fn job(out: &Path, format: OutputFormat, preview: bool) -> FolderJob {
        FolderJob {
            inputs: Vec::new(),
            out_dir: out.to_path_buf(),
            faces: FaceSource::Detect,
            format,
            preview,
            force: false,
            max_pixels: 1,
            shard: None,
            chips: None,
        }
    }

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

    #[test]
    fn inputs_writing_one_output_are_refused_and_the_same_file_counts_once() {
        let tmp = tempfile::tempdir().unwrap();
        for file in ["d1/a.jpg", "d2/a.jpg", "d1/a.png"] {
            let path = tmp.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let out = tmp.path().join("out");
        let items = |dirs: &[&str]| {
            let inputs: Vec<PathBuf> = dirs.iter().map(|d| tmp.path().join(d)).collect();
            walk_inputs(&inputs, None).items
        };
        // The same folder twice: each file once.
        let once = unique_outputs(items(&["d1", "d1"]), &job(&out, OutputFormat::Json, false));
        assert_eq!(once.unwrap().len(), 2);
        // d1/a.jpg and d2/a.jpg both want OUT/a.jpg.json.
        let err = unique_outputs(items(&["d1", "d2"]), &job(&out, OutputFormat::Json, false))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d1/a.jpg") && err.contains("d2/a.jpg"),
            "{err}"
        );
        assert!(err.contains("a.jpg.json"), "{err}");
        // a.jpg and a.png: distinct JSON names, one .pts stem.
        assert!(unique_outputs(items(&["d1"]), &job(&out, OutputFormat::Csv, true)).is_ok());
        let err = unique_outputs(items(&["d1"]), &job(&out, OutputFormat::Pts, false))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.jpg") && err.contains("a.png"), "{err}");
    }
}
