//! PIP decode + neighbour-vote merge: the scalar reference against the dispatched SIMD decoder,
//! for 68 and 98 points at 8x8 and 16x16, batch 1 and 32. Throughput is in faces.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pipnet::core::decode::{Decoder, Landmark, PipMaps, decode_pip_scalar};
use pipnet::core::meanface::NeighborIndex;
use pipnet::train::seeded::synthetic_mean_face;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const NEIGHBORS: usize = 10;

struct Maps {
    cls: Vec<f32>,
    off_x: Vec<f32>,
    off_y: Vec<f32>,
    nb_x: Vec<f32>,
    nb_y: Vec<f32>,
}

fn random_maps(batch: usize, landmarks: usize, grid: usize) -> Maps {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut values =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let per = batch * landmarks * grid * grid;
    Maps {
        cls: values(per),
        off_x: values(per),
        off_y: values(per),
        nb_x: values(per * NEIGHBORS),
        nb_y: values(per * NEIGHBORS),
    }
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for landmarks in [68, 98] {
        let index = NeighborIndex::from_mean_face(&synthetic_mean_face(landmarks), NEIGHBORS)
            .expect("neighbour index");
        for grid in [8, 16] {
            for batch in [1, 32] {
                let m = random_maps(batch, landmarks, grid);
                let maps = PipMaps::new(
                    &m.cls, &m.off_x, &m.off_y, &m.nb_x, &m.nb_y, landmarks, NEIGHBORS, grid,
                )
                .expect("maps");
                let mut out = vec![Landmark::default(); batch * landmarks];
                let case = format!("L{landmarks}/G{grid}/N{batch}");
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_function(BenchmarkId::new("scalar", &case), |b| {
                    b.iter(|| decode_pip_scalar(&maps, &index, &mut out).expect("decode"))
                });
                let mut decoder = Decoder::new(index.clone());
                let simd = format!("simd-{}", decoder.kernel().name());
                group.bench_function(BenchmarkId::new(simd, &case), |b| {
                    b.iter(|| decoder.decode_into(&maps, &mut out).expect("decode"))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
