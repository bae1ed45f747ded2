//! `pipnet._native`, the extension module under the `pipnet` Python package
//! (`python/pipnet/__init__.py` is the public face). Images come in as numpy `uint8` arrays,
//! landmarks go out as `float32` arrays, and every pipeline run releases the GIL. The Python
//! layer finds the `onnxruntime` wheel's library and passes it in as `ort_library`.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use image::RgbImage;
use numpy::ndarray::{Array1, Array2, Array3};
use numpy::{
    IntoPyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods, dtype,
};
use pipnet_infer::core::smooth::OneEuroSettings;
use pipnet_infer::core::{
    ChipSpec, FaceCrop, HeadPose, Scheme, SecondPass, five_points, head_pose,
};
use pipnet_infer::folder::{FaceSource, FolderJob, OutputFormat, annotate_folder};
use pipnet_infer::image_io::{DEFAULT_MAX_PIXELS, PixelFormat, load_rgb, rgb_from_buffer};
use pipnet_infer::preprocess::cut_chip;
use pipnet_infer::tracker::{Tracker as RustTracker, TrackerOptions};
use pipnet_infer::{
    Device, ErrorKind, Face, Faces, LandmarkModel, OrtLibrary, Pipeline as RustPipeline,
    PipelineOptions, SessionOptions,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

create_exception!(
    pipnet,
    PipnetError,
    PyException,
    "A pipnet operation failed: ONNX Runtime, a model, an image or a file (the message says \
     which and what to do)."
);

/// Caller mistakes (shapes, sizes, option values) are `ValueError`s; the rest `PipnetError`.
fn py_err(e: pipnet_infer::Error) -> PyErr {
    if let pipnet_infer::Error::OtherSettings {
        folder,
        differences,
    } = &e
    {
        return PyValueError::new_err(format!(
            "{} holds results made with other settings ({}); pass force=True to redo every \
             image with the new ones, or another out folder",
            folder.display(),
            differences.join("; ")
        ));
    }
    match e.kind() {
        ErrorKind::InvalidInput => PyValueError::new_err(e.to_string()),
        _ => PipnetError::new_err(e.to_string()),
    }
}

fn session_options(
    device: &str,
    threads: Option<usize>,
    batch: Option<usize>,
    ort_library: Option<PathBuf>,
) -> PyResult<SessionOptions> {
    if threads == Some(0) || batch == Some(0) {
        return Err(PyValueError::new_err(
            "threads and batch must be at least 1 (or None for the default)",
        ));
    }
    Ok(SessionOptions {
        device: device.parse::<Device>().map_err(py_err)?,
        threads,
        batch_size: batch,
        library: ort_library.map_or(OrtLibrary::Provisioned, OrtLibrary::File),
    })
}

/// Copies a numpy image (`HxWx3` RGB, `HxW` gray or `HxWx4` RGBA, `uint8`) into an RGB image.
/// Arrays not in C order (slices, transposes, Fortran order) are copied into C order first.
fn rgb_image(image: &Bound<'_, PyAny>) -> PyResult<RgbImage> {
    let py = image.py();
    let array = image.cast::<PyUntypedArray>().map_err(|_| {
        let kind = image
            .get_type()
            .name()
            .map_or_else(|_| "?".into(), |n| n.to_string());
        PyTypeError::new_err(format!(
            "image must be a numpy array (HxWx3 RGB uint8), got {kind}"
        ))
    })?;
    if !array.dtype().is_equiv_to(&dtype::<u8>(py)) {
        return Err(PyTypeError::new_err(format!(
            "image must be uint8, got {}; convert values in 0..255 with np.clip(image, 0, \
             255).astype(np.uint8), values in 0..1 (floats) with np.clip(image * 255, 0, \
             255).round().astype(np.uint8)",
            array.dtype()
        )));
    }
    let shape = array.shape().to_vec();
    let format = match shape.as_slice() {
        [_, _] => PixelFormat::Gray,
        [_, _, 3] => PixelFormat::Rgb,
        [_, _, 4] => PixelFormat::Rgba,
        _ => {
            return Err(PyValueError::new_err(format!(
                "image must have shape HxWx3 (RGB), HxW (gray) or HxWx4 (RGBA), got {shape:?}"
            )));
        }
    };
    let array = array.cast::<PyArrayDyn<u8>>()?.readonly();
    // `as_slice` also accepts Fortran order, which would be read transposed: only C order is
    // borrowed as it is.
    let pixels = match array.as_slice() {
        Ok(slice) if array.is_c_contiguous() => Cow::Borrowed(slice),
        _ => Cow::Owned(array.as_array().iter().copied().collect()),
    };
    let (height, width) = (shape[0], shape[1]);
    rgb_from_buffer(
        &pixels,
        width,
        height,
        width * format.channels(),
        format,
        DEFAULT_MAX_PIXELS,
    )
    .map_err(py_err)
}

/// One face as the native layer hands it over (`pipnet.Face` wraps it): its box `[x0, y0, x1,
/// y1]`, score, landmarks (`L x 2`), landmark scores (`L`), presence and head pose.
#[pyclass(module = "pipnet._native", frozen)]
struct NativeFace {
    #[pyo3(get, name = "box")]
    face_box: [f32; 4],
    #[pyo3(get)]
    score: f32,
    #[pyo3(get)]
    landmarks: Py<numpy::PyArray2<f32>>,
    #[pyo3(get)]
    landmark_scores: Py<numpy::PyArray1<f32>>,
    #[pyo3(get)]
    presence: f32,
    /// Fitted to `landmarks`; `None` where the scheme has no mean shape.
    pose: Option<HeadPose>,
}

#[pymethods]
impl NativeFace {
    /// The head pose as a dict of `yaw`, `pitch`, `roll`, `rotation` (3 x 3 rows),
    /// `translation`, `scale`, `residual`; `None` without one.
    #[getter]
    fn pose<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(p) = &self.pose else {
            return Ok(None);
        };
        let pose = PyDict::new(py);
        pose.set_item("yaw", p.yaw)?;
        pose.set_item("pitch", p.pitch)?;
        pose.set_item("roll", p.roll)?;
        pose.set_item("rotation", p.rotation)?;
        pose.set_item("translation", p.translation)?;
        pose.set_item("scale", p.scale)?;
        pose.set_item("residual", p.residual)?;
        Ok(Some(pose))
    }
}

impl NativeFace {
    /// `face`, with `landmarks` in place of its own points (a tracker's smoothed ones); the
    /// pose is fitted to those.
    fn new(py: Python<'_>, face: &Face, landmarks: &[[f32; 2]]) -> Self {
        Self {
            pose: Scheme::with_landmarks(landmarks.len()).and_then(|s| head_pose(s, landmarks)),
            face_box: face.face_box().into(),
            score: face.score(),
            landmarks: points_array(py, landmarks).unbind(),
            landmark_scores: Array1::from(face.landmarks.scores())
                .into_pyarray(py)
                .unbind(),
            presence: face.presence(),
        }
    }

    fn of(py: Python<'_>, face: &Face) -> Self {
        Self::new(py, face, &face.landmarks.in_image)
    }
}

/// One face on one frame (`pipnet.TrackedFace` wraps it): its track id, the face with its
/// smoothed landmarks, and the landmarks as measured.
#[pyclass(module = "pipnet._native", frozen)]
struct NativeTrackedFace {
    #[pyo3(get)]
    id: u64,
    #[pyo3(get)]
    face: Py<NativeFace>,
    #[pyo3(get)]
    raw_landmarks: Py<numpy::PyArray2<f32>>,
}

/// What a model is (scheme, input, grid, provenance), and its raw `metadata_props` under
/// `"metadata"`.
fn model_info<'py>(py: Python<'py>, model: &LandmarkModel) -> PyResult<Bound<'py, PyDict>> {
    let meta = model.metadata();
    let info = PyDict::new(py);
    info.set_item("scheme", meta.scheme.name())?;
    info.set_item("num_landmarks", meta.num_landmarks())?;
    info.set_item("num_neighbors", meta.num_neighbors())?;
    info.set_item("input_size", meta.input_size)?;
    info.set_item("stride", meta.stride)?;
    info.set_item("grid", meta.grid())?;
    info.set_item("mean", meta.mean)?;
    info.set_item("std", meta.std)?;
    info.set_item("crop", meta.crop.to_metadata())?;
    info.set_item("backbone", &meta.backbone)?;
    info.set_item("train_data", &meta.train_data)?;
    info.set_item("metrics", &meta.metrics)?;
    info.set_item("precision", &meta.precision)?;
    info.set_item("execution_provider", model.execution_provider())?;
    let pairs = PyDict::new(py);
    for (key, value) in meta.to_pairs() {
        pairs.set_item(key, value)?;
    }
    info.set_item("metadata", pairs)?;
    Ok(info)
}

/// A landmark model with its face detector, loaded once and run on many images.
#[pyclass(module = "pipnet._native")]
struct Pipeline {
    inner: Mutex<RustPipeline>,
}

impl Pipeline {
    /// Runs `f` on the pipeline with the GIL released; calls from several threads take turns.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut RustPipeline) -> pipnet_infer::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            // A panic inside a run poisons the lock; the pipeline holds no state a run leaves
            // half-written, so the next call may go on.
            let mut pipeline = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut pipeline)
        })
        .map_err(py_err)
    }

    fn faces<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        faces: Faces,
    ) -> PyResult<Vec<NativeFace>> {
        let image = rgb_image(image)?;
        let found = self.run(py, |p| p.faces(&[(&image, &faces)]))?;
        Ok(found
            .into_iter()
            .flatten()
            .map(|face| NativeFace::of(py, &face))
            .collect())
    }
}

#[pymethods]
impl Pipeline {
    #[new]
    #[pyo3(signature = (model=None, device="cpu", threads=None, batch=None, min_face=None,
        refine=None, flip=false, detector=None, ort_library=None, min_presence=None))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn new(
        py: Python<'_>,
        model: Option<PathBuf>,
        device: &str,
        threads: Option<usize>,
        batch: Option<usize>,
        min_face: Option<f32>,
        refine: Option<bool>,
        flip: bool,
        detector: Option<PathBuf>,
        ort_library: Option<PathBuf>,
        min_presence: Option<f32>,
    ) -> PyResult<Self> {
        let session = session_options(device, threads, batch, ort_library)?;
        let options = PipelineOptions {
            flip,
            ..pipeline_options(min_face, refine, min_presence, PipelineOptions::default())
        };
        let pipeline = open_pipeline(py, model, detector, &session, options)?;
        Ok(Self {
            inner: Mutex::new(pipeline),
        })
    }

    /// Faces found by the detector, with landmarks.
    fn detect<'py>(&self, py: Python<'py>, image: &Bound<'py, PyAny>) -> PyResult<Vec<NativeFace>> {
        self.faces(py, image, Faces::Detect)
    }

    /// Faces found by the detector in each of `images`, with landmarks: one call, so the
    /// landmark passes run in batches across the images, as `annotate` runs a folder.
    fn detect_many<'py>(
        &self,
        py: Python<'py>,
        images: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Vec<NativeFace>>> {
        let images = images.iter().map(rgb_image).collect::<PyResult<Vec<_>>>()?;
        let items: Vec<(&RgbImage, &Faces)> = images.iter().map(|i| (i, &Faces::Detect)).collect();
        let found = self.run(py, |p| p.faces(&items))?;
        Ok(found
            .iter()
            .map(|faces| faces.iter().map(|f| NativeFace::of(py, f)).collect())
            .collect())
    }

    /// Landmarks for known tight landmark boxes (`[x0, y0, x1, y1]` in pixels, the 300-W
    /// protocol), one face per box, in order.
    fn landmarks<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        boxes: Vec<[f32; 4]>,
    ) -> PyResult<Vec<NativeFace>> {
        let boxes = boxes.into_iter().map(Into::into).collect();
        self.faces(py, image, Faces::LandmarkBoxes(boxes))
    }

    /// Landmarks for the model's input windows themselves: `[cx, cy, side, angle]` squares
    /// (pixels, radians), with no crop rule and no refinement pass.
    fn crops<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        crops: Vec<[f32; 4]>,
    ) -> PyResult<Vec<NativeFace>> {
        let image = rgb_image(image)?;
        let mut windows = Vec::with_capacity(crops.len());
        for (k, &[cx, cy, side, angle]) in crops.iter().enumerate() {
            if !([cx, cy, angle].iter().all(|v| v.is_finite()) && side.is_finite() && side > 0.0) {
                return Err(PyValueError::new_err(format!(
                    "crop {}: [cx, cy, side, angle] must be finite with side > 0, got {:?}",
                    k + 1,
                    crops[k]
                )));
            }
            windows.push((&image, FaceCrop::new([cx, cy], side, angle)));
        }
        let found = self.run(py, |p| p.landmarks_in_windows(&windows))?;
        Ok(found
            .into_iter()
            .map(|landmarks| {
                let face = Face {
                    detection: None,
                    landmarks,
                    second_pass: false,
                };
                NativeFace::of(py, &face)
            })
            .collect())
    }

    /// `pipnet annotate` with this pipeline: one output per image into `out` (a rerun resumes)
    /// and the summary as a dict. `crops`: every image is one face crop; `boxes`: a JSON file of
    /// tight landmark boxes per image, as `--boxes`.
    #[pyo3(signature = (inputs, out, format="json", preview=false, pose_axes=false, crops=false,
        boxes=None, force=false, chips=None))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn annotate<'py>(
        &self,
        py: Python<'py>,
        inputs: Vec<PathBuf>,
        out: PathBuf,
        format: &str,
        preview: bool,
        pose_axes: bool,
        crops: bool,
        boxes: Option<PathBuf>,
        force: bool,
        chips: Option<&str>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let chips = chips
            .map(|spec| spec.parse::<ChipSpec>())
            .transpose()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let faces = match (&boxes, crops) {
            (Some(_), true) => {
                return Err(PyValueError::new_err("crops and boxes exclude each other"));
            }
            (Some(path), false) => FaceSource::read_boxes(path).map_err(py_err)?,
            (None, true) => FaceSource::WholeImageIsFace,
            (None, false) => FaceSource::Detect,
        };
        let job = FolderJob {
            inputs,
            out_dir: out,
            faces,
            format: format.parse::<OutputFormat>().map_err(py_err)?,
            preview,
            pose_axes,
            force,
            max_pixels: DEFAULT_MAX_PIXELS,
            shard: None,
            chips,
        };
        let summary = self.run(py, |p| annotate_folder(p, &job, |_| {}))?;
        let result = PyDict::new(py);
        result.set_item("images", summary.images)?;
        result.set_item("annotated", summary.annotated)?;
        result.set_item("skipped", summary.skipped)?;
        result.set_item("faces", summary.faces)?;
        result.set_item("faces_dropped", summary.faces_dropped)?;
        let failures: Vec<(String, String)> = summary
            .failures
            .into_iter()
            .map(|f| (f.image, f.error))
            .collect();
        result.set_item("failures", failures)?;
        Ok(result)
    }

    /// The landmark model's contract metadata.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let pipeline = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        model_info(py, pipeline.model())
    }
}

fn points_array<'py>(py: Python<'py>, points: &[[f32; 2]]) -> Bound<'py, numpy::PyArray2<f32>> {
    Array2::from_shape_vec((points.len(), 2), points.concat())
        .expect("one row of two per landmark")
        .into_pyarray(py)
}

/// The keyword arguments as pipeline options, `None` taken from `defaults` (the CLI's for the
/// object made); [`PipelineOptions::check`] checks the values, as for the CLI and C.
fn pipeline_options(
    min_face: Option<f32>,
    refine: Option<bool>,
    min_presence: Option<f32>,
    defaults: PipelineOptions,
) -> PipelineOptions {
    PipelineOptions {
        min_face,
        second_pass: match refine {
            None => defaults.second_pass,
            Some(true) => SecondPass::Always,
            Some(false) => SecondPass::Off,
        },
        min_presence: min_presence.unwrap_or(defaults.min_presence),
        ..defaults
    }
}

/// Opens the pipeline with the GIL released (loading takes a while).
fn open_pipeline(
    py: Python<'_>,
    model: Option<PathBuf>,
    detector: Option<PathBuf>,
    session: &SessionOptions,
    options: PipelineOptions,
) -> PyResult<RustPipeline> {
    py.detach(|| {
        RustPipeline::open(
            model.as_deref(),
            detector.as_deref(),
            true,
            session,
            options,
        )
    })
    .map_err(py_err)
}

/// Faces followed over video frames (`pipnet_infer::tracker`).
#[pyclass(module = "pipnet._native")]
struct Tracker {
    inner: Mutex<RustTracker>,
}

#[pymethods]
impl Tracker {
    #[new]
    #[pyo3(signature = (model=None, device="cpu", threads=None, min_face=None, min_presence=None,
        detector=None, ort_library=None, detect_every=10, max_missed=5, smooth=true,
        min_cutoff=None, beta=None))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn new(
        py: Python<'_>,
        model: Option<PathBuf>,
        device: &str,
        threads: Option<usize>,
        min_face: Option<f32>,
        min_presence: Option<f32>,
        detector: Option<PathBuf>,
        ort_library: Option<PathBuf>,
        detect_every: usize,
        max_missed: usize,
        smooth: bool,
        min_cutoff: Option<f64>,
        beta: Option<f64>,
    ) -> PyResult<Self> {
        let session = session_options(device, threads, None, ort_library)?;
        let defaults = TrackerOptions::default();
        let one_euro = OneEuroSettings::default();
        let settings = TrackerOptions {
            pipeline: pipeline_options(min_face, None, min_presence, defaults.pipeline),
            detect_every,
            max_missed,
            smoothing: smooth.then_some(OneEuroSettings {
                min_cutoff: min_cutoff.unwrap_or(one_euro.min_cutoff),
                beta: beta.unwrap_or(one_euro.beta),
                ..one_euro
            }),
            ..defaults
        };
        let tracker = py
            .detach(|| RustTracker::open(model.as_deref(), detector.as_deref(), &session, settings))
            .map_err(py_err)?;
        Ok(Self {
            inner: Mutex::new(tracker),
        })
    }

    /// The faces of the next frame, seen at `time` seconds (frames in order).
    fn track<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        time: f64,
    ) -> PyResult<Vec<NativeTrackedFace>> {
        let image = rgb_image(image)?;
        let faces = py
            .detach(|| {
                let mut tracker = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
                tracker.track(&image, time)
            })
            .map_err(py_err)?;
        faces
            .iter()
            .map(|t| {
                Ok(NativeTrackedFace {
                    id: t.id,
                    face: Py::new(py, NativeFace::new(py, &t.face, &t.smoothed))?,
                    raw_landmarks: points_array(py, &t.face.landmarks.in_image).unbind(),
                })
            })
            .collect()
    }

    /// Forgets every face (a new video); ids go on counting.
    fn reset(&self) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reset();
    }
}

/// Reads an image file as `annotate` does (EXIF orientation applied, any colour type converted)
/// into an `HxWx3` uint8 array.
#[pyfunction]
fn load_image(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, numpy::PyArray3<u8>>> {
    let image = py
        .detach(|| load_rgb(&path, DEFAULT_MAX_PIXELS))
        .map_err(py_err)?;
    let (width, height) = image.dimensions();
    let pixels = Array3::from_shape_vec((height as usize, width as usize, 3), image.into_raw())
        .expect("an RGB image holds height x width x 3 bytes");
    Ok(pixels.into_pyarray(py))
}

/// An aligned chip of a face with `landmarks` (L x 2, the scheme picked by L) in `image`:
/// `(chip HxWx3 uint8, image-to-chip 2x3, chip-to-image 2x3, five points 5 x 2)`.
#[pyfunction]
#[allow(clippy::type_complexity)] // a Python tuple
fn face_chip<'py>(
    py: Python<'py>,
    image: &Bound<'py, PyAny>,
    landmarks: Vec<[f32; 2]>,
    spec: &str,
) -> PyResult<(
    Bound<'py, numpy::PyArray3<u8>>,
    [[f64; 3]; 2],
    [[f64; 3]; 2],
    [[f32; 2]; 5],
)> {
    let value_err = |e: pipnet_infer::core::Error| PyValueError::new_err(e.to_string());
    let spec: ChipSpec = spec.parse().map_err(value_err)?;
    let scheme = Scheme::with_landmarks(landmarks.len()).ok_or_else(|| {
        PyValueError::new_err(format!("no landmark scheme has {} points", landmarks.len()))
    })?;
    let image = rgb_image(image)?;
    let five = five_points(scheme, &landmarks).map_err(value_err)?;
    let chip = pipnet_infer::core::face_chip(spec, scheme, &landmarks).map_err(value_err)?;
    let cut = py.detach(|| cut_chip(&image, &chip));
    let side = chip.size as usize;
    let pixels = Array3::from_shape_vec((side, side, 3), cut.into_raw())
        .expect("a chip holds size x size x 3 bytes");
    Ok((
        pixels.into_pyarray(py),
        chip.to_chip.0,
        chip.to_image.0,
        five,
    ))
}

/// The metadata of a model file (the built-in model when `model` is None).
#[pyfunction]
#[pyo3(signature = (model=None, ort_library=None))]
fn info(
    py: Python<'_>,
    model: Option<PathBuf>,
    ort_library: Option<PathBuf>,
) -> PyResult<Bound<'_, PyDict>> {
    let options = session_options("cpu", Some(1), None, ort_library)?;
    let model = py
        .detach(|| LandmarkModel::load_or_builtin(model.as_deref(), &options))
        .map_err(py_err)?;
    model_info(py, &model)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Pipeline>()?;
    m.add_class::<Tracker>()?;
    m.add(
        "IMAGE_EXTENSIONS",
        pipnet_infer::files::IMAGE_EXTENSIONS.to_vec(),
    )?;
    m.add_class::<NativeFace>()?;
    m.add_class::<NativeTrackedFace>()?;
    m.add_function(wrap_pyfunction!(info, m)?)?;
    m.add_function(wrap_pyfunction!(load_image, m)?)?;
    m.add_function(wrap_pyfunction!(face_chip, m)?)?;
    m.add("PipnetError", m.py().get_type::<PipnetError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
