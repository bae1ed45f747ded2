//! `pipnet eval MODEL DATA [--ced ced.csv] [--plot ced.png]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use pipnet_core::metrics::ced_curve;
use pipnet_infer::image_io::DEFAULT_MAX_PIXELS;
use pipnet_infer::labeled::{read_pts_folder, split_validation};
use pipnet_infer::{Device, SessionOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The landmark model.
    model: PathBuf,
    /// A folder of images with `.pts` files beside them.
    data: PathBuf,
    /// Evaluate only the validation split of a training config (`val_fraction`, `split_seed`),
    /// e.g. `--split 0.1:1` for the default split.
    #[arg(long, value_parser = parse_split)]
    split: Option<(f64, u64)>,
    /// Write the CED curve (NME threshold, share of faces) as CSV.
    #[arg(long)]
    ced: Option<PathBuf>,
    /// Draw the CED curve as a PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write per-face NMEs as CSV.
    #[arg(long)]
    per_face: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

fn parse_split(text: &str) -> Result<(f64, u64), String> {
    let (f, s) = text
        .split_once(':')
        .ok_or("expected FRACTION:SEED, e.g. 0.1:1")?;
    Ok((
        f.parse().map_err(|_| format!("bad fraction {f:?}"))?,
        s.parse().map_err(|_| format!("bad seed {s:?}"))?,
    ))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut faces = read_pts_folder(&args.data)?;
    if let Some((fraction, seed)) = args.split {
        faces = split_validation(faces, fraction, seed).1;
    }
    let options = SessionOptions {
        device: args.device,
        ..Default::default()
    };
    let mut model = super::load_model(&args.model, &options)?;
    let (results, summary) =
        pipnet_infer::eval::evaluate(&mut model, &faces, 0.1, DEFAULT_MAX_PIXELS)
            .context("evaluation failed")?;
    println!("faces     {}", summary.faces);
    println!(
        "NME       {:.4} (inter-ocular, crops from the true landmark box)",
        summary.nme
    );
    println!("FR@0.1    {:.4}", summary.failure_rate);
    println!("AUC@0.1   {:.4}", summary.auc);
    let nmes: Vec<f32> = results.iter().map(|r| r.nme).collect();
    let curve = ced_curve(&nmes, 0.1, 100);
    if let Some(path) = &args.ced {
        let mut csv = String::from("nme,share_of_faces\n");
        for (t, share) in &curve {
            csv.push_str(&format!("{t:.4},{share:.4}\n"));
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let name = args
            .model
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned());
        let label = format!("{name}: NME {:.4}, AUC@0.1 {:.3}", summary.nme, summary.auc);
        crate::plot::ced_png(
            path,
            &format!("CED on {} faces", summary.faces),
            &[(label, curve)],
            0.1,
        )?;
    }
    if let Some(path) = &args.per_face {
        let mut csv = String::from("face,nme\n");
        for r in &results {
            csv.push_str(&format!("{},{:.6}\n", r.name, r.nme));
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
