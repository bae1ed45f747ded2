//! Where the Python side of `pipnet bench` lives: the reference and peer pipelines of
//! `python-export/`, and the interpreter that runs them. Shared by the reference rows
//! (`bench.rs`) and the dlib comparison (`peer.rs`).

use std::path::{Path, PathBuf};

/// The Python of the reference and peer pipelines: `explicit` (`--python`), $PIPNET_PYTHON,
/// else python3.
pub fn interpreter(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("PIPNET_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| "python3".into())
}

/// `python-export/src` of this checkout: under the working directory, or above the binary.
pub fn export_package() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    cwd.iter()
        .chain(
            exe.iter()
                .flat_map(|e| e.ancestors())
                .map(Path::to_path_buf)
                .collect::<Vec<_>>()
                .iter(),
        )
        .map(|dir| dir.join("python-export/src"))
        .find(|p| p.join("pipnet_export").is_dir())
}
