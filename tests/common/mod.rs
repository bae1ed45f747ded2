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

/// The real `pipnet` binary, built once per test process with the same profile as the tests.
pub fn pipnet_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = target_profile_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-q", "-p", "pipnet-cli"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p pipnet-cli failed");
        let bin = dir.join("pipnet");
        assert!(bin.is_file(), "{} missing after build", bin.display());
        bin
    })
}

/// Runs `pipnet ARGS` and returns (exit code, stdout, stderr).
pub fn run_pipnet(args: &[&str]) -> (i32, String, String) {
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

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
pub fn seeded_model(dir: &Path, spec: pipnet::train::NetworkSpec) -> PathBuf {
    let path = dir.join("seeded.onnx");
    pipnet::train::seeded::write_seeded_model(&path, spec, 11).expect("write seeded model");
    path
}
