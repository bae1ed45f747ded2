//! `pipnet`: the command line over pipnet-infer and (with the `train` feature) pipnet-train.
//! Parsing and printing only; the work happens in the libraries.

mod cmd;
mod plot;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pipnet",
    version,
    long_version = long_version(),
    about = "PIPNet facial landmark detection"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's contract metadata, tensors and the execution providers it can use.
    Info(cmd::info::Args),
    /// Annotate images or folders of images with landmarks (one JSON per image).
    Annotate(cmd::annotate::Args),
    /// Train a model from a TOML config (resumable).
    #[cfg(feature = "train")]
    Train(cmd::train::Args),
    /// Write a training checkpoint as a contract ONNX graph.
    #[cfg(feature = "train")]
    Export(cmd::export::Args),
    /// Train a model (needs pipnet built with `--features train`).
    #[cfg(not(feature = "train"))]
    Train(cmd::NotBuilt),
    /// Write a training checkpoint as ONNX (needs pipnet built with `--features train`).
    #[cfg(not(feature = "train"))]
    Export(cmd::NotBuilt),
    /// Measure a model on labeled faces: NME, FR@0.1, AUC@0.1, CED.
    Eval(cmd::eval::Args),
    /// Fit the face detector's box -> landmark crop map on labeled faces.
    Calibrate(cmd::calibrate::Args),
    /// Learn the 3-D mean face that head poses are fitted with, from labeled 2-D landmarks.
    PoseShape(cmd::pose_shape::Args),
    /// Landmarks on a video or a folder of frames, with face ids and smoothing.
    Track(cmd::track::Args),
    /// Time each pipeline stage, and compare with the Python reference pipeline.
    Bench(cmd::bench::Args),
    /// Prepare training data (`pipnet data 300w SRC OUT`).
    #[command(subcommand)]
    Data(cmd::data::Command),
}

/// `--version`: the crate version and the models built into this binary.
fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{}\nbuilt-in landmark model: {} (research use only, see models/README.md)\n\
             built-in face detector: BlazeFace full-range 256x256 (Apache-2.0)\n\
             training: {}",
            env!("CARGO_PKG_VERSION"),
            pipnet_infer::model::BUILTIN_FILE,
            if cfg!(feature = "train") {
                "built in (pipnet train, pipnet export)"
            } else {
                "not built in (--features train)"
            }
        )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => cmd::info::run(args),
        Command::Annotate(args) => cmd::annotate::run(args),
        #[cfg(feature = "train")]
        Command::Train(args) => cmd::train::run(args),
        #[cfg(feature = "train")]
        Command::Export(args) => cmd::export::run(args),
        #[cfg(not(feature = "train"))]
        Command::Train(_) | Command::Export(_) => cmd::NotBuilt::error(),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Calibrate(args) => cmd::calibrate::run(args),
        Command::PoseShape(args) => cmd::pose_shape::run(args),
        Command::Track(args) => cmd::track::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Data(command) => cmd::data::run(command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("pipnet: error: {}", error_chain(&err));
            ExitCode::from(cmd::EXIT_ERROR)
        }
    }
}

/// The error and its causes joined by ": ", each sentence once: library errors often repeat
/// their cause in their own message, and printing the chain as is would say it twice.
fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::other("no metadata key pipnet.format");
        let err = anyhow::Error::new(io)
            .context("model m.onnx: no metadata key pipnet.format")
            .context("failed to load model m.onnx");
        assert_eq!(
            error_chain(&err),
            "failed to load model m.onnx: model m.onnx: no metadata key pipnet.format"
        );
    }
}
