//! The PIPNet network as data: a ResNet-18 layout (BasicBlocks 2-2-2-2) whose BatchNorms are
//! folded into the preceding convolutions, then five 1x1 heads. Training (burn) and the ONNX
//! emitter share this description, so an exported graph is the trained network by construction.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// Shape of the network.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NetworkSpec {
    /// Square input side S in pixels.
    pub input_size: usize,
    /// Output channels of the stem and of the four stages (ResNet-18: 64, 128, 256, 512).
    pub widths: [usize; 4],
    /// Stride of the last stage: 2 gives total stride 32 (the paper), 1 gives 16.
    pub last_stage_stride: usize,
    pub num_landmarks: usize,
    pub num_neighbors: usize,
}

impl NetworkSpec {
    /// The paper's ResNet-18 PIPNet: 256x256 input, stride 32, 8x8 grid.
    pub fn resnet18(num_landmarks: usize, num_neighbors: usize) -> Self {
        Self {
            input_size: 256,
            widths: [64, 128, 256, 512],
            last_stage_stride: 2,
            num_landmarks,
            num_neighbors,
        }
    }

    /// Total stride from input pixels to grid cells.
    pub fn stride(&self) -> usize {
        16 * self.last_stage_stride
    }

    pub fn grid(&self) -> usize {
        self.input_size / self.stride()
    }

    /// `(in_channels, out_channels, stride)` of the first block of each of the four stages
    /// (the second block keeps `out_channels` at stride 1).
    pub fn stages(&self) -> [(usize, usize, usize); 4] {
        let w = self.widths;
        let strides = [1, 2, 2, self.last_stage_stride];
        [0, 1, 2, 3].map(|s| (if s == 0 { w[0] } else { w[s - 1] }, w[s], strides[s]))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !matches!(self.last_stage_stride, 1 | 2) {
            return Err(Error::Spec(format!(
                "last_stage_stride {} (must be 1 or 2)",
                self.last_stage_stride
            )));
        }
        if self.input_size == 0 || !self.input_size.is_multiple_of(self.stride()) {
            return Err(Error::Spec(format!(
                "input size {} is not a positive multiple of stride {}",
                self.input_size,
                self.stride()
            )));
        }
        if self.widths.contains(&0) || self.num_landmarks == 0 {
            return Err(Error::Spec(
                "widths and landmark count must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// A convolution with its BatchNorm folded in: `weight` is `[out, in, k, k]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvLayer {
    pub out_channels: usize,
    pub in_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// One BasicBlock: conv-bn-relu, conv-bn, plus the shortcut (a 1x1 conv-bn when the shape
/// changes), then ReLU.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicBlock {
    pub conv1: ConvLayer,
    pub conv2: ConvLayer,
    pub downsample: Option<ConvLayer>,
}

/// Weights of the whole network. Heads are in contract order: cls, off_x, off_y, nb_x, nb_y.
#[derive(Debug, Clone, PartialEq)]
pub struct PipNetWeights {
    pub spec: NetworkSpec,
    /// 7x7 stride-2 stem (followed by ReLU and a 3x3 stride-2 max-pool).
    pub stem: ConvLayer,
    /// Four stages of two blocks.
    pub stages: Vec<[BasicBlock; 2]>,
    pub heads: [ConvLayer; 5],
}

/// BatchNorm statistics used to fold random BN layers into seeded convolutions.
struct BatchNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

impl ConvLayer {
    fn seeded(
        rng: &mut ChaCha8Rng,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        gamma_range: (f32, f32),
    ) -> Self {
        // He-uniform weights, then a random BatchNorm folded in.
        let fan_in = (in_channels * kernel * kernel) as f32;
        let bound = (6.0 / fan_in).sqrt();
        let weight: Vec<f32> = (0..out_channels * in_channels * kernel * kernel)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let bn = BatchNorm {
            gamma: (0..out_channels)
                .map(|_| rng.random_range(gamma_range.0..gamma_range.1))
                .collect(),
            beta: (0..out_channels)
                .map(|_| rng.random_range(-0.1..0.1))
                .collect(),
            mean: (0..out_channels)
                .map(|_| rng.random_range(-0.1..0.1))
                .collect(),
            var: (0..out_channels)
                .map(|_| rng.random_range(0.5..1.5))
                .collect(),
        };
        let mut layer = Self {
            out_channels,
            in_channels,
            kernel,
            stride,
            padding: kernel / 2,
            weight,
            bias: vec![0.0; out_channels],
        };
        layer.fold_batch_norm(&bn, 1e-5);
        layer
    }

    /// Head: 1x1 conv with a bias and no BatchNorm.
    fn seeded_head(rng: &mut ChaCha8Rng, in_channels: usize, out_channels: usize) -> Self {
        let bound = (1.0 / in_channels as f32).sqrt();
        Self {
            out_channels,
            in_channels,
            kernel: 1,
            stride: 1,
            padding: 0,
            weight: (0..out_channels * in_channels)
                .map(|_| rng.random_range(-bound..bound))
                .collect(),
            bias: (0..out_channels)
                .map(|_| rng.random_range(-0.1..0.1))
                .collect(),
        }
    }

    /// `w' = w * g / sqrt(var + eps)`, `b' = beta + (b - mean) * g / sqrt(var + eps)`.
    fn fold_batch_norm(&mut self, bn: &BatchNorm, eps: f32) {
        let per_out = self.in_channels * self.kernel * self.kernel;
        for o in 0..self.out_channels {
            let scale = bn.gamma[o] / (bn.var[o] + eps).sqrt();
            for w in &mut self.weight[o * per_out..(o + 1) * per_out] {
                *w *= scale;
            }
            self.bias[o] = bn.beta[o] + (self.bias[o] - bn.mean[o]) * scale;
        }
    }
}

impl PipNetWeights {
    /// Deterministic random weights for `spec` (tests and benchmarks; not a trained model).
    /// The second convolution of each block gets small BatchNorm scales so activations stay in
    /// a moderate range through the residual sums.
    pub fn seeded(spec: NetworkSpec, seed: u64) -> Result<Self> {
        spec.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let stem = ConvLayer::seeded(&mut rng, 3, spec.widths[0], 7, 2, (0.5, 1.5));
        let mut stages = Vec::with_capacity(4);
        for (in_ch, out_ch, stride) in spec.stages() {
            let block = |in_ch: usize, stride: usize, rng: &mut ChaCha8Rng| BasicBlock {
                conv1: ConvLayer::seeded(rng, in_ch, out_ch, 3, stride, (0.5, 1.5)),
                conv2: ConvLayer::seeded(rng, out_ch, out_ch, 3, 1, (0.1, 0.3)),
                downsample: (stride != 1 || in_ch != out_ch)
                    .then(|| ConvLayer::seeded(rng, in_ch, out_ch, 1, stride, (0.5, 1.5))),
            };
            let first = block(in_ch, stride, &mut rng);
            let second = block(out_ch, 1, &mut rng);
            stages.push([first, second]);
        }
        let (l, c, last) = (spec.num_landmarks, spec.num_neighbors, spec.widths[3]);
        let heads = [l, l, l, l * c, l * c].map(|out| ConvLayer::seeded_head(&mut rng, last, out));
        Ok(Self {
            spec,
            stem,
            stages,
            heads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_seeded_weights_are_deterministic_and_shaped() {
        let spec = NetworkSpec {
            input_size: 64,
            widths: [8, 8, 16, 16],
            last_stage_stride: 1,
            num_landmarks: 5,
            num_neighbors: 2,
        };
        let a = PipNetWeights::seeded(spec.clone(), 7).unwrap();
        assert_eq!(a, PipNetWeights::seeded(spec.clone(), 7).unwrap());
        assert_ne!(
            a.stem.weight,
            PipNetWeights::seeded(spec.clone(), 8).unwrap().stem.weight
        );
        assert_eq!(spec.grid(), 4);
        assert_eq!(a.stem.weight.len(), 8 * 3 * 7 * 7);
        assert!(a.stages[0][0].downsample.is_none());
        assert!(a.stages[1][0].downsample.is_some());
        assert_eq!(a.heads[3].out_channels, 10);
    }

    #[test]
    fn test_bad_specs_are_refused() {
        let mut spec = NetworkSpec::resnet18(68, 10);
        spec.input_size = 250;
        assert!(PipNetWeights::seeded(spec.clone(), 0).is_err());
        spec.input_size = 256;
        spec.last_stage_stride = 3;
        assert!(PipNetWeights::seeded(spec, 0).is_err());
    }

    #[test]
    fn test_batch_norm_folding_matches_conv_then_bn() {
        // A 1x1 conv on one input value x: conv = w*x + b, then BN.
        let mut layer = ConvLayer {
            out_channels: 1,
            in_channels: 1,
            kernel: 1,
            stride: 1,
            padding: 0,
            weight: vec![2.0],
            bias: vec![0.5],
        };
        let bn = BatchNorm {
            gamma: vec![1.5],
            beta: vec![0.25],
            mean: vec![0.75],
            var: vec![4.0],
        };
        let x = 3.0f32;
        let expected = (2.0 * x + 0.5 - 0.75) / (4.0f32 + 1e-5).sqrt() * 1.5 + 0.25;
        layer.fold_batch_norm(&bn, 1e-5);
        assert!((layer.weight[0] * x + layer.bias[0] - expected).abs() < 1e-5);
    }
}
