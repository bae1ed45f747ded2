//! `pipnet pose-shape DATA [--split F:S] [--max-iterations N] [--out FILE]`: learn the 3-D mean
//! face that head poses are fitted with, from the 2-D landmarks of a labeled folder's training
//! part ([`pipnet_core::pose::learn_mean_shape`]), and write it as the Rust source
//! `crates/pipnet-core/src/pose/face68.rs` ships.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use pipnet_core::Scheme;
use pipnet_core::pose::{ShapeFit, learn_mean_shape};
use pipnet_infer::files::write_atomic;
use pipnet_infer::labeled::split_validation;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    data: super::LabeledArgs,
    /// Learn from the training part of this split (the validation part checks the poses).
    #[arg(long, value_parser = super::parse_split, default_value = "0.1:1")]
    split: (f64, u64),
    /// At most this many rounds of alternating pose and shape fits after the factorization
    /// (they stop earlier once the shape is still).
    #[arg(long, default_value_t = 500)]
    max_iterations: usize,
    /// Write the shape as Rust source here (default: print it).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (fraction, seed) = args.split;
    let (training, _) = split_validation(args.data.read()?, fraction, seed);
    let scheme = Scheme::W300_68;
    let faces: Vec<_> = training.into_iter().map(|f| f.points).collect();
    if let Some(other) = faces.iter().find(|f| f.len() != scheme.num_landmarks()) {
        anyhow::bail!(
            "a face has {} landmarks: the mean shape is learned for the 68-point 300-W scheme only",
            other.len()
        );
    }
    let fit =
        learn_mean_shape(scheme, &faces, args.max_iterations).context("learning the shape")?;
    eprintln!(
        "{} faces (each also mirrored), {} iterations: median residual {:.4}, \
         training yaw 5-95%: {:.1} to {:.1} degrees",
        fit.faces, fit.iterations, fit.median_residual, fit.yaw_range[0], fit.yaw_range[1]
    );
    let source = rust_source(&fit, &args);
    match &args.out {
        Some(path) => write_atomic(path, source.as_bytes())?,
        None => print!("{source}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The shape as a Rust constant, with where it came from and its licence.
fn rust_source(fit: &ShapeFit, args: &Args) -> String {
    let (fraction, seed) = args.split;
    let header = [
        "The 3-D mean face of the 300-W 68 points (pipnet_core::pose). Generated; do not edit."
            .to_string(),
        format!(
            "Remade by `pipnet pose-shape DATA --split {fraction}:{seed}` with DATA = \
             shared/data/face68-train:"
        ),
        format!(
            "{} training faces (300-W AFW, HELEN, LFPW training sets), each also mirrored, {} \
             rounds.",
            fit.faces, fit.iterations
        ),
        format!(
            "Median fit residual {:.4}; training faces' yaw 5-95%: {:.1} to {:.1} degrees.",
            fit.median_residual, fit.yaw_range[0], fit.yaw_range[1]
        ),
        "Licence: from the 300-W annotations, research use only, like the models \
         (models/README.md)."
            .to_string(),
    ];
    let mut text = String::new();
    for line in header {
        let _ = writeln!(text, "//! {line}");
    }
    text.push_str("\npub(super) const FACE68: [[f32; 3]; 68] = [\n");
    for p in &fit.shape.points {
        // Adding 0 turns -0 into 0, so a symmetric point reads as one.
        let [x, y, z] = p.map(|v| v + 0.0);
        let _ = writeln!(text, "    [{x:.5}, {y:.5}, {z:.5}],");
    }
    text.push_str("];\n");
    text
}
