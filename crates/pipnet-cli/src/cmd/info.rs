//! `pipnet info [MODEL]`

use std::path::PathBuf;
use std::process::ExitCode;

use pipnet_infer::{Device, SessionOptions};

#[derive(clap::Args)]
pub struct Args {
    /// A PIPNet ONNX graph (default: the built-in model, and the built-in detector is
    /// described too).
    model: Option<PathBuf>,
    /// Execution provider to build the session with: cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    device: Device,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = SessionOptions {
        device: args.device,
        ..Default::default()
    };
    let model = super::ModelArgs {
        model: args.model.clone(),
    }
    .load(&options)?;
    let meta = model.metadata();
    let (input, outputs) = meta.expected_io();
    println!("model            {}", model.path().display());
    println!("sha256           {}", model.id().sha256);
    println!(
        "scheme           {} ({} landmarks)",
        meta.scheme,
        meta.num_landmarks()
    );
    println!("input            {input}");
    for output in &outputs {
        println!("output           {output}");
    }
    println!(
        "grid             {g}x{g} (input {s}, stride {st})",
        g = meta.grid(),
        s = meta.input_size,
        st = meta.stride
    );
    println!("neighbours       {}", meta.num_neighbors());
    println!("normalisation    mean {:?} std {:?}", meta.mean, meta.std);
    println!("crop             {}", meta.crop.to_metadata());
    for (key, value) in [
        ("backbone", &meta.backbone),
        ("train data", &meta.train_data),
        ("metrics", &meta.metrics),
        ("precision", &meta.precision),
    ] {
        println!("{key:<16} {}", value.as_deref().unwrap_or("-"));
    }
    let runtime = super::runtime(&options)?;
    println!(
        "onnx runtime     {} ({})",
        runtime.build,
        runtime.library.display()
    );
    println!(
        "providers        {}",
        runtime.available_providers().join(", ")
    );
    println!("session uses     {}", model.execution_provider());
    if args.model.is_none() {
        let detector = super::DetectorArgs::default().load(&options)?;
        println!("detector         {}", detector.id().name);
        println!("detector sha256  {}", detector.id().sha256);
    }
    Ok(ExitCode::SUCCESS)
}
