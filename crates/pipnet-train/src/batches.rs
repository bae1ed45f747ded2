//! One epoch's batches: a seeded order and augmentation draw per sample (so a resumed run
//! sees the same batches), rendered in parallel, with the targets of every head and, when
//! distilling, the teacher's soft targets.

use std::ops::RangeInclusive;

use burn::prelude::*;
use pipnet_core::{NeighborIndex, Point};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::Result;
use crate::augment::{SampleBase, SampleDraw, SampleSpec, draw_sample, render_sample};
use crate::config::TrainConfig;
use crate::data::Face;
use crate::distill::Teacher;
use crate::loss::TargetBatch;
use crate::targets::{PipTargets, pip_targets};

/// The targets of one head (level) for a batch, and which samples it learns from.
pub(crate) struct HostLevel {
    grid: usize,
    targets: PipTargets,
    weight: Vec<f32>,
}

/// One batch ready for the device: input `[B, 3, S, S]` and the flat targets of every level
/// (main head first, then the curriculum heads).
pub(crate) struct HostBatch {
    pub(crate) size: usize,
    input: Vec<f32>,
    levels: Vec<HostLevel>,
}

impl HostBatch {
    pub(crate) fn into_tensors(
        self,
        l: usize,
        c: usize,
        s: usize,
        device: &Device,
    ) -> (Tensor<4>, Vec<TargetBatch>) {
        let b = self.size;
        let levels = self
            .levels
            .into_iter()
            .map(|level| {
                let g = level.grid;
                let t = |v: Vec<f32>, ch: usize| {
                    Tensor::from_data(TensorData::new(v, [b, ch, g, g]), device)
                };
                let active = level.weight.iter().filter(|&&w| w > 0.0).count();
                let targets = level.targets;
                TargetBatch {
                    cls: t(targets.cls, l),
                    off_x: t(targets.off_x, l),
                    off_y: t(targets.off_y, l),
                    nb_x: t(targets.nb_x, l * c),
                    nb_y: t(targets.nb_y, l * c),
                    mask: t(targets.mask, l),
                    nb_mask: t(targets.nb_mask, l * c),
                    weight: Tensor::from_data(TensorData::new(level.weight, [b, 1, 1, 1]), device),
                    active,
                }
            })
            .collect();
        (
            Tensor::from_data(TensorData::new(self.input, [b, 3, s, s]), device),
            levels,
        )
    }
}

/// What one epoch trains on.
pub(crate) struct EpochFaces<'a> {
    pub(crate) labeled: &'a [Face],
    pub(crate) pseudo: &'a [Face],
    /// Pseudo-labeled samples drawn this epoch (from `pseudo`, cycling if it is smaller).
    pub(crate) pseudo_count: usize,
    /// Levels the pseudo-labels train (labeled faces train every level).
    pub(crate) pseudo_levels: RangeInclusive<usize>,
    /// Main head's grid, and how many levels there are (1 + curriculum heads).
    pub(crate) grid: usize,
    pub(crate) levels: usize,
}

/// A teacher and how to render its input (its size and normalisation).
pub(crate) struct TeacherInput<'a> {
    pub(crate) teacher: Teacher,
    pub(crate) spec: SampleSpec<'a>,
}

/// The batches of `epoch`, in order: a pure function of (seed, epoch) and the data (and the
/// teacher, when distilling).
pub(crate) fn epoch_batches(
    faces: &EpochFaces<'_>,
    spec: &SampleSpec<'_>,
    config: &TrainConfig,
    index: &NeighborIndex,
    epoch: usize,
    mut teacher: Option<&mut TeacherInput<'_>>,
    mut emit: impl FnMut(HostBatch) -> bool,
) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(
        config.train.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    // (pseudo-labeled?, index)
    let mut order: Vec<(bool, usize)> = (0..faces.labeled.len()).map(|i| (false, i)).collect();
    order.shuffle(&mut rng);
    if faces.pseudo_count > 0 && !faces.pseudo.is_empty() {
        let mut drawn: Vec<usize> = (0..faces.pseudo.len()).collect();
        drawn.shuffle(&mut rng);
        order.extend(
            drawn
                .into_iter()
                .cycle()
                .take(faces.pseudo_count)
                .map(|i| (true, i)),
        );
        order.shuffle(&mut rng);
    }
    let s = spec.input_size;
    let bs = config.train.batch_size.max(1);
    // Each sample draws its augmentation from its own stream of one epoch key, so samples are
    // made in parallel (a GPU eats them faster than one core makes them) and stay seeded.
    let sample_key = rng.random::<u64>();
    // Drop the last partial batch: BatchNorm statistics of a tiny batch are noise.
    let full = (order.len() / bs).max(1);
    for (batch_index, chunk) in order.chunks(bs).take(full).enumerate() {
        let mut batch = HostBatch {
            size: chunk.len(),
            input: vec![0.0; chunk.len() * 3 * s * s],
            levels: (0..faces.levels)
                .map(|level| HostLevel {
                    grid: faces.grid >> level,
                    targets: PipTargets::empty(),
                    weight: Vec::with_capacity(chunk.len()),
                })
                .collect(),
        };
        let face_of = |(pseudo, i): (bool, usize)| {
            if pseudo {
                &faces.pseudo[i]
            } else {
                &faces.labeled[i]
            }
        };
        let draws: Vec<SampleDraw> = (0..chunk.len())
            .map(|k| {
                let face = face_of(chunk[k]);
                let mut rng = ChaCha8Rng::seed_from_u64(sample_key);
                rng.set_stream((batch_index * bs + k) as u64);
                let base = SampleBase {
                    points: &face.points,
                    detected: face.detected.as_ref(),
                    image_size: face.image.dimensions(),
                };
                draw_sample(base, spec, Some(&config.augment), &mut rng)
            })
            .collect();
        let render = |spec: &SampleSpec<'_>, input: &mut [f32]| -> Vec<Vec<Point>> {
            let size = 3 * spec.input_size * spec.input_size;
            chunk
                .par_iter()
                .zip(&draws)
                .zip(input.par_chunks_exact_mut(size))
                .map(|((&sample, draw), out)| {
                    let face = face_of(sample);
                    render_sample(&face.image, &face.points, draw, spec, out)
                })
                .collect()
        };
        let samples = render(spec, &mut batch.input);
        let mut main: Vec<PipTargets> = samples
            .iter()
            .map(|points| pip_targets(points, index, faces.grid))
            .collect();
        if let Some(t) = teacher.as_deref_mut() {
            let size = t.spec.input_size;
            let mut input = vec![0.0; chunk.len() * 3 * size * size];
            render(&t.spec, &mut input);
            t.teacher.teach(&input, chunk.len(), &mut main)?;
        }
        for ((&(pseudo, _), points), main) in chunk.iter().zip(&samples).zip(main) {
            let mut main = Some(main);
            for (level_index, level) in batch.levels.iter_mut().enumerate() {
                let active = !pseudo || faces.pseudo_levels.contains(&level_index);
                let targets = match main.take() {
                    Some(targets) => targets,
                    None => pip_targets(points, index, level.grid),
                };
                level.targets.append(targets, active);
                level.weight.push(if active { 1.0 } else { 0.0 });
            }
        }
        if !emit(batch) {
            return Ok(());
        }
    }
    Ok(())
}
