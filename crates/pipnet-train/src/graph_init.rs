//! A run that starts from a contract graph (`train.init = "model.onnx"`) instead of a burn
//! checkpoint: the convolutions of a trained PIPNet graph become the network's weights, so a
//! model trained elsewhere (the GPU-trained default, whose checkpoint stayed on the lent
//! machine) can be fine-tuned here, also at another input size or stride: the layers' shapes
//! do not depend on either. The graph's BatchNorms are folded into its convolutions;
//! [`crate::model::PipNet::adopt_graph`] measures fresh statistics on real crops so that the
//! network computes what the graph does, in training as at inference.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use pipnet_core::CropRule;
use pipnet_core::contract::{IMAGENET_MEAN, IMAGENET_STD, ModelMetadata};
use pipnet_infer::runtime::sha256_hex;
use prost::Message;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::augment::{SampleSpec, make_sample};
use crate::data::Face;
use crate::distill::misfit;
use crate::network::{ConvLayer, NetworkSpec};
use crate::onnx::{ModelProto, TensorProto, tensor_proto::DataType};
use crate::{Error, Result};

/// Faces whose true-box crops set the BatchNorm statistics of a network started from a graph.
pub(crate) const CALIBRATION_FACES: usize = 64;

/// A graph's convolutions in network order (backbone, then the five heads), its metadata, and
/// its file and that file's SHA-256 (the run's provenance).
#[derive(Debug)]
pub struct GraphWeights {
    pub convs: Vec<ConvLayer>,
    pub metadata: ModelMetadata,
    pub path: PathBuf,
    pub sha256: String,
}

/// Reads the convolutions and metadata of a contract graph with raw outputs, as `pipnet
/// train` emits it (`Conv` nodes with their weights and biases as initializers).
pub fn read_graph_weights(path: &Path) -> Result<GraphWeights> {
    let fail = |why: String| {
        Error::Checkpoint(format!(
            "train.init {}: {why}; name a PIPNet graph written by `pipnet train` or a run's \
             checkpoint folder",
            path.display()
        ))
    };
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let model = ModelProto::decode(bytes.as_slice())
        .map_err(|e| fail(format!("not an ONNX model ({e})")))?;
    let props: HashMap<&str, &str> = model
        .metadata_props
        .iter()
        .filter_map(|p| Some((p.key.as_deref()?, p.value.as_deref()?)))
        .collect();
    let metadata = ModelMetadata::from_lookup(|key| props.get(key).map(|v| v.to_string()))
        .map_err(|e| fail(e.to_string()))?;
    let graph = model.graph.unwrap_or_default();
    let initializers: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .filter_map(|t| Some((t.name.as_deref()?, t)))
        .collect();
    let mut convs = Vec::new();
    for node in graph.node.iter().filter(|n| n.op_type() == "Conv") {
        let tensor = |k: usize| -> Result<(&[i64], Vec<f32>)> {
            let name = node.input.get(k).map(String::as_str).unwrap_or_default();
            let t = initializers.get(name).ok_or_else(|| {
                fail(format!(
                    "convolution {} has no float constant as input {k} (a quantized graph \
                     cannot start a run)",
                    node.name()
                ))
            })?;
            Ok((
                &t.dims,
                float_values(t).map_err(|why| fail(format!("{name}: {why}")))?,
            ))
        };
        let (dims, weight) = tensor(1)?;
        let (_, bias) = tensor(2)?;
        let attribute = |name: &str| node.attribute.iter().find(|a| a.name() == name);
        let groups = attribute("group").and_then(|a| a.i).unwrap_or(1) as usize;
        let first = |name: &str| attribute(name).and_then(|a| a.ints.first().copied());
        let stride = first("strides").unwrap_or(1) as usize;
        let padding = first("pads").unwrap_or(0) as usize;
        let shape: Vec<usize> = dims.iter().map(|&d| d.max(0) as usize).collect();
        let &[out_channels, in_per_group, kernel, kernel_width] = shape.as_slice() else {
            return Err(fail(format!(
                "convolution {} has weights of shape {dims:?}",
                node.name()
            )));
        };
        if kernel != kernel_width || weight.len() != shape.iter().product::<usize>() {
            return Err(fail(format!(
                "convolution {} has {} weights for a square kernel of shape {dims:?}",
                node.name(),
                weight.len()
            )));
        }
        if bias.len() != out_channels {
            return Err(fail(format!(
                "convolution {} has {} biases for {out_channels} channels",
                node.name(),
                bias.len()
            )));
        }
        convs.push(ConvLayer {
            out_channels,
            in_channels: in_per_group * groups,
            kernel,
            stride,
            padding,
            groups,
            weight,
            bias,
        });
    }
    Ok(GraphWeights {
        convs,
        metadata,
        path: path.to_path_buf(),
        sha256: sha256_hex(&bytes),
    })
}

/// A float32 initializer's values, stored raw (little-endian) or as `float_data`.
fn float_values(t: &TensorProto) -> std::result::Result<Vec<f32>, String> {
    if t.data_type() != DataType::Float as i32 {
        return Err(format!(
            "data type {} (float32 expected: an INT8 graph cannot start a run)",
            t.data_type()
        ));
    }
    Ok(match &t.raw_data {
        Some(raw) => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        None => t.float_data.clone(),
    })
}

impl GraphWeights {
    /// Refuses a graph whose outputs or input normalisation differ from those of the network
    /// `spec` describes; its input size and stride may differ.
    pub(crate) fn check_fits(
        &self,
        spec: &NetworkSpec,
        scheme: &str,
        rule: &CropRule,
    ) -> Result<()> {
        let meta = &self.metadata;
        let problem = misfit(meta, spec, scheme, rule, false).or_else(|| {
            ((meta.mean, meta.std) != (IMAGENET_MEAN, IMAGENET_STD))
                .then(|| "its input is normalised otherwise than training's (ImageNet)".into())
        });
        problem.map_or(Ok(()), |why| {
            Err(Error::Checkpoint(format!(
                "train.init {} cannot start this run: {why}",
                self.path.display()
            )))
        })
    }
}

/// The true-box crops of the first [`CALIBRATION_FACES`] training faces, `[B, 3, S, S]`.
pub(crate) fn calibration_input(
    faces: &[Face],
    spec: &SampleSpec<'_>,
    device: &Device,
) -> Tensor<4> {
    let s = spec.input_size;
    let faces = &faces[..faces.len().min(CALIBRATION_FACES)];
    let mut input = vec![0.0; faces.len() * 3 * s * s];
    // Without augmentation the random generator is not drawn from.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for (face, out) in faces.iter().zip(input.chunks_exact_mut(3 * s * s)) {
        make_sample(&face.image, &face.points, spec, None, &mut rng, out);
    }
    Tensor::from_data(TensorData::new(input, [faces.len(), 3, s, s]), device)
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;
    use pipnet_core::Scheme;

    use super::*;
    use crate::model::PipNet;
    use crate::network::{BackboneWeights, PipNetWeights};
    use crate::seeded::synthetic_metadata;
    use crate::write_model;

    fn mobilenet(input_size: usize) -> NetworkSpec {
        NetworkSpec {
            input_size,
            ..NetworkSpec::mobilenet_v2(68, 10)
        }
    }

    /// Every convolution of `weights`, backbone in network order, then the heads.
    fn layers(weights: &PipNetWeights) -> Vec<&ConvLayer> {
        let BackboneWeights::MobilenetV2 { stem, blocks, last } = &weights.backbone else {
            panic!("a MobileNetV2 was made");
        };
        let mut out = vec![stem];
        for b in blocks {
            out.extend(b.expand.as_ref());
            out.extend([&b.depthwise, &b.project]);
        }
        out.push(last);
        out.extend(&weights.heads);
        out
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}: {x} vs {y}"
            );
        }
    }

    #[test]
    fn test_a_network_started_from_a_graph_computes_the_graph() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trained.onnx");
        // Seeded weights fold random BatchNorms in: every layer has its own bias.
        let graph_spec = mobilenet(64);
        let trained = PipNetWeights::seeded(graph_spec.clone(), 7).unwrap();
        let meta = synthetic_metadata(&graph_spec, Scheme::W300_68).unwrap();
        write_model(&trained, &meta, &path).unwrap();

        let read = read_graph_weights(&path).unwrap();
        let original = layers(&trained);
        assert_eq!(read.convs.len(), original.len());
        for (got, want) in read.convs.iter().zip(&original) {
            assert_eq!(got, *want);
        }
        assert_eq!(read.metadata.meanface, meta.meanface);

        // Started at another input size: the same layers, statistics from other crops.
        let spec = mobilenet(96);
        let device = Device::flex().autodiff();
        let mut net = PipNet::seeded(&spec, 0, &device, 1).unwrap();
        let image = Tensor::<4>::random([4, 3, 96, 96], Distribution::Normal(0.0, 1.0), &device);
        net.adopt_graph(&read.convs, image.clone(), &device)
            .unwrap();
        // Folded again, the network is the graph.
        let folded = net.valid().to_weights(&spec).unwrap();
        for (k, (got, want)) in layers(&folded).into_iter().zip(&original).enumerate() {
            assert_close(&got.weight, &want.weight, &format!("layer {k} weights"));
            assert_close(&got.bias, &want.bias, &format!("layer {k} bias"));
        }
        // In training, on the calibration batch, it computes what it computes at inference.
        let training = net.forward(image.clone()).cls;
        let inference = net.valid().forward(image.inner()).cls;
        let training: Vec<f32> = training.inner().into_data().try_to_vec::<f32>().unwrap();
        let inference: Vec<f32> = inference.into_data().try_to_vec::<f32>().unwrap();
        assert_close(&training, &inference, "score maps, training vs inference");

        // The layers' shapes do not depend on the stride either.
        let stride16 = NetworkSpec {
            last_stage_stride: 1,
            ..spec
        };
        let mut net = PipNet::seeded(&stride16, 0, &device, 1).unwrap();
        let image = Tensor::<4>::random([2, 3, 96, 96], Distribution::Normal(0.0, 1.0), &device);
        net.adopt_graph(&read.convs, image.clone(), &device)
            .unwrap();
        assert_eq!(net.forward(image).cls.dims(), [2, 68, 6, 6]);
    }

    #[test]
    fn test_what_is_not_a_float_pipnet_graph_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.onnx");
        std::fs::write(&path, b"not a graph").unwrap();
        let err = read_graph_weights(&path).unwrap_err().to_string();
        assert!(
            err.contains("notes.onnx") && err.contains("not an ONNX model"),
            "{err}"
        );

        let spec = mobilenet(64);
        let mut meta = synthetic_metadata(&spec, Scheme::W300_68).unwrap();
        meta.mean = [0.5; 3];
        let graph = dir.path().join("other-normalisation.onnx");
        write_model(
            &PipNetWeights::seeded(spec.clone(), 1).unwrap(),
            &meta,
            &graph,
        )
        .unwrap();
        let read = read_graph_weights(&graph).unwrap();
        let err = read
            .check_fits(&spec, "300w-68", &CropRule::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("normalised"), "{err}");

        // Weights that do not fill their declared shape are refused when read, not later.
        let mut model = ModelProto::decode(std::fs::read(&graph).unwrap().as_slice()).unwrap();
        let initializers = &mut model.graph.as_mut().unwrap().initializer;
        let weight = initializers
            .iter_mut()
            .find(|t| t.name().ends_with(".weight"))
            .unwrap();
        weight.raw_data.as_mut().unwrap().truncate(8);
        let truncated = dir.path().join("truncated.onnx");
        std::fs::write(&truncated, model.encode_to_vec()).unwrap();
        let err = read_graph_weights(&truncated).unwrap_err().to_string();
        assert!(err.contains("2 weights for a square kernel"), "{err}");
    }
}
