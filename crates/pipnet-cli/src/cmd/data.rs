//! `pipnet data 300w SRC OUT`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use pipnet_infer::dataset::rebuild_300w;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Rebuild the face68-train layout (one cropped JPEG + 1-based .pts per face, and
    /// manifest.tsv) from 300-W as distributed: SRC holds afw/, helen/trainset/ and
    /// lfpw/trainset/ with a .pts file beside each image.
    #[command(name = "300w")]
    W300 {
        /// The 300-W folder.
        src: PathBuf,
        /// Where to write the faces (created if missing).
        out: PathBuf,
    },
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::W300 { src, out } => {
            let summary = rebuild_300w(&src, &out)
                .with_context(|| format!("rebuilding 300-W from {}", src.display()))?;
            for (subset, faces) in &summary.subsets {
                println!("{subset}: {faces} faces");
            }
            println!("{} faces written to {}", summary.faces(), out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
