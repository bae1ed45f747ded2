//! PIP decoding and neighbour-vote merging (docs/model-contract.md, "Decoding and merging").
//!
//! [`decode_pip_scalar`] is the reference: a literal transcription of the contract's steps.
//! [`Decoder`] is the fast path: the per-landmark arg-max over the `G x G` score map (the bulk
//! of the work) runs on AVX2/SSE2 (x86_64) or NEON (aarch64), picked once at run time, and the
//! merge adds votes in the reference's order, so both produce the same sums.

use crate::meanface::NeighborIndex;
use crate::{Error, Result};

/// One decoded landmark: crop-normalised position (0..1 spans the crop) and its `cls` score.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Landmark {
    pub x: f32,
    pub y: f32,
    pub score: f32,
}

/// Borrowed raw outputs of a batch, in the contract's layouts:
/// `cls`, `off_x`, `off_y` are `[N, L, G, G]`; `nb_x`, `nb_y` are `[N, L*C, G, G]`.
#[derive(Debug, Clone, Copy)]
pub struct PipMaps<'a> {
    cls: &'a [f32],
    off_x: &'a [f32],
    off_y: &'a [f32],
    nb_x: &'a [f32],
    nb_y: &'a [f32],
    batch: usize,
    num_landmarks: usize,
    num_neighbors: usize,
    grid: usize,
}

impl<'a> PipMaps<'a> {
    /// Wraps the five maps after checking every length against `[N, L, G, G]` / `[N, L*C, G, G]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cls: &'a [f32],
        off_x: &'a [f32],
        off_y: &'a [f32],
        nb_x: &'a [f32],
        nb_y: &'a [f32],
        num_landmarks: usize,
        num_neighbors: usize,
        grid: usize,
    ) -> Result<Self> {
        let per_face = num_landmarks * grid * grid;
        if per_face == 0 {
            return Err(Error::Invalid {
                what: "PIP map shape",
                detail: format!("L={num_landmarks}, G={grid} (both must be positive)"),
            });
        }
        let batch = cls.len() / per_face;
        let expect = |what, got: usize, expected| {
            if got == expected {
                Ok(())
            } else {
                Err(Error::SizeMismatch {
                    what,
                    got,
                    expected,
                })
            }
        };
        expect("cls values", cls.len(), batch * per_face)?;
        expect("off_x values", off_x.len(), batch * per_face)?;
        expect("off_y values", off_y.len(), batch * per_face)?;
        expect("nb_x values", nb_x.len(), batch * per_face * num_neighbors)?;
        expect("nb_y values", nb_y.len(), batch * per_face * num_neighbors)?;
        Ok(Self {
            cls,
            off_x,
            off_y,
            nb_x,
            nb_y,
            batch,
            num_landmarks,
            num_neighbors,
            grid,
        })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn num_landmarks(&self) -> usize {
        self.num_landmarks
    }

    pub fn grid(&self) -> usize {
        self.grid
    }

    fn check(&self, index: &NeighborIndex, out: &[Landmark]) -> Result<()> {
        if index.num_landmarks() != self.num_landmarks {
            return Err(Error::SizeMismatch {
                what: "neighbour index landmarks",
                got: index.num_landmarks(),
                expected: self.num_landmarks,
            });
        }
        if index.num_neighbors() != self.num_neighbors {
            return Err(Error::SizeMismatch {
                what: "neighbour index neighbours",
                got: index.num_neighbors(),
                expected: self.num_neighbors,
            });
        }
        if out.len() != self.batch * self.num_landmarks {
            return Err(Error::SizeMismatch {
                what: "decoded landmark slots",
                got: out.len(),
                expected: self.batch * self.num_landmarks,
            });
        }
        Ok(())
    }
}

/// Index of the first maximum, ignoring NaNs; 0 when every value is NaN. This is the reference
/// that every SIMD kernel must match exactly.
pub fn argmax_scalar(values: &[f32]) -> usize {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map_or(0, |(i, _)| i)
}

/// The contract's decode + merge, step by step, over a whole batch. `out` holds `N * L` slots.
pub fn decode_pip_scalar(
    maps: &PipMaps<'_>,
    index: &NeighborIndex,
    out: &mut [Landmark],
) -> Result<()> {
    maps.check(index, out)?;
    let (l_count, c_count, g) = (maps.num_landmarks, maps.num_neighbors, maps.grid);
    let cells = g * g;
    let gf = g as f32;
    let mut sums = vec![[0f32; 2]; l_count];
    let mut counts = vec![0u32; l_count];
    for (n, face_out) in out.chunks_exact_mut(l_count).enumerate() {
        // Steps 1, 2 and 5: arg-max cell, own prediction and score.
        let mut winners = Vec::with_capacity(l_count);
        for l in 0..l_count {
            let base = (n * l_count + l) * cells;
            let cell = argmax_scalar(&maps.cls[base..base + cells]);
            let (r, c) = ((cell / g) as f32, (cell % g) as f32);
            sums[l] = [
                (c + maps.off_x[base + cell]) / gf,
                (r + maps.off_y[base + cell]) / gf,
            ];
            counts[l] = 1;
            face_out[l].score = maps.cls[base + cell];
            winners.push((cell, r, c));
        }
        // Step 3: every neighbour prediction votes for its landmark.
        for (l, &(cell, r, c)) in winners.iter().enumerate() {
            for (k, &j) in index.neighbors_of(l).iter().enumerate() {
                let at = ((n * l_count + l) * c_count + k) * cells + cell;
                let j = j as usize;
                sums[j][0] += (c + maps.nb_x[at]) / gf;
                sums[j][1] += (r + maps.nb_y[at]) / gf;
                counts[j] += 1;
            }
        }
        // Step 4: the mean of the own prediction and the votes.
        for (slot, (sum, &count)) in face_out.iter_mut().zip(sums.iter().zip(&counts)) {
            slot.x = sum[0] / count as f32;
            slot.y = sum[1] / count as f32;
        }
    }
    Ok(())
}

/// The arg-max implementation chosen for this CPU. A `Kernel` is proof that the CPU has the
/// instructions it uses: its variant is private, and only [`Kernel::detect`],
/// [`Kernel::available`] and [`Kernel::scalar`] make one, after asking the CPU (as rten-simd's
/// ISA tokens do), so the safe [`Kernel::argmax`] can never run AVX2 code where there is none.
///
/// ```compile_fail
/// // The variant that was once public cannot be named outside this crate.
/// let kernel = pipnet_core::decode::Kernel::Avx2;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel(Isa);

/// The instruction sets of [`Kernel`]; made only where the CPU was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Sse2,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Kernel {
    /// The portable kernel, on any CPU.
    pub const fn scalar() -> Self {
        Kernel(Isa::Scalar)
    }

    /// The fastest kernel this CPU supports.
    pub fn detect() -> Self {
        Self::available().pop().unwrap_or(Self::scalar())
    }

    /// Every kernel this CPU can run, slowest first (for tests and benches).
    pub fn available() -> Vec<Self> {
        let mut kernels = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            kernels.push(Isa::Sse2);
            if std::arch::is_x86_feature_detected!("avx2") {
                kernels.push(Isa::Avx2);
            }
        }
        #[cfg(target_arch = "aarch64")]
        kernels.push(Isa::Neon);
        kernels.into_iter().map(Kernel).collect()
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            Isa::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Isa::Sse2 => "sse2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => "neon",
        }
    }

    /// First maximum ignoring NaNs, exactly as [`argmax_scalar`].
    pub fn argmax(self, values: &[f32]) -> usize {
        match self.0 {
            Isa::Scalar => argmax_scalar(values),
            // SAFETY: SSE2 is part of the x86_64 baseline.
            #[cfg(target_arch = "x86_64")]
            Isa::Sse2 => unsafe { simd::argmax_sse2(values) },
            // SAFETY: `Isa::Avx2` is private and only made in `available`, after
            // `is_x86_feature_detected!("avx2")`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { simd::argmax_avx2(values) },
            // SAFETY: NEON is part of the aarch64 baseline.
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { simd::argmax_neon(values) },
        }
    }
}

/// The fast decoder: owns the neighbour index and per-face scratch so a batch decodes without
/// allocating. One per thread.
#[derive(Debug, Clone)]
pub struct Decoder {
    index: NeighborIndex,
    kernel: Kernel,
    /// Predictions merged into each landmark: its own plus the votes it receives.
    predictions: Vec<f32>,
    winners: Vec<Winner>,
}

impl Decoder {
    pub fn new(index: NeighborIndex) -> Self {
        Self::with_kernel(index, Kernel::detect())
    }

    /// A decoder pinned to one kernel (tests and benches compare them).
    pub fn with_kernel(index: NeighborIndex, kernel: Kernel) -> Self {
        let predictions = (0..index.num_landmarks())
            .map(|j| (index.voters_of(j).len() + 1) as f32)
            .collect();
        let winners = vec![Winner::default(); index.num_landmarks()];
        Self {
            index,
            kernel,
            predictions,
            winners,
        }
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    pub fn index(&self) -> &NeighborIndex {
        &self.index
    }

    /// Decodes and merges a batch into `out` (`N * L` slots); same results as
    /// [`decode_pip_scalar`] (bit for bit when G is a power of two).
    ///
    /// Sums are kept in cell units and divided once by `G * count`: scaling by a power of two
    /// is exact, so this equals the reference's per-term division while replacing ~2 * L * C
    /// divisions with 2 * L.
    pub fn decode_into(&mut self, maps: &PipMaps<'_>, out: &mut [Landmark]) -> Result<()> {
        maps.check(&self.index, out)?;
        let (l_count, c_count, g) = (maps.num_landmarks, maps.num_neighbors, maps.grid);
        let cells = g * g;
        let gf = g as f32;
        for (n, face_out) in out.chunks_exact_mut(l_count).enumerate() {
            let face_maps = n * l_count * cells;
            for (l, (slot, winner)) in face_out.iter_mut().zip(&mut self.winners).enumerate() {
                let base = face_maps + l * cells;
                let cell = self.kernel.argmax(&maps.cls[base..base + cells]);
                let (c, r) = ((cell % g) as f32, (cell / g) as f32);
                *winner = Winner { cell, c, r };
                // Own prediction, in cell units until the final division.
                slot.x = c + maps.off_x[base + cell];
                slot.y = r + maps.off_y[base + cell];
                slot.score = maps.cls[base + cell];
            }
            // Votes in the reference's order (l, then k): the k planes of landmark l are
            // `cells` apart, a stride the hardware prefetcher follows.
            let face_nb = face_maps * c_count;
            for (l, w) in self.winners.iter().enumerate() {
                let base = face_nb + l * c_count * cells + w.cell;
                for (k, &j) in self.index.neighbors_of(l).iter().enumerate() {
                    let at = base + k * cells;
                    let slot = &mut face_out[j as usize];
                    slot.x += w.c + maps.nb_x[at];
                    slot.y += w.r + maps.nb_y[at];
                }
            }
            for (slot, &votes) in face_out.iter_mut().zip(&self.predictions) {
                let denominator = gf * votes;
                slot.x /= denominator;
                slot.y /= denominator;
            }
        }
        Ok(())
    }
}

/// A landmark's arg-max cell and its column/row as floats.
#[derive(Debug, Clone, Copy, Default)]
struct Winner {
    cell: usize,
    c: f32,
    r: f32,
}

/// Decodes a batch with the fastest kernel, allocating fresh scratch; prefer a reused
/// [`Decoder`] on hot paths.
pub fn decode_pip(maps: &PipMaps<'_>, index: &NeighborIndex, out: &mut [Landmark]) -> Result<()> {
    Decoder::new(index.clone()).decode_into(maps, out)
}

/// Arg-max kernels: a max pass (NaN-ignoring max instructions, -inf start), then a scan for the
/// first lane equal to that maximum. NaN compares unequal to everything, so NaNs never win.
mod simd {
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    /// The maximum of `tail` and `start`, ignoring NaNs.
    fn max_ignoring_nan(start: f32, tail: &[f32]) -> f32 {
        tail.iter().fold(start, |m, &v| if v > m { v } else { m })
    }

    fn first_equal(values: &[f32], from: usize, max: f32) -> usize {
        values[from..]
            .iter()
            .position(|&v| v == max)
            .map_or(0, |i| from + i)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn argmax_avx2(values: &[f32]) -> usize {
        let chunks = values.len() / 8;
        let ptr = values.as_ptr();
        // SAFETY: every load reads 8 floats at `8 * i` with `i < len / 8`.
        unsafe {
            let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
            for i in 0..chunks {
                // maxps returns its second operand when either is NaN, so NaNs leave `m` alone.
                m = _mm256_max_ps(_mm256_loadu_ps(ptr.add(8 * i)), m);
            }
            let half = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let max = max_ignoring_nan(horizontal_max_sse(half), &values[8 * chunks..]);
            let target = _mm256_set1_ps(max);
            for i in 0..chunks {
                let eq = _mm256_cmp_ps(_mm256_loadu_ps(ptr.add(8 * i)), target, _CMP_EQ_OQ);
                let mask = _mm256_movemask_ps(eq);
                if mask != 0 {
                    return 8 * i + mask.trailing_zeros() as usize;
                }
            }
            first_equal(values, 8 * chunks, max)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse2")]
    pub(super) unsafe fn argmax_sse2(values: &[f32]) -> usize {
        let chunks = values.len() / 4;
        let ptr = values.as_ptr();
        // SAFETY: every load reads 4 floats at `4 * i` with `i < len / 4`.
        unsafe {
            let mut m = _mm_set1_ps(f32::NEG_INFINITY);
            for i in 0..chunks {
                m = _mm_max_ps(_mm_loadu_ps(ptr.add(4 * i)), m);
            }
            let max = max_ignoring_nan(horizontal_max_sse(m), &values[4 * chunks..]);
            let target = _mm_set1_ps(max);
            for i in 0..chunks {
                let mask = _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(ptr.add(4 * i)), target));
                if mask != 0 {
                    return 4 * i + mask.trailing_zeros() as usize;
                }
            }
            first_equal(values, 4 * chunks, max)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse2")]
    fn horizontal_max_sse(v: __m128) -> f32 {
        let pairs = _mm_max_ps(v, _mm_movehl_ps(v, v));
        let one = _mm_max_ss(pairs, _mm_shuffle_ps(pairs, pairs, 0b01));
        _mm_cvtss_f32(one)
    }

    #[cfg(target_arch = "aarch64")]
    pub(super) unsafe fn argmax_neon(values: &[f32]) -> usize {
        use std::arch::aarch64::*;
        let chunks = values.len() / 4;
        let ptr = values.as_ptr();
        // SAFETY: every load reads 4 floats at `4 * i` with `i < len / 4`.
        unsafe {
            let mut m = vdupq_n_f32(f32::NEG_INFINITY);
            for i in 0..chunks {
                // maxNum semantics: a NaN lane yields the other operand.
                m = vmaxnmq_f32(m, vld1q_f32(ptr.add(4 * i)));
            }
            let max = max_ignoring_nan(vmaxnmvq_f32(m), &values[4 * chunks..]);
            let target = vdupq_n_f32(max);
            for i in 0..chunks {
                if vmaxvq_u32(vceqq_f32(vld1q_f32(ptr.add(4 * i)), target)) != 0 {
                    return first_equal(values, 4 * i, max);
                }
            }
            first_equal(values, 4 * chunks, max)
        }
    }
}

/// Horizontal-flip test-time averaging for one face: `points` are its landmarks from the crop,
/// `mirrored` those the model found in the same crop mirrored left to right. Point `i` of the
/// face is point `perm[i]` of the mirrored one (the scheme's flip permutation) at `x -> 1 - x`:
/// crop pixel `u` has its centre at `(u + 0.5) / S`, so reversing the pixel columns maps
/// normalised `x` to `1 - x`. Positions and scores become the mean of both passes.
pub fn average_with_mirror(points: &mut [Landmark], mirrored: &[Landmark], perm: &[usize]) {
    debug_assert!(points.len() == mirrored.len() && points.len() == perm.len());
    for (p, &from) in points.iter_mut().zip(perm) {
        let m = mirrored[from];
        p.x = 0.5 * (p.x + 1.0 - m.x);
        p.y = 0.5 * (p.y + m.y);
        p.score = 0.5 * (p.score + m.score);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_mirror_average_unflips_through_the_permutation() {
        // Three points: 0 and 2 swap under the flip, 1 maps to itself.
        let perm = [2, 1, 0];
        let face = [
            Landmark {
                x: 0.2,
                y: 0.3,
                score: 0.9,
            },
            Landmark {
                x: 0.5,
                y: 0.6,
                score: 0.8,
            },
            Landmark {
                x: 0.7,
                y: 0.3,
                score: 0.7,
            },
        ];
        // What a perfect model sees in the mirrored crop: the left point (0) now lies at
        // 1 - 0.2 on the right, where point 2 used to be, and is labeled 2.
        let mirrored: Vec<Landmark> = (0..3)
            .map(|i| {
                let p = face[perm[i]];
                Landmark { x: 1.0 - p.x, ..p }
            })
            .collect();
        let mut points = face;
        average_with_mirror(&mut points, &mirrored, &perm);
        for (a, b) in points.iter().zip(&face) {
            assert!(
                (a.x - b.x).abs() < 1e-6 && (a.y - b.y).abs() < 1e-6,
                "{a:?} vs {b:?}"
            );
        }
        // A mirrored pass that is off by +0.1 in (mirrored) x moves the mean by -0.05.
        let shifted: Vec<Landmark> = mirrored
            .iter()
            .map(|p| Landmark { x: p.x + 0.1, ..*p })
            .collect();
        let mut points = face;
        average_with_mirror(&mut points, &shifted, &perm);
        assert!((points[0].x - (face[0].x - 0.05)).abs() < 1e-6);
        assert!((points[1].score - 0.8).abs() < 1e-6);
    }

    use super::*;
    use proptest::prelude::*;

    fn test_index(l: usize, c: usize) -> NeighborIndex {
        let face: Vec<crate::Point> = (0..l)
            .map(|i| [(i as f32 * 0.37).sin(), (i as f32 * 0.91).cos()])
            .collect();
        NeighborIndex::from_mean_face(&face, c).unwrap()
    }

    #[test]
    fn test_argmax_picks_first_maximum_and_ignores_nan() {
        let cases: &[(&[f32], usize)] = &[
            (&[1.0, 3.0, 3.0, 2.0], 1),
            (&[f32::NAN, 0.5, 0.5], 1),
            (&[f32::NAN, f32::NAN], 0),
            (&[f32::NEG_INFINITY, f32::NEG_INFINITY], 0),
            (&[f32::NAN, f32::NEG_INFINITY], 1),
            (&[-1.0, f32::INFINITY, f32::NAN, f32::INFINITY], 1),
        ];
        for kernel in Kernel::available() {
            for &(values, expected) in cases {
                assert_eq!(
                    kernel.argmax(values),
                    expected,
                    "{values:?} with {kernel:?}"
                );
                // The same case past a SIMD width, so the tail path and chunk path both run.
                let mut long = vec![f32::NEG_INFINITY; 21];
                long.extend_from_slice(values);
                let shifted = if values.iter().all(|v| v.is_nan()) {
                    0
                } else {
                    argmax_scalar(&long)
                };
                assert_eq!(kernel.argmax(&long), shifted, "{long:?} with {kernel:?}");
            }
        }
    }

    #[test]
    fn test_single_landmark_decodes_its_cell_and_offset() {
        // L=2, C=1, G=4: landmark 0 wins cell (r=2, c=1) with offset (0.25, 0.5).
        let (l, c, g) = (2, 1, 4);
        let cells = g * g;
        let mut cls = vec![0.0; l * cells];
        let mut off_x = vec![0.0; l * cells];
        let mut off_y = vec![0.0; l * cells];
        let mut nb_x = vec![0.0; l * c * cells];
        let mut nb_y = vec![0.0; l * c * cells];
        cls[2 * g + 1] = 0.9;
        off_x[2 * g + 1] = 0.25;
        off_y[2 * g + 1] = 0.5;
        // Landmark 1 wins cell 0 with offset (1, 1); landmark 0 votes (c + 3, r + 0) for it.
        cls[cells] = 0.8;
        off_x[cells] = 1.0;
        off_y[cells] = 1.0;
        nb_x[2 * g + 1] = 3.0;
        // Landmark 1 votes (0 + 1.25, 0 + 2.5) for landmark 0.
        nb_x[cells] = 1.25;
        nb_y[cells] = 2.5;
        let maps = PipMaps::new(&cls, &off_x, &off_y, &nb_x, &nb_y, l, c, g).unwrap();
        let index = NeighborIndex::from_rows(2, 1, vec![1, 0]).unwrap();
        let mut out = vec![Landmark::default(); 2];
        decode_pip_scalar(&maps, &index, &mut out).unwrap();
        let own0 = [1.25 / 4.0, 2.5 / 4.0];
        let vote0 = [1.25 / 4.0, 2.5 / 4.0];
        assert_eq!(out[0].x, (own0[0] + vote0[0]) / 2.0);
        assert_eq!(out[0].y, (own0[1] + vote0[1]) / 2.0);
        assert_eq!(out[0].score, 0.9);
        assert_eq!(out[1].x, (1.0 / 4.0 + 4.0 / 4.0) / 2.0);
        assert_eq!(out[1].y, (1.0 / 4.0 + 2.0 / 4.0) / 2.0);
    }

    #[test]
    fn test_shape_mismatches_are_refused() {
        let v = vec![0.0; 2 * 16];
        let nb = vec![0.0; 2 * 16];
        assert!(PipMaps::new(&v, &v, &v, &nb, &nb[..31], 2, 1, 4).is_err());
        assert!(PipMaps::new(&v, &v[..16], &v, &nb, &nb, 2, 1, 4).is_err());
        let maps = PipMaps::new(&v, &v, &v, &nb, &nb, 2, 1, 4).unwrap();
        let index = test_index(2, 1);
        assert!(decode_pip_scalar(&maps, &index, &mut [Landmark::default(); 3]).is_err());
        assert!(
            decode_pip_scalar(&maps, &test_index(3, 1), &mut [Landmark::default(); 2]).is_err()
        );
    }

    /// Score values drawn from a few levels (many ties) or from extremes.
    fn score_strategy() -> impl Strategy<Value = f32> {
        prop_oneof![
            (0..4i32).prop_map(|v| v as f32),
            -10.0f32..10.0,
            prop::sample::select(vec![
                f32::MAX,
                f32::MIN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::MIN_POSITIVE,
                -0.0,
                1e-38,
            ]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn prop_fast_decoders_match_the_reference(
            grid in prop::sample::select(vec![4usize, 8, 16, 32]),
            l in 2usize..12,
            batch in 1usize..4,
            seed_scores in prop::collection::vec(score_strategy(), 64),
            offsets in prop::collection::vec(-2.0f32..3.0, 64),
        ) {
            let c = (l - 1).min(4);
            let cells = grid * grid;
            let pick = |v: &[f32], i: usize| v[(i * 7919 + i / 64) % v.len()];
            let cls: Vec<f32> = (0..batch * l * cells).map(|i| pick(&seed_scores, i)).collect();
            let off: Vec<f32> = (0..batch * l * cells).map(|i| pick(&offsets, i + 1)).collect();
            let off_y: Vec<f32> = (0..batch * l * cells).map(|i| pick(&offsets, i + 5)).collect();
            let nb: Vec<f32> = (0..batch * l * c * cells).map(|i| pick(&offsets, i + 3)).collect();
            let nb_y: Vec<f32> = (0..batch * l * c * cells).map(|i| pick(&offsets, i + 11)).collect();
            let maps = PipMaps::new(&cls, &off, &off_y, &nb, &nb_y, l, c, grid).unwrap();
            let index = test_index(l, c);
            let mut expected = vec![Landmark::default(); batch * l];
            decode_pip_scalar(&maps, &index, &mut expected).unwrap();
            for kernel in Kernel::available() {
                let mut got = vec![Landmark::default(); batch * l];
                Decoder::with_kernel(index.clone(), kernel).decode_into(&maps, &mut got).unwrap();
                for (e, g) in expected.iter().zip(&got) {
                    prop_assert!((e.x - g.x).abs() <= 1e-6, "{kernel:?}: x {} vs {}", e.x, g.x);
                    prop_assert!((e.y - g.y).abs() <= 1e-6, "{kernel:?}: y {} vs {}", e.y, g.y);
                    prop_assert!(e.score == g.score || (e.score.is_nan() && g.score.is_nan()));
                }
            }
        }

        #[test]
        fn prop_simd_argmax_matches_scalar(values in prop::collection::vec(score_strategy(), 1..100)) {
            for kernel in Kernel::available() {
                prop_assert_eq!(kernel.argmax(&values), argmax_scalar(&values));
            }
        }
    }
}
