//! `pipnet annotate DIR|FILES... --out OUT`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use pipnet_infer::folder::{FaceSource, FolderJob, annotate_folder};
use pipnet_infer::image_io::DEFAULT_MAX_PIXELS;
use pipnet_infer::{Device, SessionOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Images and folders (walked recursively).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The landmark model.
    #[arg(long)]
    model: PathBuf,
    /// Output folder: one `<image path>.json` per image, plus `failures.jsonl`.
    #[arg(long)]
    out: PathBuf,
    /// Treat every image as one pre-cropped face (no face detection).
    #[arg(long)]
    crops: bool,
    /// Execution provider: cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Faces per inference run.
    #[arg(long, default_value_t = pipnet_infer::model::DEFAULT_BATCH)]
    batch: usize,
    /// ONNX Runtime intra-op threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Redo images whose output is already newer than the image.
    #[arg(long)]
    force: bool,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.crops {
        bail!(
            "face detection is not built yet: pass --crops to treat each image as one \
             pre-cropped face"
        );
    }
    let options = SessionOptions {
        device: args.device,
        threads: args.threads,
        batch_size: Some(args.batch),
    };
    let mut model = super::load_model(&args.model, &options)?;
    let job = FolderJob {
        inputs: args.inputs,
        out_dir: args.out.clone(),
        faces: FaceSource::WholeImageIsFace,
        force: args.force,
        max_pixels: args.max_pixels,
    };
    let start = std::time::Instant::now();
    let summary = annotate_folder(&mut model, &job, |_| {})?;
    let seconds = start.elapsed().as_secs_f64();
    for failure in &summary.failures {
        eprintln!("pipnet: failed: {}: {}", failure.image, failure.error);
    }
    eprintln!(
        "{} images: {} annotated ({} faces), {} already done, {} failed in {:.1}s ({:.1} images/s); \
         output in {}",
        summary.images,
        summary.annotated,
        summary.faces,
        summary.skipped,
        summary.failures.len(),
        seconds,
        summary.annotated as f64 / seconds.max(1e-9),
        args.out.display()
    );
    Ok(if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
