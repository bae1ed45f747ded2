//! Helpers shared by the end-to-end tests: the real `pipnet` binary, seeded contract graphs,
//! and a pinned Python environment for the reference checks.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `target/<profile>`, found from the running test executable (`target/<profile>/deps/..`).
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// The repository root: the nearest folder above the package that holds `Cargo.lock`.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .unwrap_or(manifest)
        .to_path_buf()
}

/// The shipped default landmark model (the graph built into the library).
pub fn shipped_model() -> PathBuf {
    repo_root()
        .join("models")
        .join(pipnet_infer::model::BUILTIN_FILE)
}

/// A command of the test [`python`] with `python-export/src` importable: `pipnet_export` as
/// the repository has it, not installed.
pub fn python_export() -> Command {
    let mut command = Command::new(python());
    command.env("PYTHONPATH", repo_root().join("python-export/src"));
    command
}

/// A Python interpreter with `python-export/requirements-test.txt` installed (hash-checked)
/// in `target/test-python`. Created on first use; a file lock serialises concurrent test
/// processes.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = target_profile_dir()
                .parent()
                .expect("target dir")
                .join("test-python");
            let python = venv.join("bin").join("python");
            let requirements = repo_root().join("python-export/requirements-test.txt");
            let stamp = venv.join("installed-requirements.txt");
            let wanted = std::fs::read_to_string(&requirements).expect("read requirements");
            std::fs::create_dir_all(&venv).expect("create venv folder");
            let lock = std::fs::File::create(venv.with_extension("lock")).expect("lock file");
            lock.lock().expect("lock the test venv");
            if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
                let run = |cmd: &mut Command| {
                    let out = cmd.output().expect("start python");
                    assert!(
                        out.status.success(),
                        "{cmd:?} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                };
                let system = std::env::var("PIPNET_PYTHON").unwrap_or_else(|_| "python3".into());
                run(Command::new(system)
                    .args(["-m", "venv", "--clear"])
                    .arg(&venv));
                run(Command::new(&python)
                    .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                    .args(["--require-hashes", "--only-binary=:all:", "-r"])
                    .arg(&requirements));
                std::fs::write(&stamp, &wanted).expect("write stamp");
            }
            python
        })
        .clone()
}

/// Writes a seeded contract graph (`tiny` by default) into `dir` and returns its path.
pub fn seeded_model(dir: &Path, spec: pipnet_train::NetworkSpec) -> PathBuf {
    let path = dir.join("seeded.onnx");
    pipnet_train::seeded::write_seeded_model(&path, spec, 11).expect("write seeded model");
    path
}

/// How many times each graph built into the library (landmark model, detector) occurs in the
/// file at `path`: a chunk from the middle of each graph's bytes, searched in the file.
pub fn embedded_graph_copies(path: &Path) -> [usize; 2] {
    let file = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    [
        pipnet_infer::model::BUILTIN_GRAPH,
        pipnet_infer::detect::BUILTIN_GRAPH,
    ]
    .map(|graph| {
        let middle = graph.len() / 2;
        let needle = &graph[middle..middle + 256];
        file.windows(needle.len()).filter(|w| *w == needle).count()
    })
}

/// A video made from one labeled photo: frame `t` is a `size` x `size` view of the photo through
/// a similarity that drifts smoothly with `t` (`motion` 0: a still camera; 1: shifts of about
/// 15% of the view, scale changes of 15%, turns of 0.3 radians), plus `noise` (grey levels,
/// uniform, seeded). Returns each frame with the face's true landmarks in it.
pub fn synthetic_video(
    photo: &image::RgbImage,
    landmarks: &[[f32; 2]],
    frames: usize,
    size: u32,
    motion: f32,
    noise: f32,
    seed: u64,
) -> Vec<(image::RgbImage, Vec<[f32; 2]>)> {
    use pipnet_infer::core::{FaceBox, FaceChip, Similarity};
    let b = FaceBox::around(landmarks).expect("landmarks");
    let centre = b.center();
    let side = 2.5 * b.width().max(b.height());
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..frames)
        .map(|t| {
            let phase = |period: f32| (std::f32::consts::TAU * t as f32 / period).sin();
            let angle = f64::from(motion * 0.3 * phase(60.0));
            let scale = f64::from(side * (1.0 + motion * 0.15 * phase(45.0))) / f64::from(size);
            let shift = [
                motion * side * 0.15 * phase(50.0),
                motion * side * 0.15 * phase(70.0),
            ];
            let (a, c) = (scale * angle.cos(), scale * angle.sin());
            let half = (f64::from(size) - 1.0) / 2.0;
            let tx = f64::from(centre[0] + shift[0]) - (a * half - c * half);
            let ty = f64::from(centre[1] + shift[1]) - (c * half + a * half);
            let to_image = Similarity([[a, -c, tx], [c, a, ty]]);
            let chip = FaceChip {
                size,
                to_chip: to_image.inverse(),
                to_image,
                residual: 0.0,
            };
            let mut frame = pipnet_infer::preprocess::cut_chip(photo, &chip);
            for v in frame.iter_mut() {
                *v = (f32::from(*v) + noise * uniform())
                    .round()
                    .clamp(0.0, 255.0) as u8;
            }
            let truth = landmarks.iter().map(|&p| chip.to_chip.apply(p)).collect();
            (frame, truth)
        })
        .collect()
}

/// The sample photo folder of the README (`examples/photos`).
pub fn sample_photos() -> PathBuf {
    repo_root().join("examples/photos")
}

/// The hand-drawn face boxes dlib ships for the sample photos (`training.xml` and
/// `testing.xml`, imglab format), as `(file name, [x0, y0, x1, y1] boxes)`.
pub fn sample_face_boxes() -> Vec<(String, Vec<[f32; 4]>)> {
    let mut images: Vec<(String, Vec<[f32; 4]>)> = Vec::new();
    for xml in ["training.xml", "testing.xml"] {
        let text = std::fs::read_to_string(sample_photos().join(xml)).expect("read dlib XML");
        for line in text.lines().map(str::trim) {
            let attr = |key: &str| -> f32 {
                let start = line.find(&format!("{key}='")).expect("attribute") + key.len() + 2;
                line[start..]
                    .split('\'')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("numeric attribute")
            };
            if line.starts_with("<image file=") {
                let file = line.split('\'').nth(1).expect("file name").to_string();
                images.push((file, Vec::new()));
            } else if line.starts_with("<box") {
                let (left, top) = (attr("left"), attr("top"));
                let b = [left, top, left + attr("width"), top + attr("height")];
                images.last_mut().expect("box inside an image").1.push(b);
            }
        }
    }
    images
}

/// Matches detections to true boxes (IoU > 0.3, best first, each detection used once):
/// (matched faces, true faces, detections that matched none).
pub fn match_boxes(
    found: &[pipnet_core::detection::Detection],
    truth: &[[f32; 4]],
) -> (usize, usize, usize) {
    let mut used = vec![false; found.len()];
    let mut matched = 0;
    for t in truth {
        let t = pipnet_core::detection::Detection {
            face_box: pipnet_core::FaceBox::from(*t),
            score: 1.0,
            keypoints: Default::default(),
        };
        let best = (0..found.len())
            .filter(|&i| !used[i] && found[i].iou(&t) > 0.3)
            .max_by(|&a, &b| found[a].iou(&t).total_cmp(&found[b].iou(&t)));
        if let Some(i) = best {
            used[i] = true;
            matched += 1;
        }
    }
    (matched, truth.len(), used.iter().filter(|u| !**u).count())
}
