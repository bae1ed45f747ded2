//! What a folder run is asked to do, and what it reports: the types the walk, the outputs and
//! the run share.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pipnet_core::formats::Provenance;
use pipnet_core::{ChipSpec, FaceBox, Scheme};

use super::shard::Shard;
use crate::error::{Error, Result};
use crate::pipeline::Faces;

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
    pub(super) fn record_name(&self) -> &'static str {
        match self {
            FaceSource::Detect => "detector",
            FaceSource::WholeImageIsFace => "crops",
            FaceSource::Boxes { .. } => "boxes",
        }
    }

    pub(super) fn faces_of(&self, name: &str) -> Result<Faces> {
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
    /// `<image>.json`: boxes, scores, landmarks ([`ImageAnnotation`](pipnet_core::formats::ImageAnnotation)).
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
    /// Also write a JPEG per image with boxes and landmarks drawn ([`preview_path`](super::preview_path)).
    pub preview: bool,
    /// Draw each face's head-pose axes on the previews ([`Marks::pose_axes`](crate::preview::Marks::pose_axes)).
    pub pose_axes: bool,
    /// Redo images whose output is already newer than the image.
    pub force: bool,
    pub max_pixels: u64,
    /// Only this shard's images ([`Shard`]); `None`: all of them.
    pub shard: Option<Shard>,
    /// Also write an aligned chip per face ([`chips_dir`](super::chips_dir)).
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
    /// output folder, or one with a [`RUN_RECORD`](crate::run_record::RUN_RECORD)).
    pub output_folders_skipped: Vec<PathBuf>,
}

/// A job and what its outputs record as having made them.
pub(super) struct Run<'a> {
    pub(super) job: &'a FolderJob,
    pub(super) made_by: &'a Provenance,
    pub(super) scheme: Scheme,
}
