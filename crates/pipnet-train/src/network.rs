//! The PIPNet network as data: a backbone whose BatchNorms are folded into the preceding
//! convolutions, then five 1x1 heads. Two backbones: a ResNet-18 layout (BasicBlocks 2-2-2-2,
//! any widths) and torchvision's MobileNetV2 (inverted residuals, depthwise 3x3 convolutions,
//! ReLU6), whose ImageNet weights we can load. Training (burn) and the ONNX emitter share this
//! description, so an exported graph is the trained network by construction.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// Which backbone the heads sit on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backbone {
    /// ResNet-18 layout with the widths of [`NetworkSpec::widths`].
    #[default]
    Resnet18,
    /// torchvision's MobileNetV2 at width 1.0 (features to 1,280 channels).
    MobilenetV2,
}

impl Backbone {
    pub fn name(self) -> &'static str {
        match self {
            Backbone::Resnet18 => "resnet18",
            Backbone::MobilenetV2 => "mobilenetv2",
        }
    }
}

/// Shape of the network.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NetworkSpec {
    /// Square input side S in pixels.
    pub input_size: usize,
    #[serde(default)]
    pub backbone: Backbone,
    /// ResNet only: output channels of the stem and of the four stages (ResNet-18: 64, 128,
    /// 256, 512).
    pub widths: [usize; 4],
    /// Stride of the last strided stage (ResNet: stage 4; MobileNetV2: the 160-channel stage):
    /// 2 gives total stride 32 (the paper), 1 gives 16.
    pub last_stage_stride: usize,
    pub num_landmarks: usize,
    pub num_neighbors: usize,
}

impl NetworkSpec {
    /// The paper's ResNet-18 PIPNet: 256x256 input, stride 32, 8x8 grid.
    pub fn resnet18(num_landmarks: usize, num_neighbors: usize) -> Self {
        Self {
            input_size: 256,
            backbone: Backbone::Resnet18,
            widths: [64, 128, 256, 512],
            last_stage_stride: 2,
            num_landmarks,
            num_neighbors,
        }
    }

    /// The paper's MobileNetV2 PIPNet: 256x256 input, stride 32, 8x8 grid.
    pub fn mobilenet_v2(num_landmarks: usize, num_neighbors: usize) -> Self {
        Self {
            backbone: Backbone::MobilenetV2,
            ..Self::resnet18(num_landmarks, num_neighbors)
        }
    }

    /// Channels of the features the heads read.
    pub fn feature_channels(&self) -> usize {
        match self.backbone {
            Backbone::Resnet18 => self.widths[3],
            Backbone::MobilenetV2 => MOBILENET_V2_FEATURES,
        }
    }

    /// A short description for the graph's `pipnet.backbone` metadata.
    pub fn describe(&self) -> String {
        match self.backbone {
            Backbone::Resnet18 => format!(
                "resnet18 widths={:?} input={} stride={}",
                self.widths,
                self.input_size,
                self.stride()
            ),
            Backbone::MobilenetV2 => format!(
                "mobilenetv2 input={} stride={}",
                self.input_size,
                self.stride()
            ),
        }
    }

    /// Total stride from input pixels to grid cells.
    pub fn stride(&self) -> usize {
        16 * self.last_stage_stride
    }

    pub fn grid(&self) -> usize {
        self.input_size / self.stride()
    }

    /// ResNet: `(in_channels, out_channels, stride)` of the first block of each of the four
    /// stages (the second block keeps `out_channels` at stride 1).
    pub fn stages(&self) -> [(usize, usize, usize); 4] {
        let w = self.widths;
        let strides = [1, 2, 2, self.last_stage_stride];
        [0, 1, 2, 3].map(|s| (if s == 0 { w[0] } else { w[s - 1] }, w[s], strides[s]))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !matches!(self.last_stage_stride, 1 | 2) {
            return Err(Error::Config(format!(
                "last_stage_stride {} (must be 1 or 2)",
                self.last_stage_stride
            )));
        }
        if self.input_size == 0 || !self.input_size.is_multiple_of(self.stride()) {
            return Err(Error::Config(format!(
                "input size {} is not a positive multiple of stride {}",
                self.input_size,
                self.stride()
            )));
        }
        if (self.backbone == Backbone::Resnet18 && self.widths.contains(&0))
            || self.num_landmarks == 0
        {
            return Err(Error::Config(
                "widths and landmark count must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Channels of MobileNetV2's stem, of its last inverted residual block, and of the 1x1
/// convolution after it (width 1.0).
pub const MOBILENET_V2_STEM: usize = 32;
pub const MOBILENET_V2_LAST_BLOCK: usize = 320;
pub const MOBILENET_V2_FEATURES: usize = 1280;

/// One inverted residual block of MobileNetV2: 1x1 expansion (absent when `expand_ratio` is
/// 1), depthwise 3x3 at `stride`, 1x1 linear projection; the input is added back when the
/// shape allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvertedResidualSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub stride: usize,
    pub expand_ratio: usize,
}

impl InvertedResidualSpec {
    pub fn hidden_channels(&self) -> usize {
        self.in_channels * self.expand_ratio
    }

    pub fn residual(&self) -> bool {
        self.stride == 1 && self.in_channels == self.out_channels
    }
}

/// torchvision's MobileNetV2 blocks (`features.1` .. `features.17`) from its table of
/// (expansion t, channels c, repeats n, stride s); the 160-channel stage gets
/// `last_stage_stride` instead of 2.
pub fn mobilenet_v2_blocks(last_stage_stride: usize) -> Vec<InvertedResidualSpec> {
    let table = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, last_stage_stride),
        (6, MOBILENET_V2_LAST_BLOCK, 1, 1),
    ];
    let mut blocks = Vec::with_capacity(17);
    let mut in_channels = MOBILENET_V2_STEM;
    for (t, c, n, s) in table {
        for i in 0..n {
            blocks.push(InvertedResidualSpec {
                in_channels,
                out_channels: c,
                stride: if i == 0 { s } else { 1 },
                expand_ratio: t,
            });
            in_channels = c;
        }
    }
    blocks
}

/// A convolution with its BatchNorm folded in: `weight` is `[out, in / groups, k, k]`
/// row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvLayer {
    pub out_channels: usize,
    pub in_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// 1 for a full convolution, `in_channels` for a depthwise one.
    pub groups: usize,
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

/// A MobileNetV2 block with its BatchNorms folded: ReLU6 after `expand` and `depthwise`,
/// none after `project`.
#[derive(Debug, Clone, PartialEq)]
pub struct InvertedResidual {
    pub expand: Option<ConvLayer>,
    pub depthwise: ConvLayer,
    pub project: ConvLayer,
    pub residual: bool,
}

/// Backbone weights.
#[derive(Debug, Clone, PartialEq)]
pub enum BackboneWeights {
    Resnet18 {
        /// 7x7 stride-2 stem (followed by ReLU and a 3x3 stride-2 max-pool).
        stem: ConvLayer,
        /// Four stages of two blocks.
        stages: Vec<[BasicBlock; 2]>,
    },
    MobilenetV2 {
        /// 3x3 stride-2 stem, then ReLU6.
        stem: ConvLayer,
        blocks: Vec<InvertedResidual>,
        /// 1x1 convolution to 1,280 channels, then ReLU6.
        last: ConvLayer,
    },
}

/// Weights of the whole network. Heads are in contract order: cls, off_x, off_y, nb_x, nb_y.
#[derive(Debug, Clone, PartialEq)]
pub struct PipNetWeights {
    pub spec: NetworkSpec,
    pub backbone: BackboneWeights,
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
    #[allow(clippy::too_many_arguments)]
    fn seeded(
        rng: &mut ChaCha8Rng,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        gamma_range: (f32, f32),
    ) -> Self {
        // He-uniform weights, then a random BatchNorm folded in.
        let fan_in = (in_channels / groups * kernel * kernel) as f32;
        let bound = (6.0 / fan_in).sqrt();
        let weight: Vec<f32> = (0..out_channels * in_channels / groups * kernel * kernel)
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
            groups,
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
            groups: 1,
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
        let per_out = self.weight.len() / self.out_channels;
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
    /// The last convolution of each residual branch gets small BatchNorm scales so activations
    /// stay in a moderate range through the residual sums.
    pub fn seeded(spec: NetworkSpec, seed: u64) -> Result<Self> {
        spec.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let rng = &mut rng;
        let (wide, narrow) = ((0.5, 1.5), (0.1, 0.3));
        let backbone = match spec.backbone {
            Backbone::Resnet18 => {
                let stem = ConvLayer::seeded(rng, 3, spec.widths[0], 7, 2, 1, wide);
                let mut stages = Vec::with_capacity(4);
                for (in_ch, out_ch, stride) in spec.stages() {
                    let mut block = |in_ch: usize, stride: usize| BasicBlock {
                        conv1: ConvLayer::seeded(rng, in_ch, out_ch, 3, stride, 1, wide),
                        conv2: ConvLayer::seeded(rng, out_ch, out_ch, 3, 1, 1, narrow),
                        downsample: (stride != 1 || in_ch != out_ch)
                            .then(|| ConvLayer::seeded(rng, in_ch, out_ch, 1, stride, 1, wide)),
                    };
                    let first = block(in_ch, stride);
                    let second = block(out_ch, 1);
                    stages.push([first, second]);
                }
                BackboneWeights::Resnet18 { stem, stages }
            }
            Backbone::MobilenetV2 => {
                let stem = ConvLayer::seeded(rng, 3, MOBILENET_V2_STEM, 3, 2, 1, wide);
                let blocks = mobilenet_v2_blocks(spec.last_stage_stride)
                    .into_iter()
                    .map(|b| {
                        let hidden = b.hidden_channels();
                        InvertedResidual {
                            expand: (b.expand_ratio != 1).then(|| {
                                ConvLayer::seeded(rng, b.in_channels, hidden, 1, 1, 1, wide)
                            }),
                            depthwise: ConvLayer::seeded(
                                rng, hidden, hidden, 3, b.stride, hidden, wide,
                            ),
                            project: ConvLayer::seeded(
                                rng,
                                hidden,
                                b.out_channels,
                                1,
                                1,
                                1,
                                if b.residual() { narrow } else { wide },
                            ),
                            residual: b.residual(),
                        }
                    })
                    .collect();
                let last = ConvLayer::seeded(
                    rng,
                    MOBILENET_V2_LAST_BLOCK,
                    MOBILENET_V2_FEATURES,
                    1,
                    1,
                    1,
                    wide,
                );
                BackboneWeights::MobilenetV2 { stem, blocks, last }
            }
        };
        let (l, c, last) = (
            spec.num_landmarks,
            spec.num_neighbors,
            spec.feature_channels(),
        );
        let heads = [l, l, l, l * c, l * c].map(|out| ConvLayer::seeded_head(rng, last, out));
        Ok(Self {
            spec,
            backbone,
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
            backbone: Backbone::Resnet18,
            widths: [8, 8, 16, 16],
            last_stage_stride: 1,
            num_landmarks: 5,
            num_neighbors: 2,
        };
        let a = PipNetWeights::seeded(spec.clone(), 7).unwrap();
        assert_eq!(a, PipNetWeights::seeded(spec.clone(), 7).unwrap());
        assert_ne!(a, PipNetWeights::seeded(spec.clone(), 8).unwrap());
        assert_eq!(spec.grid(), 4);
        let BackboneWeights::Resnet18 { stem, stages } = &a.backbone else {
            panic!("a ResNet spec gives ResNet weights");
        };
        assert_eq!(stem.weight.len(), 8 * 3 * 7 * 7);
        assert!(stages[0][0].downsample.is_none());
        assert!(stages[1][0].downsample.is_some());
        assert_eq!(a.heads[3].out_channels, 10);
    }

    #[test]
    fn test_mobilenet_v2_follows_torchvision_layout() {
        let blocks = mobilenet_v2_blocks(2);
        assert_eq!(blocks.len(), 17);
        // Total stride 32 at the default strides, 16 with the 160-channel stage at stride 1.
        let stride = |b: &[InvertedResidualSpec]| 2 * b.iter().map(|b| b.stride).product::<usize>();
        assert_eq!(stride(&blocks), 32);
        assert_eq!(stride(&mobilenet_v2_blocks(1)), 16);
        assert_eq!(blocks[13].out_channels, 160);
        assert_eq!(blocks[13].stride, 2);
        assert_eq!(mobilenet_v2_blocks(1)[13].stride, 1);
        assert_eq!(blocks[16].out_channels, 320);
        // Residual where torchvision has one: repeats of a stage, never its first block.
        let residual: Vec<usize> = (0..17).filter(|&i| blocks[i].residual()).collect();
        assert_eq!(residual, [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]);
        let mut spec = NetworkSpec::mobilenet_v2(68, 10);
        spec.input_size = 128;
        spec.last_stage_stride = 1;
        assert_eq!(spec.grid(), 8);
        let w = PipNetWeights::seeded(spec, 3).unwrap();
        let BackboneWeights::MobilenetV2 { blocks, .. } = &w.backbone else {
            panic!("a MobileNetV2 spec gives MobileNetV2 weights");
        };
        assert_eq!(blocks[1].depthwise.groups, 96);
        assert_eq!(blocks[1].depthwise.weight.len(), 96 * 9);
        assert_eq!(w.heads[0].in_channels, 1280);
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
            groups: 1,
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
