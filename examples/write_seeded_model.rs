//! Writes an untrained (seeded) contract graph, for trying the tools before a trained model
//! exists: `cargo run --example write_seeded_model -- OUT.onnx [tiny|resnet18]`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or("usage: write_seeded_model OUT.onnx [tiny|resnet18]")?;
    let spec = match args.next().as_deref() {
        None | Some("tiny") => pipnet::train::seeded::tiny_spec(),
        Some("resnet18") => pipnet::train::NetworkSpec::resnet18(68, 10),
        Some(other) => return Err(format!("unknown network {other:?}").into()),
    };
    pipnet::train::seeded::write_seeded_model(out.as_ref(), spec, 0)?;
    println!("wrote {out} (seeded weights: landmarks are meaningless)");
    Ok(())
}
