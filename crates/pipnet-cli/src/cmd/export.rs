//! `pipnet export CHECKPOINT --out model.onnx`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// A run's `checkpoint/` folder (or the run folder holding it); a run with `train.ema`
    /// exports its weight average.
    checkpoint: PathBuf,
    /// Where to write the ONNX graph.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let checkpoint = if args.checkpoint.join("state.json").is_file() {
        args.checkpoint.clone()
    } else {
        args.checkpoint.join("checkpoint")
    };
    let meta = pipnet_train::trainer::export_checkpoint(&checkpoint, &args.out)
        .with_context(|| format!("failed to export {}", checkpoint.display()))?;
    eprintln!(
        "wrote {} ({}, input {}, {}x{} grid)",
        args.out.display(),
        meta.scheme,
        meta.input_size,
        meta.grid(),
        meta.grid()
    );
    Ok(ExitCode::SUCCESS)
}
