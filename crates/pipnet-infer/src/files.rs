//! File-system helpers that every writer and walker shares: atomic writes, and the one list of
//! what counts as an image file.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File extensions (lower case; matched in any case) treated as images when walking a folder.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp", "ppm", "pgm", "pnm",
];

/// True when `path`'s extension is one of [`IMAGE_EXTENSIONS`], in any case.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The image files directly in `dir` (not below), sorted by name.
pub fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file() && is_image(path))
        .collect();
    files.sort();
    Ok(files)
}

/// The image with the same stem as `path` (e.g. a `.pts` file's photo), of any image extension
/// in lower or upper case.
pub fn image_beside(path: &Path) -> Option<PathBuf> {
    IMAGE_EXTENSIONS
        .iter()
        .flat_map(|ext| [ext.to_string(), ext.to_ascii_uppercase()])
        .map(|ext| path.with_extension(ext))
        .find(|candidate| candidate.is_file())
}

/// Writes `contents` to `path` through a temporary file in the same folder and a rename, so a
/// reader (or a killed run) never sees a partial file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let mut builder = tempfile::Builder::new();
    // tempfile creates private (0600) files; outputs are ordinary files others may read.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut tmp = builder.tempfile_in(dir).map_err(Error::io(dir))?;
    std::io::Write::write_all(&mut tmp, contents).map_err(Error::io(path))?;
    tmp.persist(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_known_by_extension_in_any_case_and_found_beside_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.JPG", "a.png", "c.txt", "face.pts"] {
            write_atomic(&dir.path().join(name), b"x").unwrap();
        }
        let names: Vec<_> = images_in(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.png", "b.JPG"]);
        assert_eq!(
            image_beside(&dir.path().join("b.pts")),
            Some(dir.path().join("b.JPG"))
        );
        assert_eq!(image_beside(&dir.path().join("face.pts")), None);
    }
}
