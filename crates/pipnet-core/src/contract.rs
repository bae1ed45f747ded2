//! The model contract (docs/model-contract.md, format 1): the metadata every PIPNet graph carries and
//! the input/output tensors it must have. Producers write [`ModelMetadata::to_pairs`]; the
//! runtime parses with [`ModelMetadata::from_lookup`] and checks tensors with [`check_io`].
//! Every error names the key or tensor and the rule it breaks.

use crate::crop::CropRule;
use crate::meanface::NeighborIndex;
use crate::scheme::Scheme;
use crate::{Error, Point, Result};

/// The contract version this crate reads and writes.
pub const FORMAT: u32 = 1;

/// Whether a graph ends in the five raw maps or in decoded landmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputForm {
    /// `cls`, `off_x`, `off_y`, `nb_x`, `nb_y`; decoded by pipnet-core.
    Raw,
    /// `landmarks` [N, L, 2] and `scores` [N, L], already decoded and merged in the graph.
    Decoded,
}

impl OutputForm {
    fn name(self) -> &'static str {
        match self {
            OutputForm::Raw => "raw",
            OutputForm::Decoded => "decoded",
        }
    }
}

/// The `pipnet.*` metadata of a graph, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    pub scheme: Scheme,
    pub input_size: usize,
    pub stride: usize,
    /// ImageNet-style per-channel normalisation: `(v / 255 - mean[c]) / std[c]`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Mean face in crop-normalised units, L points.
    pub meanface: Vec<Point>,
    pub neighbors: NeighborIndex,
    pub crop: CropRule,
    pub outputs: OutputForm,
    /// Optional provenance, copied through as written.
    pub backbone: Option<String>,
    pub train_data: Option<String>,
    pub metrics: Option<String>,
    /// Numeric precision of the weights and activations when not float32 (`int8` for the
    /// quantized twins python-export writes); provenance, the runtime runs either the same way.
    pub precision: Option<String>,
}

/// ImageNet channel means, the default normalisation.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

fn meta_err(key: &'static str, detail: impl Into<String>) -> Error {
    Error::Contract {
        rule: key,
        detail: detail.into(),
    }
}

fn parse_list<T: std::str::FromStr>(key: &'static str, text: &str) -> Result<Vec<T>> {
    text.split(',')
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|_| meta_err(key, format!("{:?} is not a valid number", v.trim())))
        })
        .collect()
}

fn join<T: ToString>(values: impl IntoIterator<Item = T>) -> String {
    values
        .into_iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl ModelMetadata {
    pub fn num_landmarks(&self) -> usize {
        self.scheme.num_landmarks()
    }

    pub fn num_neighbors(&self) -> usize {
        self.neighbors.num_neighbors()
    }

    /// G: cells per side of the score map.
    pub fn grid(&self) -> usize {
        self.input_size / self.stride
    }

    /// The metadata as `metadata_props` key/value pairs, required keys first.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut pairs = vec![
            ("pipnet.format", FORMAT.to_string()),
            ("pipnet.num_landmarks", self.num_landmarks().to_string()),
            ("pipnet.num_neighbors", self.num_neighbors().to_string()),
            ("pipnet.input_size", self.input_size.to_string()),
            ("pipnet.stride", self.stride.to_string()),
            ("pipnet.mean", join(self.mean)),
            ("pipnet.std", join(self.std)),
            ("pipnet.meanface", join(self.meanface.iter().flatten())),
            ("pipnet.neighbors", join(self.neighbors.rows())),
            ("pipnet.scheme", self.scheme.name().to_string()),
            ("pipnet.crop", self.crop.to_metadata()),
            ("pipnet.outputs", self.outputs.name().to_string()),
        ];
        for (key, value) in [
            ("pipnet.backbone", &self.backbone),
            ("pipnet.train_data", &self.train_data),
            ("pipnet.metrics", &self.metrics),
            ("pipnet.precision", &self.precision),
        ] {
            if let Some(v) = value {
                pairs.push((key, v.clone()));
            }
        }
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Parses and checks the metadata; `get` returns the value of a `metadata_props` key.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let required = |key: &'static str| {
            get(key).ok_or_else(|| {
                meta_err(
                    key,
                    "missing: not a PIPNet graph, or written without metadata",
                )
            })
        };
        let number = |key: &'static str| -> Result<usize> {
            let text = required(key)?;
            text.trim()
                .parse::<usize>()
                .map_err(|_| meta_err(key, format!("{text:?} is not a non-negative integer")))
        };
        let format = number("pipnet.format")?;
        if format != FORMAT as usize {
            return Err(meta_err(
                "pipnet.format",
                format!("format {format}, this runtime reads format {FORMAT}"),
            ));
        }
        let scheme = Scheme::from_name(&required("pipnet.scheme")?)
            .map_err(|e| meta_err("pipnet.scheme", e.to_string()))?;
        let l = number("pipnet.num_landmarks")?;
        if l != scheme.num_landmarks() {
            return Err(meta_err(
                "pipnet.num_landmarks",
                format!("{l}, but scheme {scheme} has {}", scheme.num_landmarks()),
            ));
        }
        let c = number("pipnet.num_neighbors")?;
        if c == 0 || c >= l {
            return Err(meta_err(
                "pipnet.num_neighbors",
                format!("{c}: expected 1 to {} (another landmark each)", l - 1),
            ));
        }
        let input_size = number("pipnet.input_size")?;
        let stride = number("pipnet.stride")?;
        if stride == 0 {
            return Err(meta_err("pipnet.stride", "must be positive"));
        }
        if input_size == 0 || !input_size.is_multiple_of(stride) {
            return Err(meta_err(
                "pipnet.input_size",
                format!("{input_size} is not a positive multiple of stride {stride}"),
            ));
        }
        let channel_triple = |key: &'static str| -> Result<[f32; 3]> {
            let values: Vec<f32> = parse_list(key, &required(key)?)?;
            match values[..] {
                [a, b, c] if values.iter().all(|v| v.is_finite()) => Ok([a, b, c]),
                _ => Err(meta_err(
                    key,
                    format!("{} values, expected 3 finite", values.len()),
                )),
            }
        };
        let mean = channel_triple("pipnet.mean")?;
        let std = channel_triple("pipnet.std")?;
        if std.iter().any(|&s| s <= 0.0) {
            return Err(meta_err("pipnet.std", "every value must be positive"));
        }
        let flat: Vec<f32> = parse_list("pipnet.meanface", &required("pipnet.meanface")?)?;
        if flat.len() != 2 * l || flat.iter().any(|v| !v.is_finite()) {
            return Err(meta_err(
                "pipnet.meanface",
                format!("{} values, expected {} finite", flat.len(), 2 * l),
            ));
        }
        let meanface = flat.chunks_exact(2).map(|p| [p[0], p[1]]).collect();
        let rows: Vec<u32> = parse_list("pipnet.neighbors", &required("pipnet.neighbors")?)?;
        if rows.len() != l * c {
            return Err(meta_err(
                "pipnet.neighbors",
                format!(
                    "{} values, expected {} ({l} landmarks x {c} neighbours)",
                    rows.len(),
                    l * c
                ),
            ));
        }
        let neighbors = NeighborIndex::from_rows(l, c, rows)
            .map_err(|e| meta_err("pipnet.neighbors", e.to_string()))?;
        let crop = CropRule::parse(&required("pipnet.crop")?)
            .map_err(|e| meta_err("pipnet.crop", e.to_string()))?;
        let outputs = match required("pipnet.outputs")?.as_str() {
            "raw" => OutputForm::Raw,
            "decoded" => OutputForm::Decoded,
            other => {
                return Err(meta_err(
                    "pipnet.outputs",
                    format!("{other:?}, expected \"raw\" or \"decoded\""),
                ));
            }
        };
        Ok(Self {
            scheme,
            input_size,
            stride,
            mean,
            std,
            meanface,
            neighbors,
            crop,
            outputs,
            backbone: get("pipnet.backbone"),
            train_data: get("pipnet.train_data"),
            metrics: get("pipnet.metrics"),
            precision: get("pipnet.precision"),
        })
    }

    /// The tensors a graph with this metadata must have: the input, then the outputs in
    /// contract order. Dimension `None` is the dynamic batch.
    pub fn expected_io(&self) -> (TensorSpec, Vec<TensorSpec>) {
        let (l, c, g, s) = (
            self.num_landmarks() as i64,
            self.num_neighbors() as i64,
            self.grid() as i64,
            self.input_size as i64,
        );
        let spec = |name: &str, dims: &[i64]| TensorSpec {
            name: name.to_string(),
            is_f32: true,
            shape: std::iter::once(None)
                .chain(dims.iter().map(|&d| Some(d)))
                .collect(),
        };
        let outputs = match self.outputs {
            OutputForm::Raw => vec![
                spec("cls", &[l, g, g]),
                spec("off_x", &[l, g, g]),
                spec("off_y", &[l, g, g]),
                spec("nb_x", &[l * c, g, g]),
                spec("nb_y", &[l * c, g, g]),
            ],
            OutputForm::Decoded => vec![spec("landmarks", &[l, 2]), spec("scores", &[l])],
        };
        (spec("image", &[3, s, s]), outputs)
    }
}

/// A tensor as a graph declares it: name, whether it is float32, and its dimensions
/// (`None` for a symbolic or unknown dimension).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub is_f32: bool,
    pub shape: Vec<Option<i64>>,
}

impl std::fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| d.map_or("N".to_string(), |d| d.to_string()))
            .collect();
        let ty = if self.is_f32 {
            "float32"
        } else {
            "non-float32"
        };
        write!(f, "{} {ty} [{}]", self.name, dims.join(", "))
    }
}

/// Checks a graph's declared inputs and outputs against what `meta` requires. A declared fixed
/// dimension must match; a symbolic one is accepted (ONNX Runtime checks it at run time).
pub fn check_io(meta: &ModelMetadata, inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Result<()> {
    let (want_input, want_outputs) = meta.expected_io();
    let check = |kind: &'static str, want: &TensorSpec, have: &[TensorSpec]| -> Result<()> {
        let got = have.iter().find(|t| t.name == want.name).ok_or_else(|| {
            let names: Vec<&str> = have.iter().map(|t| t.name.as_str()).collect();
            meta_err(
                kind,
                format!("no tensor named {:?} (graph has {names:?})", want.name),
            )
        })?;
        let dims_agree = got.shape.len() == want.shape.len()
            && got
                .shape
                .iter()
                .zip(&want.shape)
                .all(|(g, w)| g.is_none() || w.is_none() || g == w);
        if !got.is_f32 || !dims_agree {
            return Err(meta_err(kind, format!("{got}, expected {want}")));
        }
        Ok(())
    };
    if inputs.len() != 1 {
        return Err(meta_err(
            "input",
            format!("{} graph inputs, expected 1", inputs.len()),
        ));
    }
    check("input", &want_input, inputs)?;
    for want in &want_outputs {
        check("output", want, outputs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    pub(crate) fn sample_metadata() -> ModelMetadata {
        let scheme = Scheme::W300_68;
        let meanface: Vec<Point> = (0..68)
            .map(|i| {
                [
                    0.1 + 0.8 * (i as f32 / 67.0),
                    0.5 + 0.3 * (i as f32 * 0.3).sin(),
                ]
            })
            .collect();
        ModelMetadata {
            scheme,
            input_size: 256,
            stride: 32,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            neighbors: NeighborIndex::from_mean_face(&meanface, 10).unwrap(),
            meanface,
            crop: CropRule::default(),
            outputs: OutputForm::Raw,
            backbone: Some("resnet18".into()),
            train_data: None,
            metrics: None,
            precision: Some("int8".into()),
        }
    }

    fn lookup(pairs: &[(String, String)]) -> impl Fn(&str) -> Option<String> + '_ {
        let map: HashMap<&str, &str> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        move |k| map.get(k).map(|v| v.to_string())
    }

    /// docs/model-contract.md, the contract as the repository documents it.
    const CONTRACT_DOC: &str = include_str!("../../../docs/model-contract.md");

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// One key at a time set to a random value (numbers, lists, text, or missing): the
        /// metadata is read or refused with an error naming that key, never a panic.
        #[test]
        fn random_metadata_values_are_read_or_refused(
            which in 0usize..16,
            value in proptest::option::of(proptest::prop_oneof![
                "[-+0-9.e,]{0,40}",
                ".{0,20}",
                "-?[0-9]{1,25}",
            ]),
        ) {
            let meta = sample_metadata();
            let mut pairs = meta.to_pairs();
            let key = [
                "pipnet.format", "pipnet.num_landmarks", "pipnet.num_neighbors",
                "pipnet.input_size", "pipnet.stride", "pipnet.mean", "pipnet.std",
                "pipnet.meanface", "pipnet.neighbors", "pipnet.scheme", "pipnet.crop",
                "pipnet.outputs", "pipnet.backbone", "pipnet.train_data", "pipnet.metrics",
                "pipnet.precision",
            ][which];
            pairs.retain(|(k, _)| k != key);
            if let Some(v) = value {
                pairs.push((key.to_string(), v));
            }
            // A value that is valid alone but disagrees with another key may be blamed on
            // that key: either way the error names a key.
            if let Err(e) = ModelMetadata::from_lookup(lookup(&pairs)) {
                proptest::prop_assert!(e.to_string().contains("pipnet."), "{key}: {e}");
            }
        }
    }

    #[test]
    fn test_every_key_read_or_written_is_documented() {
        let meta = sample_metadata();
        let pairs = meta.to_pairs();
        let get = lookup(&pairs);
        let read = std::cell::RefCell::new(Vec::new());
        ModelMetadata::from_lookup(|key| {
            read.borrow_mut().push(key.to_string());
            get(key)
        })
        .unwrap();
        let read = read.into_inner();
        assert!(read.len() >= 15, "{read:?}");
        let written = pairs.iter().map(|(k, _)| k.clone());
        for key in read.iter().cloned().chain(written) {
            assert!(
                CONTRACT_DOC.contains(&format!("| `{key}` |")),
                "docs/model-contract.md has no row for {key}"
            );
        }
        let (input, outputs) = meta.expected_io();
        for tensor in std::iter::once(input).chain(outputs) {
            assert!(
                CONTRACT_DOC.contains(&format!("`{}`", tensor.name)),
                "docs/model-contract.md does not name tensor {}",
                tensor.name
            );
        }
        for scheme in Scheme::ALL {
            assert!(CONTRACT_DOC.contains(&format!("`{}`", scheme.name())));
        }
    }

    #[test]
    fn test_metadata_round_trips_through_pairs() {
        let meta = sample_metadata();
        let pairs = meta.to_pairs();
        assert_eq!(ModelMetadata::from_lookup(lookup(&pairs)).unwrap(), meta);
        assert_eq!(meta.grid(), 8);
    }

    #[test]
    fn test_each_broken_key_is_named() {
        let meta = sample_metadata();
        let cases: Vec<(&str, Option<String>, &str)> = vec![
            ("pipnet.format", None, "missing"),
            ("pipnet.format", Some("2".into()), "format 2"),
            (
                "pipnet.num_landmarks",
                Some("98".into()),
                "scheme 300w-68 has 68",
            ),
            ("pipnet.stride", Some("0".into()), "positive"),
            ("pipnet.num_neighbors", Some("0".into()), "expected 1 to 67"),
            (
                "pipnet.input_size",
                Some("250".into()),
                "multiple of stride",
            ),
            ("pipnet.mean", Some("0.5,0.5".into()), "2 values"),
            ("pipnet.std", Some("0.2,0,0.2".into()), "positive"),
            (
                "pipnet.meanface",
                Some("0.5,0.5".into()),
                "2 values, expected 136",
            ),
            (
                "pipnet.neighbors",
                Some(join(0..670)),
                "670 values, expected 680",
            ),
            (
                "pipnet.neighbors",
                Some(join((0..680).map(|i| i % 68))),
                "not itself",
            ),
            ("pipnet.scheme", Some("cofw-29".into()), "cofw-29"),
            ("pipnet.crop", Some("box=2".into()), "unknown key"),
            ("pipnet.outputs", Some("heatmaps".into()), "heatmaps"),
            ("pipnet.meanface", None, "missing"),
        ];
        for (key, value, needle) in cases {
            let mut pairs = meta.to_pairs();
            pairs.retain(|(k, _)| k != key);
            if let Some(v) = value {
                pairs.push((key.to_string(), v));
            }
            let err = ModelMetadata::from_lookup(lookup(&pairs))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(key), "{key}: {err}");
            assert!(err.contains(needle), "{key}: {err}");
        }
    }

    #[test]
    fn test_io_check_accepts_the_contract_and_names_breaks() {
        let meta = sample_metadata();
        let (input, outputs) = meta.expected_io();
        check_io(&meta, std::slice::from_ref(&input), &outputs).unwrap();

        let mut renamed = outputs.clone();
        renamed[3].name = "nbx".into();
        let err = check_io(&meta, std::slice::from_ref(&input), &renamed).unwrap_err();
        assert!(
            err.to_string().contains("no tensor named \"nb_x\""),
            "{err}"
        );

        let mut reshaped = outputs.clone();
        reshaped[0].shape[2] = Some(16);
        let err = check_io(&meta, std::slice::from_ref(&input), &reshaped).unwrap_err();
        assert!(
            err.to_string().contains("cls float32 [N, 68, 16, 8]"),
            "{err}"
        );

        let mut int_input = input.clone();
        int_input.is_f32 = false;
        let err = check_io(&meta, &[int_input], &outputs).unwrap_err();
        assert!(
            err.to_string().starts_with("input: image non-float32"),
            "{err}"
        );
        assert!(check_io(&meta, &[], &outputs).is_err());
    }
}
