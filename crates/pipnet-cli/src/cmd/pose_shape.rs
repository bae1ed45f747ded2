//! `pipnet pose-shape DATA [--split F:S] [--max-iterations N] [--out FILE]`: learn the 3-D mean
//! face that head poses are fitted with, from the 2-D landmarks of a labeled folder's training
//! part ([`pipnet_core::pose::learn_mean_shape`]), check its poses on the validation part, and
//! write it as the Rust source `crates/pipnet-core/src/pose/face68.rs` ships.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use pipnet_core::metrics::{quantile, spearman};
use pipnet_core::pose::{ShapeFit, learn_mean_shape};
use pipnet_core::{MeanShape, Point, Scheme, head_turn, roll};
use pipnet_infer::files::write_atomic;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    data: super::SplitLabeledArgs,
    /// At most this many rounds of alternating pose and shape fits after the factorization
    /// (they stop earlier once the shape is still).
    #[arg(long, default_value_t = 500)]
    max_iterations: usize,
    /// Write the shape as Rust source here (default: print it).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (training, validation) = args.data.read()?;
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
    let validation: Vec<_> = validation.into_iter().map(|f| f.points).collect();
    report_on_validation(&fit.shape, &validation);
    let source = rust_source(&fit, &args);
    match &args.out {
        Some(path) => write_atomic(path, source.as_bytes())?,
        None => print!("{source}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the poses the shape gives the validation faces' true landmarks against two things
/// the landmarks say without any 3-D model: how far the nose sits off the middle of the jaw
/// ([`head_turn`], which should fall as yaw rises: yaw > 0 turns the nose to the image's left)
/// and the eye line's angle ([`roll`], which the pose's roll should follow).
fn report_on_validation(shape: &MeanShape, faces: &[Vec<Point>]) {
    let scheme = shape.scheme;
    let rows: Vec<[f32; 4]> = faces
        .iter()
        .filter_map(|f| {
            let pose = shape.fit(f).ok()?;
            let eye_line = roll(scheme, f).ok()?.to_degrees();
            Some([
                pose.yaw,
                head_turn(scheme, f).ok()?,
                pose.roll - eye_line,
                pose.residual,
            ])
        })
        .collect();
    let column = |k: usize| rows.iter().map(|r| r[k]).collect::<Vec<f32>>();
    let residuals = column(3);
    let roll_gaps = column(2);
    let roll_gap_sizes: Vec<f32> = roll_gaps.iter().map(|d| d.abs()).collect();
    eprintln!(
        "validation: {} faces; residual median {:.4}, 5-95% {:.4}-{:.4}; rank correlation of \
         yaw with the nose's offset between the jaw ends {:.3}; roll - eye-line angle: median \
         {:.2}, median |.| {:.2} degrees",
        rows.len(),
        quantile(&residuals, 0.5),
        quantile(&residuals, 0.05),
        quantile(&residuals, 0.95),
        spearman(&column(0), &column(1)),
        quantile(&roll_gaps, 0.5),
        quantile(&roll_gap_sizes, 0.5),
    );
    eprintln!(
        "  {:>16} {:>6} {:>12}",
        "yaw (degrees)", "faces", "nose offset"
    );
    let edges = [-90.0, -30.0, -15.0, -5.0, 5.0, 15.0, 30.0, 90.0];
    for w in edges.windows(2) {
        let turns: Vec<f32> = rows
            .iter()
            .filter(|r| r[0] >= w[0] && r[0] < w[1])
            .map(|r| r[1])
            .collect();
        let mean = turns.iter().sum::<f32>() / turns.len().max(1) as f32;
        let bucket = format!("{:.0} to {:.0}", w[0], w[1]);
        eprintln!("  {bucket:>16} {:>6} {mean:>12.3}", turns.len());
    }
}

/// The shape as a Rust constant, with where it came from and its licence.
fn rust_source(fit: &ShapeFit, args: &Args) -> String {
    let (fraction, seed) = args.data.split;
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
