//! The landmark stage on the shipped model, per crop, at batch 1 and 32: preprocessing (crop +
//! resize + normalise into the input tensor), the bare ONNX Runtime run, and end to end (crop +
//! run + decode + merge + back-projection). Decode + merge alone is `benches/decode.rs`.
//! The crops are the faces the built-in detector finds in `examples/photos/2008_002470.jpg`.
//!
//! `cargo bench --bench pipeline` (add `-- --quick` for a fast pass).

use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pipnet::core::FaceCrop;
use pipnet::infer::detect::{FaceDetector, RollSearch};
use pipnet::infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet::infer::pipeline::locate;
use pipnet::infer::{Faces, LandmarkModel, SessionOptions};

fn bench_pipeline(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let image = load_rgb(
        &root.join("examples/photos/2008_002470.jpg"),
        DEFAULT_MAX_PIXELS,
    )
    .expect("sample photo");
    let mut group = c.benchmark_group("landmarks");
    for batch in [1, 32] {
        let options = SessionOptions {
            batch_size: Some(batch),
            ..Default::default()
        };
        let mut model = LandmarkModel::load(
            &root.join("models").join(pipnet_infer::model::BUILTIN_FILE),
            &options,
        )
        .expect("shipped model");
        let mut detector = FaceDetector::builtin(&options).expect("detector");
        let (rule, search) = (model.metadata().crop, (None, RollSearch::default()));
        let found: Vec<FaceCrop> =
            locate(Some(&mut detector), &rule, search, &image, &Faces::Detect)
                .expect("detect")
                .into_iter()
                .map(|(_, crop)| crop)
                .collect();
        // `batch` crops, cycling through the photo's faces.
        let faces: Vec<_> = found
            .iter()
            .cycle()
            .take(batch)
            .map(|c| (&image, *c))
            .collect();
        let model = &mut model;
        let mut input = Vec::new();
        model.prepare(&faces, &mut input);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::new("preprocess", batch), |b| {
            b.iter(|| model.prepare(&faces, &mut input))
        });
        group.bench_function(BenchmarkId::new("ort_run_bare", batch), |b| {
            b.iter(|| model.run_bare(&input, batch).expect("run"))
        });
        group.bench_function(BenchmarkId::new("end_to_end", batch), |b| {
            b.iter(|| model.landmarks(&faces).expect("landmarks"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pipeline);
criterion_main!(benches);
