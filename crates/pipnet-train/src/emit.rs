//! Writes [`PipNetWeights`] as an ONNX graph that follows the pipnet contract: input `image`
//! `[N, 3, S, S]`, outputs `cls`, `off_x`, `off_y`, `nb_x`, `nb_y`, and every `pipnet.*`
//! metadata key. Only standard ops (Conv, Relu, Clip for ReLU6, MaxPool, Add) at opset 17.

use std::path::Path;

use pipnet_core::contract::{ModelMetadata, OutputForm, check_io};
use prost::Message;

use crate::network::{BackboneWeights, BasicBlock, ConvLayer, InvertedResidual, PipNetWeights};
use crate::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto,
    tensor_proto::DataType, tensor_shape_proto::Dimension, tensor_shape_proto::dimension,
    type_proto,
};
use crate::{Error, Result};

/// ONNX IR version 8 and opset 17: read by every ONNX Runtime since 1.14.
const IR_VERSION: i64 = 8;
const OPSET: i64 = 17;

/// Accumulates nodes and initializers with unique names.
#[derive(Default)]
struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

fn ints_attr(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(attribute_proto::AttributeType::Ints as i32),
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// A float32 value description; `None` dimensions become the symbolic batch `N`.
fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v),
                None => dimension::Value::DimParam("N".to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl GraphBuilder {
    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            name: Some(format!("{output}_{op}")),
            op_type: Some(op.to_string()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Conv with bias; returns the output name.
    fn conv(&mut self, name: &str, input: &str, layer: &ConvLayer) -> String {
        let k = layer.kernel as i64;
        let (w, b) = (format!("{name}.weight"), format!("{name}.bias"));
        self.initializers.push(float_tensor(
            &w,
            &[
                layer.out_channels as i64,
                (layer.in_channels / layer.groups) as i64,
                k,
                k,
            ],
            &layer.weight,
        ));
        self.initializers
            .push(float_tensor(&b, &[layer.out_channels as i64], &layer.bias));
        let p = layer.padding as i64;
        let s = layer.stride as i64;
        let mut attrs = vec![
            ints_attr("kernel_shape", &[k, k]),
            ints_attr("strides", &[s, s]),
            ints_attr("pads", &[p, p, p, p]),
        ];
        if layer.groups != 1 {
            attrs.push(AttributeProto {
                name: Some("group".to_string()),
                r#type: Some(attribute_proto::AttributeType::Int as i32),
                i: Some(layer.groups as i64),
                ..Default::default()
            });
        }
        self.node("Conv", &[input, &w, &b], name, attrs);
        name.to_string()
    }

    /// ReLU6 as `Clip(x, 0, 6)`; the two bounds are shared scalar initializers.
    fn relu6(&mut self, input: &str) -> String {
        const BOUNDS: [&str; 2] = ["relu6.min", "relu6.max"];
        if !self
            .initializers
            .iter()
            .any(|t| t.name.as_deref() == Some(BOUNDS[0]))
        {
            self.initializers.push(float_tensor(BOUNDS[0], &[], &[0.0]));
            self.initializers.push(float_tensor(BOUNDS[1], &[], &[6.0]));
        }
        let out = format!("{input}.relu6");
        self.node("Clip", &[input, BOUNDS[0], BOUNDS[1]], &out, vec![]);
        out
    }

    fn inverted_residual(&mut self, name: &str, input: &str, block: &InvertedResidual) -> String {
        let mut x = input.to_string();
        if let Some(expand) = &block.expand {
            let e = self.conv(&format!("{name}.expand"), &x, expand);
            x = self.relu6(&e);
        }
        let d = self.conv(&format!("{name}.depthwise"), &x, &block.depthwise);
        let d = self.relu6(&d);
        let p = self.conv(&format!("{name}.project"), &d, &block.project);
        if !block.residual {
            return p;
        }
        let sum = format!("{name}.add");
        self.node("Add", &[&p, input], &sum, vec![]);
        sum
    }

    fn relu(&mut self, input: &str) -> String {
        let out = format!("{input}.relu");
        self.node("Relu", &[input], &out, vec![]);
        out
    }

    fn block(&mut self, name: &str, input: &str, block: &BasicBlock) -> String {
        let a = self.conv(&format!("{name}.conv1"), input, &block.conv1);
        let a = self.relu(&a);
        let a = self.conv(&format!("{name}.conv2"), &a, &block.conv2);
        let shortcut = match &block.downsample {
            Some(layer) => self.conv(&format!("{name}.downsample"), input, layer),
            None => input.to_string(),
        };
        let sum = format!("{name}.add");
        self.node("Add", &[&a, &shortcut], &sum, vec![]);
        self.relu(&sum)
    }
}

/// Builds the ONNX model for `weights` with `meta` as its contract metadata. Refuses metadata
/// that does not describe this network (landmarks, neighbours, input size, stride).
pub fn emit_model(weights: &PipNetWeights, meta: &ModelMetadata) -> Result<ModelProto> {
    let spec = &weights.spec;
    let mismatch = |what: &str, net: usize, md: usize| {
        Error::Config(format!("{what}: network has {net}, metadata says {md}"))
    };
    for (what, net, md) in [
        ("landmarks", spec.num_landmarks, meta.num_landmarks()),
        ("neighbours", spec.num_neighbors, meta.num_neighbors()),
        ("input size", spec.input_size, meta.input_size),
        ("stride", spec.stride(), meta.stride),
    ] {
        if net != md {
            return Err(mismatch(what, net, md));
        }
    }
    if meta.outputs != OutputForm::Raw {
        return Err(Error::Config("the emitter writes raw outputs only".into()));
    }

    let mut g = GraphBuilder::default();
    let x = match &weights.backbone {
        BackboneWeights::Resnet18 { stem, stages } => {
            let x = g.conv("stem", "image", stem);
            let x = g.relu(&x);
            g.node(
                "MaxPool",
                &[&x],
                "stem.pool",
                vec![
                    ints_attr("kernel_shape", &[3, 3]),
                    ints_attr("strides", &[2, 2]),
                    ints_attr("pads", &[1, 1, 1, 1]),
                ],
            );
            let mut x = "stem.pool".to_string();
            for (s, stage) in stages.iter().enumerate() {
                for (b, block) in stage.iter().enumerate() {
                    x = g.block(&format!("layer{}.{b}", s + 1), &x, block);
                }
            }
            x
        }
        BackboneWeights::MobilenetV2 { stem, blocks, last } => {
            let x = g.conv("features.0", "image", stem);
            let mut x = g.relu6(&x);
            for (i, block) in blocks.iter().enumerate() {
                x = g.inverted_residual(&format!("features.{}", i + 1), &x, block);
            }
            let x = g.conv("features.18", &x, last);
            g.relu6(&x)
        }
    };
    let (input_spec, output_specs) = meta.expected_io();
    for (head, out) in weights.heads.iter().zip(&output_specs) {
        g.conv(&out.name, &x, head);
    }

    let graph = GraphProto {
        name: Some("pipnet".to_string()),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![value_info(&input_spec.name, &input_spec.shape)],
        output: output_specs
            .iter()
            .map(|o| value_info(&o.name, &o.shape))
            .collect(),
        ..Default::default()
    };
    // The emitter's own output must pass the runtime's contract check.
    check_io(meta, std::slice::from_ref(&input_spec), &output_specs)?;
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("pipnet-train".to_string()),
        producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        graph: Some(graph),
        metadata_props: meta
            .to_pairs()
            .into_iter()
            .map(|(key, value)| StringStringEntryProto {
                key: Some(key),
                value: Some(value),
            })
            .collect(),
        ..Default::default()
    })
}

/// Emits the model and writes it to `path` atomically (temporary file in the same folder, then
/// rename), so a crash never leaves a truncated graph behind.
pub fn write_model(weights: &PipNetWeights, meta: &ModelMetadata, path: &Path) -> Result<()> {
    let bytes = emit_model(weights, meta)?.encode_to_vec();
    Ok(pipnet_infer::files::write_atomic(path, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkSpec;
    use crate::seeded::{synthetic_metadata, tiny_spec};
    use pipnet_core::Scheme;

    fn tiny() -> (PipNetWeights, ModelMetadata) {
        let spec = tiny_spec();
        let meta = synthetic_metadata(&spec, Scheme::W300_68).unwrap();
        (PipNetWeights::seeded(spec, 1).unwrap(), meta)
    }

    #[test]
    fn test_emitted_graph_has_contract_io_and_metadata() {
        let (weights, meta) = tiny();
        let model = emit_model(&weights, &meta).unwrap();
        let graph = model.graph.as_ref().unwrap();
        let outputs: Vec<_> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
        assert_eq!(outputs, ["cls", "off_x", "off_y", "nb_x", "nb_y"]);
        assert_eq!(graph.input[0].name.as_deref(), Some("image"));
        // 1 stem + 16 block convs + 3 downsamples (stages 2-4 change width or stride; stage 1
        // keeps both) + 5 heads.
        let convs = graph
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("Conv"))
            .count();
        assert_eq!(convs, 25);
        let keys: Vec<_> = model
            .metadata_props
            .iter()
            .filter_map(|p| p.key.clone())
            .collect();
        assert!(keys.contains(&"pipnet.neighbors".to_string()));
        let lookup = |k: &str| {
            model
                .metadata_props
                .iter()
                .find(|p| p.key.as_deref() == Some(k))
                .and_then(|p| p.value.clone())
        };
        assert_eq!(ModelMetadata::from_lookup(lookup).unwrap(), meta);
        assert!(
            !graph
                .node
                .iter()
                .any(|n| n.op_type.as_deref() == Some("Clip"))
        );
        // Protobuf round trip.
        let bytes = model.encode_to_vec();
        assert_eq!(ModelProto::decode(bytes.as_slice()).unwrap(), model);
    }

    #[test]
    fn test_mobilenet_v2_graph_has_depthwise_convs_and_relu6() {
        let mut spec = NetworkSpec::mobilenet_v2(68, 10);
        spec.input_size = 128;
        spec.last_stage_stride = 1;
        let meta = synthetic_metadata(&spec, Scheme::W300_68).unwrap();
        let model = emit_model(&PipNetWeights::seeded(spec, 1).unwrap(), &meta).unwrap();
        let graph = model.graph.as_ref().unwrap();
        let count = |op: &str| {
            graph
                .node
                .iter()
                .filter(|n| n.op_type.as_deref() == Some(op))
                .count()
        };
        // Stem + 16 expansions + 17 depthwise + 17 projections + last + 5 heads.
        assert_eq!(count("Conv"), 57);
        // ReLU6 after the stem, each expansion and depthwise conv, and the last conv.
        assert_eq!(count("Clip"), 1 + 16 + 17 + 1);
        assert_eq!(count("Add"), 10);
        let grouped = graph
            .node
            .iter()
            .filter(|n| {
                n.attribute
                    .iter()
                    .any(|a| a.name.as_deref() == Some("group"))
            })
            .count();
        assert_eq!(grouped, 17);
    }

    #[test]
    fn test_metadata_that_does_not_fit_the_network_is_refused() {
        let (weights, mut meta) = tiny();
        meta.stride = 32;
        let err = emit_model(&weights, &meta).unwrap_err().to_string();
        assert!(
            err.contains("stride: network has 16, metadata says 32"),
            "{err}"
        );
    }

    #[test]
    fn test_write_model_is_atomic_and_complete() {
        let (weights, meta) = tiny();
        let dir = std::env::temp_dir().join(format!("pipnet-emit-{}", std::process::id()));
        let path = dir.join("m.onnx");
        write_model(&weights, &meta, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(ModelProto::decode(bytes.as_slice()).is_ok());
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
