//! `pipnet train` and `export` (built with the `train` feature only): runs, self-training, the GPU job.

use super::*;

/// A small network on 8 real labeled faces, training into `dir/run`.
fn tiny_train_config(dir: &Path, epochs: usize) -> PathBuf {
    let data = common::repo_root().join("../shared/data/face68-train");
    let config = dir.join("train.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\nlabeled = {data:?}\nval_fraction = 0.01\nmax_train_faces = 8\n\n\
             [network]\ninput_size = 64\nwidths = [8, 16, 16, 32]\n\n\
             [train]\nepochs = {epochs}\nbatch_size = 4\nout = \"run\"\n"
        ),
    )
    .unwrap();
    config
}

#[test]
fn test_train_with_stc_labels_unlabeled_folders_in_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    // Three real unlabeled faces in a folder of their own.
    let unlabeled = tmp.path().join("unlabeled");
    std::fs::create_dir(&unlabeled).unwrap();
    let lfw = common::repo_root().join("../shared/data/lfw-unlabeled");
    for name in [
        "Aaron_Eckhart_0001.jpg",
        "Aaron_Guiel_0001.jpg",
        "Aaron_Patterson_0001.jpg",
    ] {
        std::fs::copy(lfw.join(name), unlabeled.join(name)).unwrap();
    }
    let config = tiny_train_config(tmp.path(), 3);
    let (code, _, stderr) = run_pipnet(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--stc",
        unlabeled.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    // Default rounds at 40% and 60% of 3 epochs: from epochs 1 and 2 (1-based: 2 and 3).
    assert!(
        stderr.contains("round 1: 3 of 3 unlabeled images have a face"),
        "{stderr}"
    );
    assert!(stderr.contains("round 2: "), "{stderr}");
    let run = tmp.path().join("run");
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let column = metrics
        .lines()
        .next()
        .and_then(|header| header.split(',').position(|name| name == "round"))
        .expect("metrics.csv has a round column");
    let rounds: Vec<&str> = metrics
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(column))
        .collect();
    assert_eq!(rounds, ["0", "1", "2"], "{metrics}");
    for round in [1, 2] {
        let labels = std::fs::read_to_string(run.join(format!("pseudo/round-{round}.jsonl")));
        assert_eq!(labels.unwrap().lines().count(), 3);
    }
}

#[test]
fn test_train_export_eval_round_trip_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let config = tiny_train_config(tmp.path(), 2);
    let (code, _, stderr) = run_pipnet(&["train", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("epoch   2"), "{stderr}");
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "{metrics}");

    let model = tmp.path().join("exported.onnx");
    let (code, _, stderr) = run_pipnet(&[
        "export",
        run.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, _) = run_pipnet(&["info", model.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("face68-train"),
        "provenance in the metadata: {stdout}"
    );

    // Evaluate on a few labeled faces copied into their own folder.
    let faces = labeled_folder(&tmp.path().join("faces"), real_photos());
    let (ced, plot) = (tmp.path().join("ced.csv"), tmp.path().join("ced.png"));
    let (code, stdout, stderr) = run_pipnet(&[
        "eval",
        faces.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--ced",
        ced.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("faces     3"), "{stdout}");
    let nme = printed_nme(&stdout);
    assert!(nme.is_finite() && nme > 0.0, "{stdout}");
    assert_eq!(std::fs::read_to_string(&ced).unwrap().lines().count(), 102);
    assert!(image::open(&plot).is_ok(), "the CED plot is a readable PNG");
}

/// Without the cached ImageNet weights and with fetching forbidden, a pretrained run stops
/// with one clear error that says how to provide the file; a file with the wrong checksum is
/// refused.
#[test]
fn test_pretrained_run_without_weights_says_how_to_provide_them() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_train_config(tmp.path(), 1);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[network]\ninput_size = 64\nwidths = [8, 16, 16, 32]\n",
        "[network]\ninput_size = 64\nbackbone = \"mobilenet-v2\"\npretrained = \"imagenet\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let cache = tmp.path().join("empty-cache");
    let run = |weights: Option<&Path>| {
        let mut command = Command::new(pipnet_bin());
        command
            .args(["train", "--config", config.to_str().unwrap()])
            .env("PIPNET_CACHE_DIR", &cache)
            .env("PIPNET_OFFLINE", "1")
            .env_remove("PIPNET_MOBILENET_V2_WEIGHTS");
        if let Some(path) = weights {
            command.env("PIPNET_MOBILENET_V2_WEIGHTS", path);
        }
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(None);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("PIPNET_OFFLINE") && stderr.contains("PIPNET_MOBILENET_V2_WEIGHTS"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("error").count(),
        1,
        "one error line: {stderr}"
    );
    let fake = tmp.path().join("mobilenet_v2-b0353104.pth");
    std::fs::write(&fake, b"not the checkpoint").unwrap();
    let (code, stderr) = run(Some(&fake));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("refusing to use it"), "{stderr}");
}

/// The GPU training job of `scripts/gpu-train/` run dry on the CPU, so it cannot rot between
/// lent GPUs: each shipped GPU config (the teacher at 256, the student at 192 with detector
/// crops and a weight average) packed on 12 faces and trained one epoch with the flex backend
/// by the very script the device runs (both halves staged in one call); the graph comes back
/// gzipped and loads.
#[test]
fn test_gpu_training_job_runs_dry_on_the_cpu() {
    for (file, input_size) in [
        ("face68-mbv2-256-gpu.toml", 256),
        ("face68-mbv2-192-gpu.toml", 192),
    ] {
        run_gpu_training_job_dry(file, input_size);
    }
}

fn run_gpu_training_job_dry(file: &str, input_size: u32) {
    let root = common::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let data = root.join("../shared/data/face68-train");
    let shipped = std::fs::read_to_string(root.join("configs").join(file)).unwrap();
    let labeled = "labeled = \"../../shared/data/face68-train\"";
    assert!(shipped.contains(labeled), "{file} trains on face68-train");
    let config = dir.path().join("gpu.toml");
    std::fs::write(
        &config,
        shipped.replace(
            labeled,
            &format!(
                "labeled = {:?}\nmax_train_faces = 12",
                data.display().to_string()
            ),
        ),
    )
    .unwrap();
    let job = dir.path().join("job");
    succeeds(
        Command::new("bash")
            .arg(root.join("scripts/gpu-train/pack.sh"))
            .args([&job, &config])
            .env("PIPNET_BIN", pipnet_bin())
            .env("NO_DEBS", "1"),
    );
    // The pack holds training faces only, cut to what augmentation reaches at the input size
    // (wider for a face whose detector crop, found on the full photo, travels with it).
    let faces = pipnet_infer::labeled::read_pts_folder(&job.join("data/faces")).unwrap();
    assert_eq!(faces.len(), 12);
    let (_, val) = pipnet_infer::labeled::split_validation(faces.clone(), 0.1, 1);
    assert!(val.is_empty(), "validation faces were packed: {val:?}");
    let crops = job.join("data/detector-crops.json");
    let detector_crops = shipped.contains("detector_crop_probability");
    assert_eq!(crops.is_file(), detector_crops, "{file}");
    let reach = pipnet_train::augment::Augmentation::default().reach();
    let reach = (input_size as f32 * reach).round() as u32;
    for face in &faces {
        let (w, h) = image::image_dimensions(&face.image).unwrap();
        // A face widened for its detector crop keeps the resolution, not the size.
        let limit = if detector_crops { 2 * reach } else { reach };
        assert!(
            w.max(h) <= limit,
            "{file}: {}: {w}x{h}",
            face.image.display()
        );
    }

    let out = dir.path().join("out");
    let ran = Command::new("bash")
        .arg(root.join("scripts/gpu-train/device.sh"))
        .env("JOB", &job)
        .env("STAGE", dir.path().join("stage"))
        .env("OUT", &out)
        .env("DEVICE", "flex")
        .env("EPOCHS", "1")
        .env("PIPNET_BIN", pipnet_bin())
        .output()
        .unwrap();
    let log = std::fs::read_to_string(out.join("train.log")).unwrap_or_default();
    assert!(ran.status.success(), "{file}: device.sh: {log}");
    assert!(
        log.contains("training on 12 faces, validating on 0"),
        "{log}"
    );
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "header + 1 epoch: {metrics}");
    let graph = dir.path().join("last.onnx");
    let unzipped = Command::new("gzip")
        .arg("-dc")
        .arg(out.join("last.onnx.gz"))
        .output()
        .unwrap();
    assert!(unzipped.status.success());
    std::fs::write(&graph, unzipped.stdout).unwrap();
    let (code, stdout, stderr) = run_pipnet(&["info", graph.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&input_size.to_string()), "{stdout}");
}
