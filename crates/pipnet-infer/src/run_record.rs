//! The run record of an output folder: what settings made its outputs, checked by every
//! rerun so that outputs of different settings never mix.

use std::path::Path;

use pipnet_core::formats::{Provenance, RunSettings};

use crate::error::{Error, Result};
use crate::files::write_atomic;

/// The file in an output folder that records what made its outputs ([`Provenance`]): a rerun
/// checks it, and a folder walk never enters a folder that holds one. Hidden, so that
/// `OUT/*.json` are the images' results only.
pub const RUN_RECORD: &str = ".pipnet-run.json";

/// Checks `out_dir`'s [`RUN_RECORD`] against this run's and writes this run's. Outputs made with
/// other settings are never taken as done: without `force` that stops the run before any work,
/// saying what differs; with `force`, `clear` removes them before the new record is written, so
/// a killed forced run cannot leave old outputs under the new record. `default_min_face` is the
/// detector's default size, which older records left out.
pub fn claim_output_folder(
    out_dir: &Path,
    made_by: &Provenance,
    default_min_face: Option<f32>,
    force: bool,
    clear: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let path = out_dir.join(RUN_RECORD);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut before: Provenance = serde_json::from_str(&text).map_err(|e| {
                Error::InvalidInput(format!(
                    "{}: not a pipnet run record ({e}); remove it or choose another --out",
                    path.display()
                ))
            })?;
            // `--force` replaces one run's outputs with another's, not one command's with
            // another's: an annotate folder holds per-image files a track run knows nothing of.
            if before.settings.track.is_some() != made_by.settings.track.is_some() {
                let command = |s: &RunSettings| {
                    if s.track.is_some() {
                        "track"
                    } else {
                        "annotate"
                    }
                };
                return Err(Error::InvalidInput(format!(
                    "{} holds the outputs of pipnet {}, this is pipnet {}: choose another --out",
                    out_dir.display(),
                    command(&before.settings),
                    command(&made_by.settings)
                )));
            }
            // Older records of detector runs left the detector's default size out.
            if before.settings.min_face.is_none() && before.settings.detector.is_some() {
                before.settings.min_face = default_min_face;
            }
            let diffs = before.settings.differences(&made_by.settings);
            if !diffs.is_empty() && !force {
                return Err(Error::OtherSettings {
                    folder: out_dir.to_path_buf(),
                    differences: diffs,
                });
            }
            if diffs.is_empty() && before.pipnet == made_by.pipnet {
                return Ok(());
            }
            if !diffs.is_empty() {
                clear()?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&path)(e)),
    }
    let text = serde_json::to_string_pretty(made_by).unwrap_or_default() + "\n";
    write_atomic(&path, text.as_bytes())
}
