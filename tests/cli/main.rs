//! End-to-end: the real `pipnet` binary on real and deliberately broken images.

#[path = "../common/mod.rs"]
mod common;

mod annotate;
mod bench;
mod eval;
mod pose;
mod runtime;
mod track;
#[cfg(feature = "train")]
mod train;

use std::path::{Path, PathBuf};
use std::process::Command;

use image::{ImageBuffer, ImageEncoder, Luma, Rgb, RgbImage, Rgba};
use pipnet_core::formats::ImageAnnotation;
use pipnet_infer::run_record::RUN_RECORD;
use pipnet_train::seeded::tiny_spec;

/// The real `pipnet` binary. These tests are pipnet-cli's integration tests (see its
/// Cargo.toml), so cargo builds the binary with them and names it here.
fn pipnet_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pipnet"))
}

/// The first NME `pipnet eval` printed.
fn printed_nme(stdout: &str) -> f32 {
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("NME"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no NME in {stdout}"))
}

/// Runs `command` (a script) and fails the test with its stderr unless it succeeded.
fn succeeds(command: &mut Command) -> std::process::Output {
    let output = command.output().expect("run the script");
    assert!(
        output.status.success(),
        "{:?}: {}",
        command.get_args().next().unwrap_or_default(),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `pipnet ARGS` and returns (exit code, stdout, stderr).
fn run_pipnet(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(pipnet_bin())
        .args(args)
        .output()
        .expect("run pipnet");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Three real photos from the labeled data set beside the repo (`../shared/data/face68-train`).
fn real_photos() -> Vec<PathBuf> {
    face_photos(3)
}

/// A folder `dir` holding copies of `photos` and their `.pts` files: labeled faces to evaluate
/// or calibrate on.
fn labeled_folder(dir: &Path, photos: Vec<PathBuf>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for photo in photos {
        for file in [photo.clone(), photo.with_extension("pts")] {
            std::fs::copy(&file, dir.join(file.file_name().unwrap())).unwrap();
        }
    }
    dir.to_path_buf()
}

/// The first `n` photos of `../shared/data/face68-train` (face crops, at most 512 px).
fn face_photos(n: usize) -> Vec<PathBuf> {
    let dir = common::repo_root().join("../shared/data/face68-train");
    let mut photos: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the tests need ../shared beside the repo)",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    photos.sort();
    photos.truncate(n);
    photos
}

fn read_annotation(out: &Path, name: &str) -> ImageAnnotation {
    let path = out.join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ImageAnnotation::from_json(&text).unwrap()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// `pipnet annotate ARGS` with the tiny seeded model on each image as one crop (fast).
fn annotate_crops(model: &Path, inputs: &[&Path], out: &Path, extra: &[&str]) -> (i32, String) {
    let mut args: Vec<String> = vec!["annotate".into()];
    args.extend(inputs.iter().map(|p| p.display().to_string()));
    args.extend(
        [
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from),
    );
    args.push("--crops".into());
    args.extend(extra.iter().map(|s| s.to_string()));
    let (code, _, stderr) = run_pipnet(&args.iter().map(String::as_str).collect::<Vec<_>>());
    (code, stderr)
}

/// A face photo copied to each of `names` under `root`.
fn photo_copies(root: &Path, names: &[&str]) {
    let photo = &real_photos()[0];
    for name in names {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if name.ends_with(".png") {
            image::open(photo).unwrap().save(&path).unwrap();
        } else {
            std::fs::copy(photo, &path).unwrap();
        }
    }
}
