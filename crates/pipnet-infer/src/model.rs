//! A PIPNet graph loaded into an ONNX Runtime session, checked against the contract, with the
//! decoder that turns its outputs into landmarks.

use std::path::{Path, PathBuf};

use image::RgbImage;
use ort::session::Session;
use ort::value::TensorRef;
use pipnet_core::contract::{ModelMetadata, OutputForm, check_io};
use pipnet_core::formats::GraphId;
use pipnet_core::{Decoder, FaceCrop, Landmark, PipMaps, Point, average_with_mirror};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::options::SessionOptions;
use crate::preprocess::{Normalization, mirror_crops, write_crop};
use crate::runtime::{Runtime, runtime};
use crate::session::{GraphSource, OpenedSession, open_session, tensor_specs};

/// Landmarks of one face crop.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceLandmarks {
    pub crop: FaceCrop,
    /// Crop-normalised positions (0..1 across the crop) and scores.
    pub in_crop: Vec<Landmark>,
    /// The same points in image pixels (0-based pixel centres).
    pub in_image: Vec<Point>,
}

impl FaceLandmarks {
    pub fn scores(&self) -> Vec<f32> {
        self.in_crop.iter().map(|l| l.score).collect()
    }
}

/// The outputs of one session run, read by name.
struct Outputs<'s>(ort::session::SessionOutputs<'s>);

impl Outputs<'_> {
    fn get(&self, name: &str) -> Result<&[f32]> {
        let value = self
            .0
            .get(name)
            .ok_or_else(|| Error::Inference(format!("graph has no output {name:?}")))?;
        value
            .try_extract_tensor::<f32>()
            .map(|(_, data)| data)
            .map_err(|e| Error::Inference(format!("output {name}: {e}")))
    }
}

/// Default crops per run: large enough to amortise per-run overhead on a CPU.
pub const DEFAULT_BATCH: usize = 16;

/// A loaded, contract-checked landmark model.
pub struct LandmarkModel {
    session: Session,
    meta: ModelMetadata,
    path: PathBuf,
    id: GraphId,
    provider: &'static str,
    /// Why `Device::Auto` ended on the CPU, if it did.
    fallback: Option<String>,
    norm: Normalization,
    decoder: Decoder,
    batch_size: usize,
    /// Also run each crop mirrored and average (see [`Self::set_flip_average`]).
    flip_average: bool,
    /// Reused input buffer, `[batch, 3, S, S]`.
    input: Vec<f32>,
}

impl std::fmt::Debug for LandmarkModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LandmarkModel")
            .field("path", &self.path)
            .field("provider", &self.provider)
            .field("scheme", &self.meta.scheme)
            .finish_non_exhaustive()
    }
}

/// The shipped default's file name without `.onnx`, as a literal for `include_bytes!`.
macro_rules! builtin_stem {
    () => {
        "pipnet-mbv2-256-face68"
    };
}

/// The file of [`BUILTIN_GRAPH`] in the repository's `models/` folder, for tests and benches
/// that measure the default.
pub const BUILTIN_FILE: &str = concat!(builtin_stem!(), ".onnx");

/// The landmark model built into the library, the shipped default (`models/README.md`): what
/// runs when a caller names no model, so a first run needs no model file.
// A `static`, not a `const`: a const's bytes are copied into every crate that names it, and the
// CLI held the 17 MB graph twice.
pub static BUILTIN_GRAPH: &[u8] =
    include_bytes!(concat!("../../../models/", builtin_stem!(), ".onnx"));

impl GraphSource<'static> {
    /// The graph of [`BUILTIN_GRAPH`].
    pub fn builtin_landmarks() -> Self {
        GraphSource::Memory {
            name: Path::new(concat!("<built-in ", builtin_stem!(), ">")),
            bytes: BUILTIN_GRAPH,
        }
    }
}

impl LandmarkModel {
    /// Loads `path`, builds a session for `options.device`, and checks the graph against the
    /// contract (metadata first, then tensor names, types and shapes).
    pub fn load(path: &Path, options: &SessionOptions) -> Result<Self> {
        Self::load_with_runtime(path, options, runtime(options, |_| {})?)
    }

    pub fn load_with_runtime(path: &Path, options: &SessionOptions, rt: &Runtime) -> Result<Self> {
        Self::open(GraphSource::File(path), options, rt)
    }

    /// The built-in model ([`BUILTIN_GRAPH`]).
    pub fn builtin(options: &SessionOptions) -> Result<Self> {
        let rt = runtime(options, |_| {})?;
        Self::open(GraphSource::builtin_landmarks(), options, rt)
    }

    /// [`Self::load`] for `Some(path)`, [`Self::builtin`] for `None`.
    pub fn load_or_builtin(path: Option<&Path>, options: &SessionOptions) -> Result<Self> {
        match path {
            Some(path) => Self::load(path, options),
            None => Self::builtin(options),
        }
    }

    /// [`Self::load`] from a file or from memory ([`GraphSource::builtin_landmarks`]).
    pub fn open(source: GraphSource<'_>, options: &SessionOptions, rt: &Runtime) -> Result<Self> {
        let path = source.name().to_path_buf();
        let path = path.as_path();
        let OpenedSession {
            session,
            provider,
            fallback,
        } = open_session(source, options, rt)?;
        let load_err = |message: String| Error::ModelLoad {
            path: path.to_path_buf(),
            message,
        };
        let metadata = session
            .metadata()
            .map_err(|e| load_err(format!("reading metadata: {e}")))?;
        let contract_err = |source| Error::Contract {
            path: path.to_path_buf(),
            source,
        };
        let meta = ModelMetadata::from_lookup(|key| metadata.custom(key)).map_err(contract_err)?;
        drop(metadata);
        check_io(
            &meta,
            &tensor_specs(session.inputs()),
            &tensor_specs(session.outputs()),
        )
        .map_err(contract_err)?;
        let batch_size = options.batch_size.unwrap_or(DEFAULT_BATCH).max(1);
        let id = source.id(Some(meta.scheme.name().to_string()))?;
        Ok(Self {
            id,
            norm: Normalization::new(meta.mean, meta.std),
            decoder: Decoder::new(meta.neighbors.clone()),
            session,
            path: path.to_path_buf(),
            provider,
            fallback,
            batch_size,
            flip_average: false,
            input: Vec::new(),
            meta,
        })
    }

    pub fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Name, checksum and scheme of the graph, for the provenance of outputs.
    pub fn id(&self) -> &GraphId {
        &self.id
    }

    /// The execution provider the session was built with.
    pub fn execution_provider(&self) -> &'static str {
        self.provider
    }

    /// Set when `Device::Auto` could not use CUDA and fell back to the CPU: the reason, for a
    /// warning the user will see.
    pub fn device_fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Horizontal-flip test-time averaging: [`Self::landmarks`] also runs every crop mirrored
    /// and averages the two results through the scheme's flip permutation (twice the
    /// inference work).
    pub fn set_flip_average(&mut self, on: bool) {
        self.flip_average = on;
    }

    pub fn flip_average(&self) -> bool {
        self.flip_average
    }

    /// Runs a prepared `[batch, 3, S, S]` input and hands the named outputs to `read`.
    fn run_session<R>(
        session: &mut Session,
        meta: &ModelMetadata,
        path: &Path,
        input: &[f32],
        batch: usize,
        read: impl FnOnce(&Outputs<'_>) -> Result<R>,
    ) -> Result<R> {
        let s = meta.input_size;
        if batch == 0 || input.len() != batch * 3 * s * s {
            return Err(Error::InvalidInput(format!(
                "input has {} values, expected {batch} x 3 x {s} x {s}",
                input.len()
            )));
        }
        let tensor = TensorRef::from_array_view(([batch, 3, s, s], input))
            .map_err(|e| Error::Inference(e.to_string()))?;
        let outputs = session
            .run(ort::inputs!["image" => tensor])
            .map_err(|e| Error::Inference(format!("running {}: {e}", path.display())))?;
        read(&Outputs(outputs))
    }

    /// Runs a prepared `[batch, 3, S, S]` input and returns copies of the outputs in contract
    /// order (raw: cls, off_x, off_y, nb_x, nb_y; decoded: landmarks, scores). For parity
    /// checks and benchmarks; [`Self::run_prepared`] decodes without copying.
    /// Samples `faces` into `input` as one `[N, 3, S, S]` batch with the model's normalisation.
    pub fn prepare(&self, faces: &[(&RgbImage, FaceCrop)], input: &mut Vec<f32>) {
        let s = self.meta.input_size;
        let per_crop = 3 * s * s;
        input.resize(faces.len() * per_crop, 0.0);
        // Crops are independent: sample them on all cores (ONNX Runtime is idle meanwhile).
        input
            .par_chunks_exact_mut(per_crop)
            .zip(faces.par_iter())
            .for_each(|(out, (image, crop))| write_crop(image, crop, s, &self.norm, out));
    }

    /// Runs the session and drops the outputs: the bare ONNX Runtime cost, for benchmarks.
    #[cfg(feature = "bench")]
    pub fn run_bare(&mut self, input: &[f32], batch: usize) -> Result<()> {
        Self::run_session(
            &mut self.session,
            &self.meta,
            &self.path,
            input,
            batch,
            |_| Ok(()),
        )
    }

    /// Runs the session and returns its raw outputs (score and offset maps, flattened), e.g.
    /// for a distillation teacher or a reference decoder.
    pub fn run_raw(&mut self, input: &[f32], batch: usize) -> Result<Vec<Vec<f32>>> {
        let (_, specs) = self.meta.expected_io();
        Self::run_session(
            &mut self.session,
            &self.meta,
            &self.path,
            input,
            batch,
            |get| {
                specs
                    .iter()
                    .map(|t| get.get(&t.name).map(<[f32]>::to_vec))
                    .collect()
            },
        )
    }

    /// Runs a prepared `[batch, 3, S, S]` input and decodes it: `batch * L` landmarks in crop
    /// coordinates. Fails on a wrong input length or non-finite outputs.
    pub fn run_prepared(&mut self, input: &[f32], batch: usize) -> Result<Vec<Landmark>> {
        let l = self.meta.num_landmarks();
        let model = self.path.display().to_string();
        let (meta, decoder) = (&self.meta, &mut self.decoder);
        let landmarks =
            Self::run_session(&mut self.session, meta, &self.path, input, batch, |out| {
                let extract = |name: &str| out.get(name);
                let mut landmarks = vec![Landmark::default(); batch * l];
                match meta.outputs {
                    OutputForm::Raw => {
                        let maps = PipMaps::new(
                            extract("cls")?,
                            extract("off_x")?,
                            extract("off_y")?,
                            extract("nb_x")?,
                            extract("nb_y")?,
                            l,
                            meta.num_neighbors(),
                            meta.grid(),
                        )
                        .map_err(|e| Error::Inference(format!("{model}: {e}")))?;
                        if maps.batch() != batch {
                            return Err(Error::Inference(format!(
                                "{model}: {} faces out for {batch} in",
                                maps.batch()
                            )));
                        }
                        decoder
                            .decode_into(&maps, &mut landmarks)
                            .map_err(|e| Error::Inference(format!("{model}: {e}")))?;
                    }
                    OutputForm::Decoded => {
                        let (points, scores) = (extract("landmarks")?, extract("scores")?);
                        if points.len() != 2 * batch * l || scores.len() != batch * l {
                            return Err(Error::Inference(format!(
                                "{model}: decoded outputs do not hold {batch} x {l} landmarks"
                            )));
                        }
                        for (i, slot) in landmarks.iter_mut().enumerate() {
                            *slot = Landmark {
                                x: points[2 * i],
                                y: points[2 * i + 1],
                                score: scores[i],
                            };
                        }
                    }
                }
                Ok(landmarks)
            })?;
        if let Some(bad) = landmarks
            .iter()
            .position(|p| !(p.x.is_finite() && p.y.is_finite()))
        {
            return Err(Error::Inference(format!(
                "{model} produced a non-finite landmark (face {} of the batch, point {})",
                bad / l,
                bad % l
            )));
        }
        Ok(landmarks)
    }

    /// Landmarks for each `(image, crop)`, run in batches of [`Self::batch_size`] (with flip
    /// averaging, each batch also holds the mirrored crops).
    pub fn landmarks(&mut self, faces: &[(&RgbImage, FaceCrop)]) -> Result<Vec<FaceLandmarks>> {
        let l = self.meta.num_landmarks();
        let per_crop = 3 * self.meta.input_size * self.meta.input_size;
        let perm = self
            .flip_average
            .then(|| self.meta.scheme.flip_permutation());
        let mut result = Vec::with_capacity(faces.len());
        for chunk in faces.chunks(self.batch_size) {
            let n = chunk.len();
            let mut input = std::mem::take(&mut self.input);
            self.prepare(chunk, &mut input);
            if perm.is_some() {
                input.extend_from_within(..n * per_crop);
                mirror_crops(&mut input[n * per_crop..], self.meta.input_size);
            }
            let decoded = self.run_prepared(&input, if perm.is_some() { 2 * n } else { n });
            self.input = input;
            let mut decoded = decoded?;
            if let Some(perm) = &perm {
                let (points, mirrored) = decoded.split_at_mut(n * l);
                for (face, flipped) in points.chunks_exact_mut(l).zip(mirrored.chunks_exact(l)) {
                    average_with_mirror(face, flipped, perm);
                }
                decoded.truncate(n * l);
            }
            for ((_, crop), points) in chunk.iter().zip(decoded.chunks_exact(l)) {
                result.push(FaceLandmarks {
                    crop: *crop,
                    in_image: points.iter().map(|p| crop.to_image([p.x, p.y])).collect(),
                    in_crop: points.to_vec(),
                });
            }
        }
        Ok(result)
    }
}
