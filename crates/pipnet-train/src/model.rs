//! The trainable PIPNet in burn: a ResNet-18 layout (BasicBlocks 2-2-2-2) with BatchNorm, then
//! the contract's five 1x1 heads, and optionally the curriculum heads of self-training: the same
//! five maps on coarser grids (the features max-pooled by 2, 4, ...), used only in training.
//! [`PipNet::to_weights`] folds each BatchNorm into its convolution, giving the
//! [`PipNetWeights`] the ONNX emitter writes (the main head only).

use burn::module::{Initializer, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::network::{BasicBlock, ConvLayer, NetworkSpec, PipNetWeights};
use crate::{Error, Result};

/// Convolution (no bias) followed by BatchNorm.
#[derive(Module, Debug)]
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
    kernel: usize,
    stride: usize,
}

impl ConvBn {
    fn new(device: &Device, channels: [usize; 2], kernel: usize, stride: usize) -> Self {
        let pad = kernel / 2;
        Self {
            conv: Conv2dConfig::new(channels, [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(false)
                // He initialisation on fan-out, as torchvision's ResNet.
                .with_initializer(Initializer::KaimingNormal {
                    gain: std::f64::consts::SQRT_2,
                    fan_out_only: true,
                })
                .init(device),
            bn: BatchNormConfig::new(channels[1]).init(device),
            kernel,
            stride,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }

    /// The convolution with the BatchNorm's running statistics folded in.
    fn folded(&self) -> Result<ConvLayer> {
        let weight = values(self.conv.weight.val())?;
        let gamma = values(self.bn.gamma.val())?;
        let beta = values(self.bn.beta.val())?;
        let mean = values(self.bn.running_mean.value())?;
        let var = values(self.bn.running_var.value())?;
        let [out_channels, in_channels, _, _] = self.conv.weight.val().dims();
        let per_out = weight.len() / out_channels;
        let mut folded = ConvLayer {
            out_channels,
            in_channels,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.kernel / 2,
            weight,
            bias: vec![0.0; out_channels],
        };
        for o in 0..out_channels {
            let scale = gamma[o] / (var[o] + self.bn.epsilon as f32).sqrt();
            for w in &mut folded.weight[o * per_out..(o + 1) * per_out] {
                *w *= scale;
            }
            folded.bias[o] = beta[o] - mean[o] * scale;
        }
        Ok(folded)
    }
}

/// The values of a tensor as `f32`s, row-major.
fn values<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Spec(format!("reading a parameter: {e:?}")))
}

#[derive(Module, Debug)]
pub struct Block {
    conv1: ConvBn,
    conv2: ConvBn,
    downsample: Option<ConvBn>,
}

impl Block {
    fn new(device: &Device, in_ch: usize, out_ch: usize, stride: usize) -> Self {
        Self {
            conv1: ConvBn::new(device, [in_ch, out_ch], 3, stride),
            conv2: ConvBn::new(device, [out_ch, out_ch], 3, 1),
            downsample: (stride != 1 || in_ch != out_ch)
                .then(|| ConvBn::new(device, [in_ch, out_ch], 1, stride)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x.clone()),
            None => x.clone(),
        };
        let y = self.conv2.forward(relu(self.conv1.forward(x)));
        relu(y + shortcut)
    }
}

/// The five raw output maps, `[N, L, G, G]` and `[N, L*C, G, G]`.
#[derive(Debug, Clone)]
pub struct PipOutputs {
    pub cls: Tensor<4>,
    pub off_x: Tensor<4>,
    pub off_y: Tensor<4>,
    pub nb_x: Tensor<4>,
    pub nb_y: Tensor<4>,
}

#[derive(Module, Debug)]
pub struct PipNet {
    stem: ConvBn,
    pool: MaxPool2d,
    blocks: Vec<Block>,
    /// cls, off_x, off_y, nb_x, nb_y.
    heads: Vec<Conv2d>,
    /// Curriculum heads, coarsest last: level k sees the features max-pooled by `2^k`.
    coarse: Vec<Vec<Conv2d>>,
    halve: MaxPool2d,
}

/// The five 1x1 heads on `in_ch` features.
fn pip_heads(device: &Device, in_ch: usize, l: usize, c: usize) -> Vec<Conv2d> {
    [l, l, l, l * c, l * c]
        .into_iter()
        .map(|out| {
            // Small initial outputs, as the official PIPNet heads (normal, std 0.001).
            Conv2dConfig::new([in_ch, out], [1, 1])
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.001,
                })
                .init(device)
        })
        .collect()
}

fn run_heads(heads: &[Conv2d], x: &Tensor<4>) -> PipOutputs {
    let head = |i: usize| heads[i].forward(x.clone());
    PipOutputs {
        cls: head(0),
        off_x: head(1),
        off_y: head(2),
        nb_x: head(3),
        nb_y: head(4),
    }
}

impl PipNet {
    /// A freshly initialised network drawn from `seed`. burn's random generator is global to
    /// the process, so seeding and drawing happen under one lock: two runs started at once
    /// still get the initial weights their seeds promise.
    /// `coarse_levels` curriculum heads are added (0 for plain supervised training).
    pub fn seeded(
        spec: &NetworkSpec,
        coarse_levels: usize,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = INIT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        device.seed(seed);
        Self::new(spec, coarse_levels, device)
    }

    /// A freshly initialised network for `spec` (from burn's global generator; see
    /// [`Self::seeded`] for reproducible weights).
    pub fn new(spec: &NetworkSpec, coarse_levels: usize, device: &Device) -> Result<Self> {
        spec.validate()?;
        if !spec.grid().is_multiple_of(1 << coarse_levels) {
            return Err(Error::Spec(format!(
                "{coarse_levels} curriculum levels need a grid divisible by {}, not {}",
                1 << coarse_levels,
                spec.grid()
            )));
        }
        let mut blocks = Vec::with_capacity(8);
        for (in_ch, out_ch, stride) in spec.stages() {
            blocks.push(Block::new(device, in_ch, out_ch, stride));
            blocks.push(Block::new(device, out_ch, out_ch, 1));
        }
        let in_ch = spec.widths[3];
        let (l, c) = (spec.num_landmarks, spec.num_neighbors);
        let heads = pip_heads(device, in_ch, l, c);
        let coarse = (0..coarse_levels)
            .map(|_| pip_heads(device, in_ch, l, c))
            .collect();
        Ok(Self {
            stem: ConvBn::new(device, [3, spec.widths[0]], 7, 2),
            pool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            blocks,
            heads,
            coarse,
            halve: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
        })
    }

    fn features(&self, image: Tensor<4>) -> Tensor<4> {
        let mut x = self.pool.forward(relu(self.stem.forward(image)));
        for block in &self.blocks {
            x = block.forward(x);
        }
        x
    }

    /// The main head's maps: what the exported graph computes.
    pub fn forward(&self, image: Tensor<4>) -> PipOutputs {
        run_heads(&self.heads, &self.features(image))
    }

    /// The maps of every level: the main head (grid G) first, then the curriculum heads
    /// (grids G/2, G/4, ...).
    pub fn forward_levels(&self, image: Tensor<4>) -> Vec<PipOutputs> {
        let mut x = self.features(image);
        let mut levels = vec![run_heads(&self.heads, &x)];
        for heads in &self.coarse {
            x = self.halve.forward(x);
            levels.push(run_heads(heads, &x));
        }
        levels
    }

    /// Number of curriculum heads.
    pub fn coarse_levels(&self) -> usize {
        self.coarse.len()
    }

    /// Waits until pending work on the device is done (reads a small parameter back), so
    /// timings of asynchronous devices are honest.
    pub fn sync(&self) -> Result<()> {
        match &self.heads[0].bias {
            Some(b) => values(b.val()).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Inference weights (BatchNorm folded with its running statistics) for the emitter. Call
    /// it on `valid()`: that folds in the last pending running-statistic update.
    pub fn to_weights(&self, spec: &NetworkSpec) -> Result<PipNetWeights> {
        let stages = self
            .blocks
            .chunks_exact(2)
            .map(|pair| -> Result<[BasicBlock; 2]> {
                let fold = |b: &Block| -> Result<BasicBlock> {
                    Ok(BasicBlock {
                        conv1: b.conv1.folded()?,
                        conv2: b.conv2.folded()?,
                        downsample: b.downsample.as_ref().map(ConvBn::folded).transpose()?,
                    })
                };
                Ok([fold(&pair[0])?, fold(&pair[1])?])
            })
            .collect::<Result<Vec<_>>>()?;
        let head = |conv: &Conv2d| -> Result<ConvLayer> {
            let [out_channels, in_channels, _, _] = conv.weight.val().dims();
            let bias = match &conv.bias {
                Some(b) => values(b.val())?,
                None => vec![0.0; out_channels],
            };
            Ok(ConvLayer {
                out_channels,
                in_channels,
                kernel: 1,
                stride: 1,
                padding: 0,
                weight: values(conv.weight.val())?,
                bias,
            })
        };
        let heads = [0, 1, 2, 3, 4].map(|i| head(&self.heads[i]));
        let [a, b, c, d, e] = heads;
        Ok(PipNetWeights {
            spec: spec.clone(),
            stem: self.stem.folded()?,
            stages,
            heads: [a?, b?, c?, d?, e?],
        })
    }
}
