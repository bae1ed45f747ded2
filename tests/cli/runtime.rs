//! The binary and its runtime: `info`, errors and exit codes, ONNX Runtime and CUDA.

use super::*;

#[test]
fn test_info_prints_contract_and_provider() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::seeded_model(tmp.path(), tiny_spec());
    let (code, stdout, stderr) = run_pipnet(&["info", model.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("scheme           300w-68 (68 landmarks)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("output           nb_x float32 [N, 680, 4, 4]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("session uses     CPUExecutionProvider"),
        "{stdout}"
    );
}

#[test]
fn test_bad_models_and_devices_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("model.onnx");
    std::fs::write(&text, "not a model").unwrap();
    let (code, _, stderr) = run_pipnet(&["info", text.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("failed to load model") && stderr.contains("not a loadable ONNX graph"),
        "{stderr}"
    );

    let model = common::seeded_model(tmp.path(), tiny_spec());
    let (code, _, stderr) = run_pipnet(&["info", model.to_str().unwrap(), "--device", "gpu"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown device \"gpu\""), "{stderr}");

    let (code, stdout, stderr) = run_pipnet(&["info", model.to_str().unwrap(), "--device", "auto"]);
    if stdout.contains("session uses     CPUExecutionProvider") {
        // No usable CUDA here: auto must say it fell back, and cuda must refuse.
        assert_eq!(code, 0);
        assert!(
            stderr.contains("warning: --device auto: CUDA unavailable"),
            "{stderr}"
        );
        // --device cuda: without a driver, that refusal; with one, the CUDA build (about 2 GB)
        // is fetched when not cached: offline here, so that refusal or the provider's.
        let output = Command::new(pipnet_bin())
            .args(["info", model.to_str().unwrap(), "--device", "cuda"])
            .env("PIPNET_OFFLINE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2));
        assert!(
            stderr.contains("CUDA execution provider unavailable")
                || stderr.contains("libcuda.so.1")
                || (stderr.contains("the CUDA build is not cached")
                    && stderr.contains("--device cuda")),
            "{stderr}"
        );
    } else {
        assert!(
            stdout.contains("session uses     CUDAExecutionProvider"),
            "{stdout}"
        );
    }
}

#[test]
fn test_missing_runtime_library_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::seeded_model(tmp.path(), tiny_spec());
    let output = Command::new(pipnet_bin())
        .args(["info", model.to_str().unwrap()])
        .env(
            "ORT_DYLIB_PATH",
            tmp.path().join("nowhere/libonnxruntime.so"),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("ORT_DYLIB_PATH points to"), "{stderr}");
    assert!(stderr.contains("pip"), "says how to provide it: {stderr}");
}

#[test]
fn test_an_error_chain_says_each_cause_once() {
    // The detector graph is valid ONNX without PIPNet metadata.
    let detector =
        common::repo_root().join("models/blazeface/face_detection_back_256x256_barracuda.onnx");
    let (code, _, stderr) = run_pipnet(&["info", detector.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(
        stderr.matches("pipnet.format: missing").count(),
        1,
        "{stderr}"
    );
}

/// The CUDA check of `scripts/gpu-cuda/` run dry on the CPU, so it cannot rot between lent GPUs:
/// packed without the CUDA build into small parts, staged over two "calls" (the first only
/// stages), then unpacked, checked against its checksum and run on the CPU side; a part
/// corrupted in transit is refused.
#[test]
fn test_cuda_check_runs_dry_on_the_cpu() {
    let root = common::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    succeeds(
        Command::new("bash")
            .arg(root.join("scripts/gpu-cuda/pack.sh"))
            .arg(&job)
            .env("PIPNET_BIN", pipnet_bin())
            .env("NO_GPU", "1")
            .env("PART_MIB", "8")
            .env("XZ_OPT", "-0"),
    );
    let mut parts: Vec<PathBuf> = std::fs::read_dir(&job)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    parts.sort();
    assert!(parts.len() >= 2, "{parts:?}");
    // Two calls: the first carries the first part, the second the others.
    let calls = [dir.path().join("call1"), dir.path().join("call2")];
    for (k, part) in parts.iter().enumerate() {
        let call = &calls[usize::from(k > 0)];
        let to = call.join(part.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for file in std::fs::read_dir(part).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, to.join(file.file_name().unwrap())).unwrap();
        }
    }
    let device = |call: &Path, stage: &Path, out: &Path| {
        Command::new("bash")
            .arg(root.join("scripts/gpu-cuda/device.sh"))
            .current_dir(&root)
            .env("JOB", call)
            .env("STAGE", stage)
            .env("OUT", out)
            .env("DEVICE", "cpu")
            .env("REPEAT", "1")
            .output()
            .unwrap()
    };
    let (stage, out) = (dir.path().join("stage"), dir.path().join("out"));
    let first = device(&calls[0], &stage, &out);
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success() && said.contains("1 of"), "{said}");
    assert!(!out.join("report.txt").exists());
    let second = device(&calls[1], &stage, &out);
    let report = std::fs::read_to_string(out.join("report.txt")).unwrap_or_default();
    assert!(
        second.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(report.contains("cpu: 42 faces in 9 photos"), "{report}");
    assert!(report.contains("faces/s on known crops"), "{report}");

    // A part that changed in transit: the bundle's checksum refuses it.
    let corrupt_stage = dir.path().join("corrupt");
    let part = calls[1].read_dir().unwrap().next().unwrap().unwrap().path();
    let file = part
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("part-")
        })
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    device(&calls[0], &corrupt_stage, &out);
    let refused = device(&calls[1], &corrupt_stage, &out);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("do not add up"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn test_exit_codes_and_allow_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::seeded_model(tmp.path(), tiny_spec());
    let photos = tmp.path().join("photos");
    photo_copies(&photos, &["a.jpg"]);
    std::fs::write(photos.join("corrupt.jpg"), b"not a jpeg").unwrap();
    let out = tmp.path().join("out");
    let (code, stderr) = annotate_crops(&model, &[&photos], &out, &[]);
    assert_eq!(code, 1, "an image failed: {stderr}");
    let (code, stderr) = annotate_crops(&model, &[&photos], &out, &["--allow-failures"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("1 failed"), "still reported: {stderr}");
    let failures = std::fs::read_to_string(out.join("failures.jsonl")).unwrap();
    assert!(failures.contains("corrupt.jpg"), "{failures}");
    // Nothing could run: 2, whatever --allow-failures says.
    let not_a_model = tmp.path().join("model.onnx");
    std::fs::write(&not_a_model, "x").unwrap();
    let (code, stderr) = annotate_crops(&not_a_model, &[&photos], &out, &["--allow-failures"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, _) = run_pipnet(&["annotate", "--no-such-flag"]);
    assert_eq!(code, 2);
}

/// Without the NVIDIA driver, `--device cuda` says so at once and fetches nothing (the CUDA
/// build is 2.4 GB); `auto` runs on the CPU build with a warning.
#[test]
fn test_cuda_without_a_driver_fetches_nothing() {
    if pipnet_infer::runtime::cuda_driver().is_ok() {
        eprintln!("an NVIDIA driver is present: nothing to check here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = common::seeded_model(tmp.path(), tiny_spec());
    let cache = tmp.path().join("cache");
    let output = Command::new(pipnet_bin())
        .args(["info", model.to_str().unwrap(), "--device", "cuda"])
        .env("PIPNET_CACHE_DIR", &cache)
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("libcuda.so.1") && stderr.contains("nothing was fetched"),
        "{stderr}"
    );
    assert!(!stderr.contains("fetching"), "{stderr}");
    assert!(!cache.join("onnxruntime-gpu-1.31.1").exists());
}

/// The binary carries one copy of each built-in graph (a `const` once put the landmark model in
/// twice) and, without the `train` feature, no training code.
#[test]
fn test_the_binary_holds_each_graph_once() {
    assert_eq!(common::embedded_graph_copies(pipnet_bin()), [1, 1]);
    let (code, stdout, _) = run_pipnet(&["--version"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains(pipnet_infer::model::BUILTIN_FILE),
        "{stdout}"
    );
}

#[cfg(not(feature = "train"))]
#[test]
fn test_a_binary_without_training_says_how_to_get_it() {
    let (code, _, stderr) = run_pipnet(&["train", "--config", "x.toml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--features train"), "{stderr}");
}

/// Workers of a cluster job start together on one machine: on an empty cache one of them
/// fetches ONNX Runtime and the others wait for it; then an offline worker runs from the cache.
#[test]
fn test_processes_starting_together_on_an_empty_cache_fetch_onnx_runtime_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let start = |offline: bool| {
        let mut command = Command::new(pipnet_bin());
        command
            .arg("info")
            .env("PIPNET_CACHE_DIR", &cache)
            .env_remove("ORT_DYLIB_PATH")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if offline {
            command.env("PIPNET_OFFLINE", "1");
        }
        command.spawn().unwrap()
    };
    let workers: Vec<_> = (0..4).map(|_| start(false)).collect();
    let mut fetched = 0;
    for worker in workers {
        let output = worker.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("onnxruntime"));
        fetched += usize::from(stderr.contains("fetching onnxruntime"));
    }
    assert_eq!(fetched, 1, "one worker fetches, the others wait for it");
    let leftovers: Vec<_> = walk(&cache)
        .into_iter()
        .filter(|p| !p.ends_with(".fetch.lock") && !p.ends_with("libonnxruntime.so.1.32.0"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let offline = start(true).wait_with_output().unwrap();
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
}
