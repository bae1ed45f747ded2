//! `pipnet bench --peer dlib`: our whole pipeline and dlib's on the same photos in one run,
//! with the same number of threads, and optionally both scored on the same labeled faces, each
//! with its own face detector. dlib runs in Python (`python-export`'s `peer_dlib`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use pipnet_core::Scheme;
use pipnet_core::metrics::{Summary, nme};
use pipnet_infer::bench::{Throughput, bench_photos};
use pipnet_infer::eval::{EvalCrops, evaluate, landmark_box, pipeline_detector_crops};
use pipnet_infer::image_io::DEFAULT_MAX_PIXELS;
use pipnet_infer::labeled::{LabeledFace, read_labeled, split_validation};
use pipnet_infer::{Pipeline, PipelineOptions};
use serde_json::{Value, json};

use super::python_reference::export_package;

/// Accuracy of one pipeline on labeled faces with its own detector.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scored {
    /// Faces its detector found (IoU > 0.3 with the true landmark box), of all faces.
    pub found: usize,
    pub faces: usize,
    /// Over the faces it found.
    pub nme: f32,
    pub failure_rate: f32,
    /// NME over the faces both pipelines' detectors found, the like-for-like figure.
    pub nme_on_common: f32,
    pub common: usize,
}

/// Scores both pipelines from their per-face NMEs (None: that detector missed the face).
fn score_both(ours: &[Option<f32>], theirs: &[Option<f32>]) -> (Scored, Scored) {
    let common: Vec<(f32, f32)> = ours
        .iter()
        .zip(theirs)
        .filter_map(|(a, b)| Some(((*a)?, (*b)?)))
        .collect();
    let score = |nmes: &[Option<f32>], on_common: Vec<f32>| {
        let found: Vec<f32> = nmes.iter().flatten().copied().collect();
        let summary = Summary::new(&found, 0.1);
        Scored {
            found: found.len(),
            faces: nmes.len(),
            nme: summary.nme,
            failure_rate: summary.failure_rate,
            nme_on_common: Summary::new(&on_common, 0.1).nme,
            common: on_common.len(),
        }
    };
    (
        score(ours, common.iter().map(|c| c.0).collect()),
        score(theirs, common.iter().map(|c| c.1).collect()),
    )
}

/// What the comparison measured; serialised as `pipnet bench --json`'s `peer` object.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerReport {
    pub peer: String,
    pub threads: usize,
    /// Which of our faces got a second landmark pass: `off`, `auto` or `always`.
    pub second_pass: String,
    /// Whether each crop was also run mirrored and averaged (`--flip`).
    pub flip: bool,
    pub ours: Throughput,
    pub dlib: Throughput,
    pub photos_per_s_over_dlib: f64,
    pub faces_per_s_over_dlib: f64,
    pub ours_labeled: Option<Scored>,
    pub dlib_labeled: Option<Scored>,
}

/// The labeled faces of `data` (the `split` validation side only, when given).
fn labeled_faces(data: &Path, split: Option<(f64, u64)>) -> anyhow::Result<Vec<LabeledFace>> {
    let faces = read_labeled(data, None)?;
    Ok(match split {
        Some((fraction, seed)) => split_validation(faces, fraction, seed).1,
        None => faces,
    })
}

/// How the comparison runs.
pub struct PeerRun {
    /// Threads for each pipeline.
    pub threads: usize,
    /// Measured rounds over the photos.
    pub repeat: usize,
    /// Ours, as `annotate` would run with them.
    pub options: PipelineOptions,
    /// Labeled faces to score both on: their folder, and the validation split to keep.
    pub labeled: Option<(PathBuf, Option<(f64, u64)>)>,
    /// The Python that runs dlib.
    pub python: PathBuf,
}

/// Runs the comparison. `pipeline` must have its detector.
pub fn compare_with_dlib(
    run: &PeerRun,
    pipeline: &mut Pipeline,
    images: &[PathBuf],
) -> anyhow::Result<PeerReport> {
    let labeled = match &run.labeled {
        Some((data, split)) => labeled_faces(data, *split)?,
        None => Vec::new(),
    };
    pipeline.set_options(run.options)?;
    let ours = bench_photos(pipeline, images, run.repeat).context("timing our pipeline")?;
    let answer = run_dlib(run, images, &labeled)?;
    let dlib: Throughput = serde_json::from_value(answer["timing"].clone())
        .context("reading dlib's timing from peer_dlib")?;
    let (ours_labeled, dlib_labeled) = if labeled.is_empty() {
        (None, None)
    } else {
        let points: Vec<Option<Vec<[f32; 2]>>> = serde_json::from_value(answer["labeled"].clone())
            .context("reading dlib's landmarks from peer_dlib")?;
        let (ours, theirs) = score_both(
            &nmes_of_ours(pipeline, &labeled)?,
            &nmes_of_points(&labeled, &points)?,
        );
        (Some(ours), Some(theirs))
    };
    Ok(PeerReport {
        peer: "dlib".into(),
        threads: run.threads,
        second_pass: pipeline.options().second_pass.to_string(),
        flip: pipeline.options().flip,
        photos_per_s_over_dlib: ours.photos_per_second / dlib.photos_per_second,
        faces_per_s_over_dlib: ours.faces_per_second / dlib.faces_per_second,
        ours,
        dlib,
        ours_labeled,
        dlib_labeled,
    })
}

/// Our detector, then landmarks (refined with `--refine`): each labeled face's NME, None
/// where the detector missed it.
fn nmes_of_ours(
    pipeline: &mut Pipeline,
    faces: &[LabeledFace],
) -> anyhow::Result<Vec<Option<f32>>> {
    let detected = pipeline_detector_crops(pipeline, faces, DEFAULT_MAX_PIXELS)?;
    let crops = EvalCrops::Given(&detected.located);
    let (results, _) = evaluate(pipeline, &detected.found, crops, 0.1, DEFAULT_MAX_PIXELS)?;
    let mut nmes = vec![None; faces.len()];
    for (&i, r) in detected.index.iter().zip(results) {
        nmes[i] = Some(r.nme);
    }
    Ok(nmes)
}

/// NME of dlib's points against the truth, None where its detector missed the face.
fn nmes_of_points(
    faces: &[LabeledFace],
    points: &[Option<Vec<[f32; 2]>>],
) -> anyhow::Result<Vec<Option<f32>>> {
    if points.len() != faces.len() {
        bail!(
            "peer_dlib answered for {} faces, asked for {}",
            points.len(),
            faces.len()
        );
    }
    faces
        .iter()
        .zip(points)
        .map(|(face, p)| {
            p.as_ref()
                .map(|p| nme(p, &face.points, Scheme::W300_68))
                .transpose()
        })
        .collect::<Result<_, _>>()
        .context("scoring dlib's landmarks")
}

/// Runs `python -m pipnet_export.peer_dlib` and returns its answer.
fn run_dlib(run: &PeerRun, images: &[PathBuf], labeled: &[LabeledFace]) -> anyhow::Result<Value> {
    let package = export_package()
        .context("python-export/src not found: run `pipnet bench --peer` from the checkout")?;
    let cache = pipnet_infer::runtime::cache_dir()
        .context("no cache folder: set PIPNET_CACHE_DIR")?
        .join("dlib");
    let faces: Vec<Value> = labeled
        .iter()
        .map(|f| {
            let b = landmark_box(f)?;
            Ok(json!({"image": f.image, "box": [b.x0, b.y0, b.x1, b.y1]}))
        })
        .collect::<anyhow::Result<_>>()?;
    let dir = tempfile::tempdir()?;
    let request = dir.path().join("request.json");
    let body =
        json!({"images": images, "threads": run.threads, "repeat": run.repeat, "faces": faces});
    std::fs::write(&request, body.to_string())?;
    let python = &run.python;
    let output = Command::new(python)
        .args(["-m", "pipnet_export.peer_dlib"])
        .arg(&request)
        .arg("--cache")
        .arg(&cache)
        .env("PYTHONPATH", &package)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "the dlib pipeline failed ({}): {}",
            python.display(),
            stderr.trim().lines().last().unwrap_or("no output")
        );
    }
    serde_json::from_slice(&output.stdout).context("reading peer_dlib's answer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_faces_are_scored_alike() {
        let ours = [Some(0.02), None, Some(0.04), Some(0.2)];
        let theirs = [Some(0.03), Some(0.01), None, Some(0.1)];
        let (a, b) = score_both(&ours, &theirs);
        assert_eq!((a.found, b.found, a.faces, a.common), (3, 3, 4, 2));
        assert!((a.nme_on_common - 0.11).abs() < 1e-6, "{a:?}");
        assert!((b.nme_on_common - 0.065).abs() < 1e-6, "{b:?}");
        assert!((a.failure_rate - 1.0 / 3.0).abs() < 1e-6, "{a:?}");
    }
}
