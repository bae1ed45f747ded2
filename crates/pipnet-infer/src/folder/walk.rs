//! The walk over a run's inputs: which image files it annotates, under which names, and what
//! it could not read.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::job::{Failure, FolderJob, OutputFormat};
use super::outputs::{output_stem, preview_path};
use crate::error::{Error, Result};
use crate::files::is_image;
use crate::run_record::RUN_RECORD;

/// An image to process: where it is, and the name its output is keyed by.
#[derive(Debug, Clone)]
pub(super) struct Item {
    pub(super) path: PathBuf,
    /// Path relative to the input folder (or the file name for a file input), `/`-separated.
    pub(super) name: String,
}

/// The image files of `inputs` (files, or folders walked recursively), each folder's sorted by
/// relative path: the same walk as [`annotate_folder`](super::annotate_folder), except that here the first entry the
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
pub(super) struct Walk {
    pub(super) items: Vec<Item>,
    /// Every input or folder entry the walk could not read, or must not annotate.
    pub(super) failures: Vec<Failure>,
    /// Output folders met on the way and not walked ([`is_output_folder`]).
    pub(super) output_folders: Vec<PathBuf>,
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
pub(super) fn walk_inputs(inputs: &[PathBuf], out_dir: Option<&Path>) -> Walk {
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
pub(super) fn unique_outputs(items: Vec<Item>, job: &FolderJob) -> Result<Vec<Item>> {
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

#[cfg(test)]
mod tests {
    use super::super::job::FaceSource;
    use super::*;

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
            pose_axes: false,
            force: false,
            max_pixels: 1,
            shard: None,
            chips: None,
        }
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
