//! Annotating a folder of images: walk, skip finished work, find faces, batch them through the
//! landmark model, write each image's outputs atomically, and record every failure without
//! stopping.
//!
//! Loader threads (one per core when faces are detected, each with a detector session of its
//! own) decode images and find their faces while the caller's thread runs landmark batches
//! and writes. A bounded channel between them keeps memory flat however large the folder is.
//!
//! Along the data flow: `walk` (which files, under which names), `shard` (a cluster job's
//! slice), the run here, and `outputs` (where an image's outputs go and how they replace an
//! earlier run's); the run record is `crate::run_record`'s.

use std::collections::HashSet;
use std::sync::mpsc::Receiver;

use image::RgbImage;
use pipnet_core::formats::{Provenance, RunSettings};

use crate::detect::{FaceDetector, RollSearch};
use crate::error::{Error, Result};
use crate::files::{IMAGE_EXTENSIONS, write_atomic};
use crate::image_io::load_rgb;
use crate::pipeline::{Face, LocatedFace, Pipeline, fan_out, loader_detectors, locate};
use crate::run_record::claim_output_folder;

mod job;
mod outputs;
mod shard;
mod walk;

pub use job::{FaceSource, Failure, FolderJob, FolderSummary, OutputFormat};
pub use outputs::{chips_dir, failures_path, output_path, preview_path};
pub use shard::Shard;
pub use walk::image_paths;

use job::Run;
use outputs::{is_done, remove_stale_outputs, remove_stale_temporaries, write_outputs};
use walk::{Item, unique_outputs, walk_inputs};

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
