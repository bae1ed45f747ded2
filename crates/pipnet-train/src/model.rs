//! The trainable PIPNet in burn: a backbone with BatchNorm (a ResNet-18 layout or torchvision's
//! MobileNetV2, see [`crate::network`]), then the contract's five 1x1 heads, and optionally the
//! curriculum heads of self-training: the same five maps on coarser grids (the features
//! max-pooled by 2, 4, ...), used only in training. [`PipNet::to_weights`] folds each BatchNorm
//! into its convolution, giving the [`PipNetWeights`] the ONNX emitter writes (the main head
//! only).

use std::collections::BTreeMap;

use burn::module::{Initializer, Module, Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{relu, relu6};

use crate::imagenet::{StateTensor, torchvision_conv_bn_names};
use crate::network::{
    Backbone, BackboneWeights, BasicBlock, ConvLayer, InvertedResidual, MOBILENET_V2_FEATURES,
    MOBILENET_V2_LAST_BLOCK, MOBILENET_V2_STEM, NetworkSpec, PipNetWeights, mobilenet_v2_blocks,
};
use crate::{Error, Result};

/// Convolution (no bias) followed by BatchNorm.
#[derive(Module, Debug)]
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
    kernel: usize,
    stride: usize,
    groups: usize,
}

impl ConvBn {
    fn new(device: &Device, channels: [usize; 2], kernel: usize, stride: usize) -> Self {
        Self::with_groups(device, channels, kernel, stride, 1)
    }

    /// A depthwise convolution: one `kernel x kernel` filter per channel.
    fn depthwise(device: &Device, channels: usize, kernel: usize, stride: usize) -> Self {
        Self::with_groups(device, [channels, channels], kernel, stride, channels)
    }

    fn with_groups(
        device: &Device,
        channels: [usize; 2],
        kernel: usize,
        stride: usize,
        groups: usize,
    ) -> Self {
        let pad = kernel / 2;
        Self {
            conv: Conv2dConfig::new(channels, [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_groups(groups)
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
            groups,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }

    /// Replaces the weights with a PyTorch state dict's `{conv}.weight` and BatchNorm
    /// `{bn}.weight/bias/running_mean/running_var`; shapes must match exactly.
    fn load_torch(
        &mut self,
        dict: &BTreeMap<String, StateTensor>,
        conv: &str,
        bn: &str,
        device: &Device,
    ) -> Result<()> {
        let take = |name: String, shape: &[usize]| -> Result<TensorData> {
            let t = dict
                .get(&name)
                .ok_or_else(|| Error::Checkpoint(format!("the checkpoint lacks {name}")))?;
            if t.shape != shape || t.values.len() != shape.iter().product::<usize>() {
                return Err(Error::Checkpoint(format!(
                    "{name} has shape {:?} ({} float values), the network needs {shape:?}",
                    t.shape,
                    t.values.len()
                )));
            }
            Ok(TensorData::new(t.values.clone(), shape.to_vec()))
        };
        let weight_shape = self.conv.weight.val().dims();
        let c = [weight_shape[0]];
        self.conv.weight = Param::from_data(take(format!("{conv}.weight"), &weight_shape)?, device);
        self.bn.gamma = Param::from_data(take(format!("{bn}.weight"), &c)?, device);
        self.bn.beta = Param::from_data(take(format!("{bn}.bias"), &c)?, device);
        self.bn.running_mean = RunningState::new(Tensor::from_data(
            take(format!("{bn}.running_mean"), &c)?,
            device,
        ));
        self.bn.running_var = RunningState::new(Tensor::from_data(
            take(format!("{bn}.running_var"), &c)?,
            device,
        ));
        Ok(())
    }

    /// Takes a folded convolution's weights, with BatchNorm statistics measured on `x` (this
    /// layer's input), and returns the layer's output. `gamma` and `beta` undo the measured
    /// normalisation, so the layer computes `layer` at inference (running statistics) and, on
    /// batches like `x`, in training (batch statistics); folding it again gives `layer` back.
    fn adopt(&mut self, layer: &ConvLayer, x: Tensor<4>, device: &Device) -> Result<Tensor<4>> {
        let dims = self.conv.weight.val().dims();
        let wanted = [
            layer.out_channels,
            layer.in_channels / layer.groups.max(1),
            layer.kernel,
            layer.kernel,
        ];
        // The stride stays the network's own: a graph may start a network of another stride.
        if dims != wanted || layer.groups != self.groups {
            return Err(Error::Checkpoint(format!(
                "a graph convolution of shape {wanted:?} (groups {}) where the network has \
                 {dims:?} (groups {})",
                layer.groups, self.groups
            )));
        }
        let c = layer.out_channels;
        self.conv.weight = Param::from_data(TensorData::new(layer.weight.clone(), dims), device);
        let y = self.conv.forward(x).detach();
        let per_channel = y.clone().swap_dims(0, 1).flatten::<2>(1, 3);
        let mean = per_channel.clone().mean_dim(1);
        let var = (per_channel - mean.clone()).powi_scalar(2).mean_dim(1);
        let (mean, var) = (values(mean)?, values(var)?);
        let eps = self.bn.epsilon as f32;
        let gamma: Vec<f32> = var.iter().map(|v| (v + eps).sqrt()).collect();
        let beta: Vec<f32> = mean.iter().zip(&layer.bias).map(|(m, b)| m + b).collect();
        let vector = |v: Vec<f32>| TensorData::new(v, [c]);
        self.bn.gamma = Param::from_data(vector(gamma), device);
        self.bn.beta = Param::from_data(vector(beta), device);
        self.bn.running_mean = RunningState::new(Tensor::from_data(vector(mean), device));
        self.bn.running_var = RunningState::new(Tensor::from_data(vector(var), device));
        let bias = Tensor::<1>::from_data(vector(layer.bias.clone()), device);
        Ok(y + bias.reshape([1, c, 1, 1]))
    }

    /// The convolution with the BatchNorm's running statistics folded in.
    fn folded(&self) -> Result<ConvLayer> {
        let weight = values(self.conv.weight.val())?;
        let gamma = values(self.bn.gamma.val())?;
        let beta = values(self.bn.beta.val())?;
        let mean = values(self.bn.running_mean.value())?;
        let var = values(self.bn.running_var.value())?;
        let [out_channels, in_per_group, _, _] = self.conv.weight.val().dims();
        let per_out = weight.len() / out_channels;
        let mut folded = ConvLayer {
            out_channels,
            in_channels: in_per_group * self.groups,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.kernel / 2,
            groups: self.groups,
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
        .map_err(|e| Error::Backend(format!("reading a parameter: {e:?}")))
}

/// A ResNet BasicBlock.
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

    fn folded(&self) -> Result<BasicBlock> {
        Ok(BasicBlock {
            conv1: self.conv1.folded()?,
            conv2: self.conv2.folded()?,
            downsample: self.downsample.as_ref().map(ConvBn::folded).transpose()?,
        })
    }
}

/// ResNet-18 layout: 7x7 stem, max-pool, four stages of two BasicBlocks.
#[derive(Module, Debug)]
pub struct ResNet {
    stem: ConvBn,
    pool: MaxPool2d,
    blocks: Vec<Block>,
}

impl ResNet {
    fn new(spec: &NetworkSpec, device: &Device) -> Self {
        let mut blocks = Vec::with_capacity(8);
        for (in_ch, out_ch, stride) in spec.stages() {
            blocks.push(Block::new(device, in_ch, out_ch, stride));
            blocks.push(Block::new(device, out_ch, out_ch, 1));
        }
        Self {
            stem: ConvBn::new(device, [3, spec.widths[0]], 7, 2),
            pool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            blocks,
        }
    }

    fn forward(&self, image: Tensor<4>) -> Tensor<4> {
        let mut x = self.pool.forward(relu(self.stem.forward(image)));
        for block in &self.blocks {
            x = block.forward(x);
        }
        x
    }

    fn folded(&self) -> Result<BackboneWeights> {
        let stages = self
            .blocks
            .chunks_exact(2)
            .map(|pair| Ok([pair[0].folded()?, pair[1].folded()?]))
            .collect::<Result<Vec<_>>>()?;
        Ok(BackboneWeights::Resnet18 {
            stem: self.stem.folded()?,
            stages,
        })
    }
}

/// A MobileNetV2 inverted residual block.
#[derive(Module, Debug)]
pub struct InvertedBlock {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl InvertedBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = x.clone();
        if let Some(expand) = &self.expand {
            y = relu6(expand.forward(y));
        }
        let y = self.project.forward(relu6(self.depthwise.forward(y)));
        if self.residual { y + x } else { y }
    }
}

/// torchvision's MobileNetV2 features (`features.0` .. `features.18`).
#[derive(Module, Debug)]
pub struct MobileNetV2 {
    stem: ConvBn,
    blocks: Vec<InvertedBlock>,
    last: ConvBn,
}

impl MobileNetV2 {
    fn new(spec: &NetworkSpec, device: &Device) -> Self {
        let blocks = mobilenet_v2_blocks(spec.last_stage_stride)
            .into_iter()
            .map(|b| {
                let hidden = b.hidden_channels();
                InvertedBlock {
                    expand: (b.expand_ratio != 1)
                        .then(|| ConvBn::new(device, [b.in_channels, hidden], 1, 1)),
                    depthwise: ConvBn::depthwise(device, hidden, 3, b.stride),
                    project: ConvBn::new(device, [hidden, b.out_channels], 1, 1),
                    residual: b.residual(),
                }
            })
            .collect();
        Self {
            stem: ConvBn::new(device, [3, MOBILENET_V2_STEM], 3, 2),
            blocks,
            last: ConvBn::new(
                device,
                [MOBILENET_V2_LAST_BLOCK, MOBILENET_V2_FEATURES],
                1,
                1,
            ),
        }
    }

    fn forward(&self, image: Tensor<4>) -> Tensor<4> {
        let mut x = relu6(self.stem.forward(image));
        for block in &self.blocks {
            x = block.forward(x);
        }
        relu6(self.last.forward(x))
    }

    /// Takes the folded convolutions `convs` (network order) as weights, each layer's
    /// BatchNorm statistics measured on `image` passed through the layers before it
    /// ([`ConvBn::adopt`]); returns the features.
    fn adopt<'a>(
        &mut self,
        convs: &mut impl Iterator<Item = &'a ConvLayer>,
        image: Tensor<4>,
        device: &Device,
    ) -> Result<Tensor<4>> {
        let mut next = || {
            convs.next().ok_or_else(|| {
                Error::Checkpoint("the graph has fewer convolutions than the network".into())
            })
        };
        let mut x = relu6(self.stem.adopt(next()?, image, device)?);
        for block in &mut self.blocks {
            let mut y = x.clone();
            if let Some(expand) = &mut block.expand {
                y = relu6(expand.adopt(next()?, y, device)?);
            }
            y = relu6(block.depthwise.adopt(next()?, y, device)?);
            y = block.project.adopt(next()?, y, device)?;
            x = if block.residual { y + x } else { y };
        }
        Ok(relu6(self.last.adopt(next()?, x, device)?))
    }

    /// Every convolution, in the order of [`torchvision_conv_bn_names`].
    fn layers_mut(&mut self) -> Vec<&mut ConvBn> {
        let mut out = vec![&mut self.stem];
        for block in &mut self.blocks {
            out.extend(block.expand.as_mut());
            out.push(&mut block.depthwise);
            out.push(&mut block.project);
        }
        out.push(&mut self.last);
        out
    }

    /// Loads torchvision's `features.*` weights (an ImageNet checkpoint's state dict).
    fn load_torch(&mut self, dict: &BTreeMap<String, StateTensor>, device: &Device) -> Result<()> {
        for (layer, (conv, bn)) in self
            .layers_mut()
            .into_iter()
            .zip(torchvision_conv_bn_names())
        {
            layer.load_torch(dict, &conv, &bn, device)?;
        }
        Ok(())
    }

    fn folded(&self) -> Result<BackboneWeights> {
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                Ok(InvertedResidual {
                    expand: b.expand.as_ref().map(ConvBn::folded).transpose()?,
                    depthwise: b.depthwise.folded()?,
                    project: b.project.folded()?,
                    residual: b.residual,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BackboneWeights::MobilenetV2 {
            stem: self.stem.folded()?,
            blocks,
            last: self.last.folded()?,
        })
    }
}

/// The backbone in burn. One per network, so the variants' size difference costs nothing.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Features {
    Resnet18(ResNet),
    MobilenetV2(MobileNetV2),
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
    features: Features,
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
            return Err(Error::Config(format!(
                "{coarse_levels} curriculum levels need a grid divisible by {}, not {}",
                1 << coarse_levels,
                spec.grid()
            )));
        }
        let features = match spec.backbone {
            Backbone::Resnet18 => Features::Resnet18(ResNet::new(spec, device)),
            Backbone::MobilenetV2 => Features::MobilenetV2(MobileNetV2::new(spec, device)),
        };
        let in_ch = spec.feature_channels();
        let (l, c) = (spec.num_landmarks, spec.num_neighbors);
        let heads = pip_heads(device, in_ch, l, c);
        let coarse = (0..coarse_levels)
            .map(|_| pip_heads(device, in_ch, l, c))
            .collect();
        Ok(Self {
            features,
            heads,
            coarse,
            halve: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
        })
    }

    /// The backbone's output: the features the heads read.
    pub fn features(&self, image: Tensor<4>) -> Tensor<4> {
        match &self.features {
            Features::Resnet18(net) => net.forward(image),
            Features::MobilenetV2(net) => net.forward(image),
        }
    }

    /// Replaces the backbone's weights with torchvision's ImageNet MobileNetV2 state dict
    /// (`features.*`; the classifier is not used). Only for a MobileNetV2 backbone.
    pub fn load_imagenet(
        &mut self,
        dict: &BTreeMap<String, StateTensor>,
        device: &Device,
    ) -> Result<()> {
        match &mut self.features {
            Features::MobilenetV2(net) => net.load_torch(dict, device),
            Features::Resnet18(_) => Err(Error::Config(
                "ImageNet weights exist for the MobileNetV2 backbone only (no ResNet-18 \
                 weights ship in a registry package)"
                    .into(),
            )),
        }
    }

    /// Takes a trained graph's folded convolutions (backbone in network order, then the five
    /// heads: [`crate::graph_init::read_graph_weights`]) as this network's weights, measuring
    /// the BatchNorm statistics on `image` (true-box crops at this network's input size).
    /// Curriculum heads keep their seeded weights. Only for a MobileNetV2 backbone.
    pub fn adopt_graph(
        &mut self,
        convs: &[ConvLayer],
        image: Tensor<4>,
        device: &Device,
    ) -> Result<()> {
        let Features::MobilenetV2(net) = &mut self.features else {
            return Err(Error::Config(
                "starting from a graph is implemented for the MobileNetV2 backbone only".into(),
            ));
        };
        let mut layers = convs.iter();
        net.adopt(&mut layers, image, device)?;
        let heads: Vec<&ConvLayer> = layers.collect();
        if heads.len() != self.heads.len() {
            return Err(Error::Checkpoint(format!(
                "the graph has {} convolutions after the backbone, the network {} heads",
                heads.len(),
                self.heads.len()
            )));
        }
        for (conv, layer) in self.heads.iter_mut().zip(heads) {
            let dims = conv.weight.val().dims();
            if dims != [layer.out_channels, layer.in_channels, 1, 1] {
                return Err(Error::Checkpoint(format!(
                    "a graph head of {} x {} channels where the network has {dims:?}",
                    layer.out_channels, layer.in_channels
                )));
            }
            conv.weight = Param::from_data(TensorData::new(layer.weight.clone(), dims), device);
            conv.bias = Some(Param::from_data(
                TensorData::new(layer.bias.clone(), [layer.out_channels]),
                device,
            ));
        }
        Ok(())
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
        let backbone = match &self.features {
            Features::Resnet18(net) => net.folded()?,
            Features::MobilenetV2(net) => net.folded()?,
        };
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
                groups: 1,
                weight: values(conv.weight.val())?,
                bias,
            })
        };
        let heads = [0, 1, 2, 3, 4].map(|i| head(&self.heads[i]));
        let [a, b, c, d, e] = heads;
        Ok(PipNetWeights {
            spec: spec.clone(),
            backbone,
            heads: [a?, b?, c?, d?, e?],
        })
    }
}
