//! C ABI over [`pipnet_infer::Pipeline`]: opaque handles, status codes, a thread-local error
//! message, and results the caller frees. `include/pipnet.h` is generated from this file by
//! cbindgen (a test fails when the checked-in header is stale).
//!
//! Safety rules every entry point follows: pointers are checked for null, handles are checked
//! against the registry of live ones (so a stale or double-freed handle is an error, not a
//! crash), sizes are checked for overflow before any read, and panics are caught at the
//! boundary.

#![allow(clippy::missing_safety_doc)] // the header documents each function's contract

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pipnet_infer::core::smooth::OneEuroSettings;
use pipnet_infer::core::{ChipSpec, HeadPose, Scheme, SecondPass, face_chip};
use pipnet_infer::image_io::{DEFAULT_MAX_PIXELS, PixelFormat, rgb_from_buffer};
use pipnet_infer::preprocess::cut_chip;
use pipnet_infer::{
    Device, ErrorKind, Face, Faces, Pipeline, PipelineOptions, SessionOptions, Tracker,
    TrackerOptions,
};

/// Bumped whenever a signature, struct layout or constant of this header changes.
pub const PIPNET_ABI_VERSION: u32 = 4;

/// Every function returns one of these; on anything but `PIPNET_STATUS_OK`,
/// `pipnet_last_error()` says what went wrong.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipnetStatus {
    Ok = 0,
    /// A required pointer argument was NULL.
    NullPointer = 1,
    /// An argument is out of range: a size, stride, pixel format, device or index.
    InvalidArgument = 2,
    /// The handle (or result) is not live: never created, already destroyed, or freed twice.
    StaleHandle = 3,
    /// The ONNX Runtime library is missing or failed to load.
    Runtime = 4,
    /// A model file cannot be read or is not an ONNX graph of the expected kind.
    ModelLoad = 5,
    /// The landmark graph breaks the PIPNet contract (e.g. missing metadata).
    Contract = 6,
    /// The requested device (CUDA) is not available.
    Device = 7,
    /// Inference failed or produced non-finite values.
    Inference = 8,
    /// Any other failure (I/O, image decoding).
    Other = 9,
    /// A bug: a panic was caught at the boundary. The handle should not be used again.
    Panic = 10,
}

// Pixel layouts of `PipnetImage::format` (plain integers, so an out-of-range value from C is
// an error rather than an invalid enum).
pub const PIPNET_PIXEL_RGB: u32 = 0;
pub const PIPNET_PIXEL_BGR: u32 = 1;
pub const PIPNET_PIXEL_RGBA: u32 = 2;
pub const PIPNET_PIXEL_BGRA: u32 = 3;
pub const PIPNET_PIXEL_GRAY: u32 = 4;

// Devices of `PipnetOptions::device`; AUTO is CUDA when available, else the CPU.
pub const PIPNET_DEVICE_CPU: u32 = 0;
pub const PIPNET_DEVICE_CUDA: u32 = 1;
pub const PIPNET_DEVICE_AUTO: u32 = 2;

// Second landmark passes of `PipnetOptions::refine`: DEFAULT (zero) as the CLI runs what is
// made, i.e. AUTO for `pipnet_create` (`pipnet annotate`) and ALWAYS for
// `pipnet_tracker_create` (`pipnet track`); AUTO where the first pass says the crop was off or
// the face is unsure, ALWAYS for every face (`--refine`), OFF for none (`--no-refine`).
pub const PIPNET_REFINE_DEFAULT: u32 = 0;
pub const PIPNET_REFINE_ALWAYS: u32 = 1;
pub const PIPNET_REFINE_OFF: u32 = 2;
pub const PIPNET_REFINE_AUTO: u32 = 3;

/// Options for `pipnet_create` and `pipnet_tracker_create`. All zeros
/// (`PipnetOptions options = {0};`) gives the CLI's defaults: built-in model and detector, CPU,
/// every core, smallest face 40 px, the second landmark pass as `pipnet annotate` (or
/// `pipnet track`) runs it.
#[repr(C)]
pub struct PipnetOptions {
    /// Path of the landmark model (UTF-8, NUL-terminated); NULL: the model built into the
    /// library (the shipped default).
    pub landmark_model: *const c_char,
    /// Path of a BlazeFace detector graph with its `.json` settings beside it, or NULL for the
    /// built-in detector.
    pub detector_model: *const c_char,
    /// One of `PIPNET_DEVICE_*`.
    pub device: u32,
    /// ONNX Runtime intra-op threads; 0 uses every core.
    pub threads: u32,
    /// Smallest face searched for, in pixels; 0 uses the detector's default (40).
    pub min_face: f32,
    /// Which faces get a second landmark pass, on a crop made from their first landmarks: one
    /// of `PIPNET_REFINE_*`; zero (DEFAULT) as the CLI runs it.
    pub refine: u32,
    /// Detected faces whose presence (mean landmark score) is below this are dropped as false
    /// detections, and so are those whose landmarks lie over a face of higher presence. 0: the
    /// CLI's default (0.3); a negative value keeps every face.
    pub min_presence: f32,
}

/// An 8-bit image in the caller's memory; rows are `stride` bytes apart.
#[repr(C)]
pub struct PipnetImage {
    pub pixels: *const u8,
    pub width: u32,
    pub height: u32,
    pub stride: usize,
    /// One of `PIPNET_PIXEL_*`.
    pub format: u32,
}

/// What `pipnet_model_info` reports.
#[repr(C)]
pub struct PipnetModelInfo {
    pub num_landmarks: u32,
    /// Side of the square model input, in pixels.
    pub input_size: u32,
    /// Landmark scheme, e.g. "300w-68", NUL-terminated.
    pub scheme: [c_char; 32],
}

/// One face of a result. Pointers stay valid until the result is freed.
#[repr(C)]
pub struct PipnetFace {
    /// Face box `[x0, y0, x1, y1]` in image pixels: the detector's box, or the crop's bounds.
    pub face_box: [f32; 4],
    /// Detector score in 0..1; 1 for faces the caller gave.
    pub score: f32,
    pub num_landmarks: u32,
    /// `num_landmarks` (x, y) pairs in image pixels (0-based pixel centres).
    pub landmarks: *const f32,
    /// `num_landmarks` landmark scores.
    pub landmark_scores: *const f32,
    /// The mean landmark score: low for false detections (see `PipnetOptions::min_presence`).
    pub presence: f32,
    /// From `pipnet_tracker_track`: the face's track id (stable across frames, from 1);
    /// 0 from the other calls.
    pub id: u64,
    /// `num_landmarks` (x, y) pairs as measured: from `pipnet_tracker_track` with smoothing,
    /// `landmarks` holds the smoothed points and this the raw ones; otherwise the same points.
    pub raw_landmarks: *const f32,
    /// Non-zero when `pose` holds the face's head pose; 0 where the scheme has no 3-D mean
    /// face (WFLW 98) or the landmarks fit none.
    pub has_pose: u32,
    /// The head pose fitted to `landmarks` (the smoothed points from the tracker).
    pub pose: PipnetHeadPose,
}

/// A head pose from the landmarks: a 3-D mean face fitted with a weak-perspective camera.
/// Camera axes: x right, y down, z away from the camera; `rotation = Rz(roll) * Ry(yaw) *
/// Rx(pitch)`. Roll > 0: tilted clockwise in the picture; yaw > 0: nose toward the image's
/// left; pitch > 0: nose down. A shape point X (units: outer-eye-corner distance, origin at
/// the shape's centroid) lands at `scale * rotation[0..2] * X + translation` in the image.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PipnetHeadPose {
    /// Degrees.
    pub yaw: f32,
    /// Degrees.
    pub pitch: f32,
    /// Degrees.
    pub roll: f32,
    /// Shape to camera coordinates, row-major 3x3.
    pub rotation: [f32; 9],
    /// Image pixels where the shape's origin lands.
    pub translation: [f32; 2],
    /// Pixels per shape unit.
    pub scale: f32,
    /// RMS distance of the landmarks from the fitted shape, over `scale` (0.033-0.082 on 90%
    /// of real faces; far above: do not trust the pose).
    pub residual: f32,
}

impl From<&HeadPose> for PipnetHeadPose {
    fn from(p: &HeadPose) -> Self {
        Self {
            yaw: p.yaw,
            pitch: p.pitch,
            roll: p.roll,
            rotation: std::array::from_fn(|k| p.rotation[k / 3][k % 3]),
            translation: p.translation,
            scale: p.scale,
            residual: p.residual,
        }
    }
}

/// Options for `pipnet_tracker_create`; all zeros (or NULL) are the defaults of
/// `pipnet track`.
#[repr(C)]
#[derive(Default)]
pub struct PipnetTrackerOptions {
    /// Run the detector every this many frames (new faces); 0: 10.
    pub detect_every: u32,
    /// End a track after this many frames unseen; 0: 5.
    pub max_missed: u32,
    /// Non-zero: no One Euro smoothing.
    pub no_smooth: u32,
    /// One Euro cutoff at rest, Hz; 0: 1.0.
    pub min_cutoff: f32,
    /// One Euro speed coefficient; 0: 2.0.
    pub beta: f32,
}

/// An aligned face chip: `size` x `size` RGB, and the similarity between chip and image as
/// 2x3 row-major matrices (OpenCV's `warpAffine` layout; pixel centres at integers).
#[repr(C)]
pub struct PipnetChip {
    pub size: u32,
    /// Image pixels -> chip pixels.
    pub to_chip: [f64; 6],
    /// Chip pixels -> image pixels.
    pub to_image: [f64; 6],
}

/// A live pipeline. Calls on one handle are serialised by its mutex.
pub struct PipnetHandle {
    pipeline: Mutex<Pipeline>,
}

/// Faces found by one call, owned by the caller until `pipnet_result_free`.
pub struct PipnetResult {
    faces: Vec<ResultFace>,
}

struct ResultFace {
    face_box: [f32; 4],
    score: f32,
    landmarks: Vec<f32>,
    scores: Vec<f32>,
    presence: f32,
    id: u64,
    /// Measured points when `landmarks` are smoothed ones; empty: the same as `landmarks`.
    raw: Vec<f32>,
    /// Fitted to `landmarks`.
    pose: Option<HeadPose>,
}

impl ResultFace {
    fn new(face: &Face, scheme: Scheme, id: u64, smoothed: Option<&[[f32; 2]]>) -> Self {
        let flat = |p: &[[f32; 2]]| p.iter().flatten().copied().collect::<Vec<f32>>();
        let shown = face.annotation_with(scheme, smoothed.unwrap_or(&face.landmarks.in_image));
        let raw = match smoothed {
            Some(_) => flat(&face.landmarks.in_image),
            None => Vec::new(),
        };
        Self {
            face_box: shown.face_box.into(),
            score: shown.score,
            landmarks: flat(&shown.landmarks),
            scores: shown.landmark_scores,
            presence: shown.presence,
            id,
            raw,
            pose: shown.pose,
        }
    }
}

/// Everything live that a caller holds a pointer to (handles, trackers, results), by address.
/// A call looks its argument up here and holds a share of it until it returns, so a
/// `pipnet_destroy` on another thread during the call only takes the registry's share: the
/// call finishes with a live value, which is freed as the call drops the last share, and every
/// later call gets `PIPNET_STATUS_STALE_HANDLE`. The lookup checks the type too, so a tracker
/// passed where a handle is expected is an error, not a bad cast.
static LIVE: Mutex<Option<HashMap<usize, Live>>> = Mutex::new(None);

type Live = Arc<dyn Any + Send + Sync>;

fn live() -> MutexGuard<'static, Option<HashMap<usize, Live>>> {
    // The map stays consistent even if a holder panicked: insert/remove are single steps.
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn register<T: Any + Send + Sync>(value: T) -> *mut T {
    let shared = Arc::new(value);
    // The address is only ever a key: callers' pointers are looked up, never dereferenced.
    let ptr = Arc::as_ptr(&shared).cast_mut();
    live()
        .get_or_insert_with(HashMap::new)
        .insert(ptr as usize, shared);
    ptr
}

/// A share of the live `T` that `ptr` names: NULL is `PIPNET_STATUS_NULL_POINTER`, anything
/// `register` did not make as a `T` (or that was freed) `PIPNET_STATUS_STALE_HANDLE` with
/// `stale`.
fn live_arg<T: Any + Send + Sync>(
    ptr: *const T,
    name: &str,
    stale: &str,
) -> Result<Arc<T>, Failure> {
    non_null(ptr, name)?;
    let shared = live()
        .as_ref()
        .and_then(|m| m.get(&(ptr as usize)).cloned());
    shared
        .and_then(|s| s.downcast::<T>().ok())
        .ok_or_else(|| fail(PipnetStatus::StaleHandle, stale))
}

/// Takes the registry's share of what `register` made; the value is freed now, or when the
/// last call still using it returns. NULL is a no-op, anything else `stale`.
fn free<T: Any + Send + Sync>(ptr: *mut T, stale: &str) -> Result<(), Failure> {
    if ptr.is_null() {
        return Ok(());
    }
    let key = ptr as usize;
    let removed = {
        let mut live = live();
        let is_t = live
            .as_ref()
            .and_then(|m| m.get(&key))
            .is_some_and(|s| (**s).is::<T>());
        live.as_mut().filter(|_| is_t).and_then(|m| m.remove(&key))
    };
    // Dropped after the registry's lock is released: freeing a pipeline takes a while.
    removed
        .map(drop)
        .ok_or_else(|| fail(PipnetStatus::StaleHandle, stale))
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// A failure on its way to the caller.
struct Failure(PipnetStatus, String);

impl From<pipnet_infer::Error> for Failure {
    fn from(e: pipnet_infer::Error) -> Self {
        let status = match e.kind() {
            ErrorKind::Runtime => PipnetStatus::Runtime,
            ErrorKind::ModelLoad => PipnetStatus::ModelLoad,
            ErrorKind::Contract => PipnetStatus::Contract,
            ErrorKind::Device => PipnetStatus::Device,
            ErrorKind::InvalidInput => PipnetStatus::InvalidArgument,
            ErrorKind::Inference => PipnetStatus::Inference,
            _ => PipnetStatus::Other,
        };
        Failure(status, e.to_string())
    }
}

fn fail(status: PipnetStatus, message: impl Into<String>) -> Failure {
    Failure(status, message.into())
}

/// Runs `body`, catching panics, and turns its outcome into a status plus last-error text.
fn guard(body: impl FnOnce() -> Result<(), Failure>) -> PipnetStatus {
    let (status, message) = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => (PipnetStatus::Ok, String::new()),
        Ok(Err(Failure(status, message))) => (status, message),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            (
                PipnetStatus::Panic,
                format!("internal error (please report): {what}"),
            )
        }
    };
    LAST_ERROR.with(|e| {
        *e.borrow_mut() = CString::new(message.replace('\0', " ")).unwrap_or_default();
    });
    status
}

fn non_null<T>(ptr: *const T, name: &str) -> Result<(), Failure> {
    if ptr.is_null() {
        Err(fail(PipnetStatus::NullPointer, format!("{name} is NULL")))
    } else {
        Ok(())
    }
}

unsafe fn path_arg<'a>(ptr: *const c_char, name: &str) -> Result<&'a Path, Failure> {
    non_null(ptr, name)?;
    let text = unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| {
        fail(
            PipnetStatus::InvalidArgument,
            format!("{name} is not UTF-8"),
        )
    })?;
    Ok(Path::new(text))
}

/// [`path_arg`], with NULL meaning none.
unsafe fn optional_path_arg<'a>(
    ptr: *const c_char,
    name: &str,
) -> Result<Option<&'a Path>, Failure> {
    if ptr.is_null() {
        return Ok(None);
    }
    unsafe { path_arg(ptr, name) }.map(Some)
}

fn handle_arg(handle: *const PipnetHandle) -> Result<Arc<PipnetHandle>, Failure> {
    live_arg(
        handle,
        "handle",
        "handle is not live (destroyed, or never made by pipnet_create)",
    )
}

fn lock(handle: &PipnetHandle) -> MutexGuard<'_, Pipeline> {
    handle
        .pipeline
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

unsafe fn image_arg(image: &PipnetImage) -> Result<image::RgbImage, Failure> {
    non_null(image.pixels, "image pixels")?;
    let format = match image.format {
        PIPNET_PIXEL_RGB => PixelFormat::Rgb,
        PIPNET_PIXEL_BGR => PixelFormat::Bgr,
        PIPNET_PIXEL_RGBA => PixelFormat::Rgba,
        PIPNET_PIXEL_BGRA => PixelFormat::Bgra,
        PIPNET_PIXEL_GRAY => PixelFormat::Gray,
        other => {
            return Err(fail(
                PipnetStatus::InvalidArgument,
                format!("unknown pixel format {other}"),
            ));
        }
    };
    let (w, h) = (image.width as usize, image.height as usize);
    // The readable length the caller promises: `stride * (height - 1) + row`, checked for
    // overflow before the slice is made.
    let len = image
        .stride
        .checked_mul(h.saturating_sub(1))
        .and_then(|n| n.checked_add(w.checked_mul(format.channels())?))
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(|| {
            fail(
                PipnetStatus::InvalidArgument,
                format!("image {w}x{h} with stride {} overflows", image.stride),
            )
        })?;
    let pixels = unsafe { std::slice::from_raw_parts(image.pixels, len) };
    Ok(rgb_from_buffer(
        pixels,
        w,
        h,
        image.stride,
        format,
        DEFAULT_MAX_PIXELS,
    )?)
}

fn into_result(faces: Vec<Face>, scheme: Scheme, out: *mut *mut PipnetResult) {
    let faces = faces
        .iter()
        .map(|f| ResultFace::new(f, scheme, 0, None))
        .collect();
    // `out` was checked for null by the caller of this function.
    unsafe { *out = register(PipnetResult { faces }) };
}

/// The library version, e.g. "0.1.0" (static string).
#[unsafe(no_mangle)]
pub extern "C" fn pipnet_version() -> *const c_char {
    static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// The ABI version the library was built with; compare with `PIPNET_ABI_VERSION`.
#[unsafe(no_mangle)]
pub extern "C" fn pipnet_abi_version() -> u32 {
    PIPNET_ABI_VERSION
}

/// The message of the last failed call on this thread ("" after a success). Valid until the
/// next pipnet call on the same thread.
#[unsafe(no_mangle)]
pub extern "C" fn pipnet_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The session `options` ask for: device and threads.
fn session_options(options: &PipnetOptions) -> Result<SessionOptions, Failure> {
    let device = match options.device {
        PIPNET_DEVICE_CPU => Device::Cpu,
        PIPNET_DEVICE_CUDA => Device::Cuda,
        PIPNET_DEVICE_AUTO => Device::Auto,
        other => {
            return Err(fail(
                PipnetStatus::InvalidArgument,
                format!("unknown device {other}"),
            ));
        }
    };
    Ok(SessionOptions {
        device,
        threads: (options.threads > 0).then_some(options.threads as usize),
        ..Default::default()
    })
}

/// `options` as pipeline options, zeros taken from `defaults` (what the CLI runs for the
/// object made). Only the C encodings are read here; [`PipelineOptions::check`] checks the
/// values, as it does for the CLI and Python.
fn pipeline_options(
    options: &PipnetOptions,
    defaults: PipelineOptions,
) -> Result<PipelineOptions, Failure> {
    let second_pass = match options.refine {
        PIPNET_REFINE_DEFAULT => defaults.second_pass,
        PIPNET_REFINE_AUTO => SecondPass::Auto,
        PIPNET_REFINE_ALWAYS => SecondPass::Always,
        PIPNET_REFINE_OFF => SecondPass::Off,
        other => {
            return Err(fail(
                PipnetStatus::InvalidArgument,
                format!("unknown refine {other} (one of PIPNET_REFINE_*)"),
            ));
        }
    };
    Ok(PipelineOptions {
        min_face: (options.min_face != 0.0).then_some(options.min_face),
        second_pass,
        // Negative keeps every face; NaN is left for the check to refuse.
        min_presence: match options.min_presence {
            0.0 => defaults.min_presence,
            p if p < 0.0 => 0.0,
            p => p,
        },
        ..defaults
    })
}

/// The graph files `options` name (NULL: the built-in graph).
unsafe fn graph_paths(options: &PipnetOptions) -> Result<(Option<&Path>, Option<&Path>), Failure> {
    let landmark_model =
        unsafe { optional_path_arg(options.landmark_model, "options.landmark_model")? };
    let detector = unsafe { optional_path_arg(options.detector_model, "options.detector_model")? };
    Ok((landmark_model, detector))
}

/// Loads the landmark model (and the detector) into a new handle, written to `*out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipnet_create(
    options: *const PipnetOptions,
    out: *mut *mut PipnetHandle,
) -> PipnetStatus {
    guard(|| {
        non_null(options, "options")?;
        non_null(out, "out")?;
        let options = unsafe { &*options };
        let pipeline = pipeline_options(options, PipelineOptions::default())?;
        let session = session_options(options)?;
        let (landmark_model, detector) = unsafe { graph_paths(options)? };
        let pipeline = Pipeline::open(landmark_model, detector, true, &session, pipeline)?;
        let handle = register(PipnetHandle {
            pipeline: Mutex::new(pipeline),
        });
        unsafe { *out = handle };
        Ok(())
    })
}

/// Frees a handle. NULL is a no-op; a handle already destroyed is `PIPNET_STATUS_STALE_HANDLE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipnet_destroy(handle: *mut PipnetHandle) -> PipnetStatus {
    guard(|| free(handle, "handle destroyed twice or never created"))
}

/// Fills `*out` with the landmark model's facts.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipnet_model_info(
    handle: *const PipnetHandle,
    out: *mut PipnetModelInfo,
) -> PipnetStatus {
    guard(|| {
        let handle = handle_arg(handle)?;
        non_null(out, "out")?;
        let pipeline = lock(&handle);
        let meta = pipeline.model().metadata();
        let mut scheme = [0 as c_char; 32];
        for (dst, src) in scheme.iter_mut().zip(meta.scheme.name().bytes().take(31)) {
            *dst = src as c_char;
        }
        unsafe {
            *out = PipnetModelInfo {
                num_landmarks: meta.num_landmarks() as u32,
                input_size: meta.input_size as u32,
                scheme,
            }
        };
        Ok(())
    })
}

/// Detects the faces of `image` and finds their landmarks; the new result goes to `*out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipnet_detect(
    handle: *const PipnetHandle,
    image: *const PipnetImage,
    out: *mut *mut PipnetResult,
) -> PipnetStatus {
    guard(|| {
        let handle = handle_arg(handle)?;
        non_null(image, "image")?;
        non_null(out, "out")?;
        let rgb = unsafe { image_arg(&*image)? };
        let mut pipeline = lock(&handle);
        let mut faces = pipeline.faces(&[(&rgb, &Faces::Detect)])?;
        let scheme = pipeline.model().metadata().scheme;
        into_result(faces.pop().unwrap_or_default(), scheme, out);
        Ok(())
    })
}

/// Landmarks for `count` pre-cropped faces (each whole image is one face, as the model's crop
/// rule would cut it), run as one batch; result face `i` belongs to image `i`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipnet_landmarks_in_crops(
    handle: *const PipnetHandle,
    images: *const PipnetImage,
    count: usize,
    out: *mut *mut PipnetResult,
) -> PipnetStatus {
    guard(|| {
        let handle = handle_arg(handle)?;
        non_null(images, "images")?;
        non_null(out, "out")?;
        if count == 0 || count > 1 << 20 {
            return Err(fail(
                PipnetStatus::InvalidArgument,
                format!("count {count} is not in 1..=1048576"),
            ));
        }
        let images = unsafe { std::slice::from_raw_parts(images, count) };
        let rgb: Vec<image::RgbImage> = images
            .iter()
            .enumerate()
            .map(|(i, image)| {
                unsafe { image_arg(image) }
                    .map_err(|Failure(s, m)| fail(s, format!("image {i}: {m}")))
            })
            .collect::<Result<_, _>>()?;
        let whole: Vec<_> = rgb.iter().map(|im| (im, &Faces::WholeImage)).collect();
        let mut pipeline = lock(&handle);
        let faces = pipeline.faces(&whole)?;
        let scheme = pipeline.model().metadata().scheme;
        into_result(faces.into_iter().flatten().collect(), scheme, out);
        Ok(())
    })
}

fn result_arg(result: *const PipnetResult) -> Result<Arc<PipnetResult>, Failure> {
    live_arg(result, "result", "result is not live (already freed?)")
}

/// Number of faces in a result, written to `*count`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipnet_result_count(
    result: *const PipnetResult,
    count: *mut usize,
) -> PipnetStatus {
    guard(|| {
        let result = result_arg(result)?;
        non_null(count, "count")?;
        unsafe { *count = result.faces.len() };
        Ok(())
    })
}

/// Face `index` of a result, written to `*out`; its pointers live as long as the result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipnet_result_face(
    result: *const PipnetResult,
    index: usize,
    out: *mut PipnetFace,
) -> PipnetStatus {
    guard(|| {
        let result = result_arg(result)?;
        non_null(out, "out")?;
        let face = result.faces.get(index).ok_or_else(|| {
            fail(
                PipnetStatus::InvalidArgument,
                format!(
                    "face index {index} out of range (result has {})",
                    result.faces.len()
                ),
            )
        })?;
        unsafe {
            *out = PipnetFace {
                face_box: face.face_box,
                score: face.score,
                num_landmarks: face.scores.len() as u32,
                landmarks: face.landmarks.as_ptr(),
                landmark_scores: face.scores.as_ptr(),
                presence: face.presence,
                id: face.id,
                raw_landmarks: if face.raw.is_empty() {
                    face.landmarks.as_ptr()
                } else {
                    face.raw.as_ptr()
                },
                has_pose: u32::from(face.pose.is_some()),
                pose: face.pose.as_ref().map(Into::into).unwrap_or_default(),
            }
        };
        Ok(())
    })
}

/// Cuts an aligned chip of `face` (a face of a result, or any `PipnetFace` whose landmarks
/// follow a known scheme) out of `image`. `spec` is "arcface112" or "SIZE[:PADDING]" (eyes
/// level, face centred). `chip` receives the size and transforms; the pixels (RGB, `size` x
/// `size` x 3 bytes) go to `pixels` when `capacity` is large enough. Call with `pixels` NULL
/// and `capacity` 0 to learn the size first.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipnet_face_chip(
    image: *const PipnetImage,
    face: *const PipnetFace,
    spec: *const c_char,
    pixels: *mut u8,
    capacity: usize,
    chip: *mut PipnetChip,
) -> PipnetStatus {
    guard(|| {
        non_null(image, "image")?;
        non_null(face, "face")?;
        non_null(spec, "spec")?;
        non_null(chip, "chip")?;
        let invalid = |m: String| fail(PipnetStatus::InvalidArgument, m);
        let spec = unsafe { CStr::from_ptr(spec) }
            .to_str()
            .map_err(|_| invalid("spec is not UTF-8".into()))?;
        let spec: ChipSpec = spec
            .parse()
            .map_err(|e: pipnet_infer::core::Error| invalid(e.to_string()))?;
        let face = unsafe { &*face };
        let scheme = Scheme::with_landmarks(face.num_landmarks as usize).ok_or_else(|| {
            invalid(format!(
                "no landmark scheme has {} points",
                face.num_landmarks
            ))
        })?;
        non_null(face.landmarks, "face->landmarks")?;
        let flat =
            unsafe { std::slice::from_raw_parts(face.landmarks, 2 * face.num_landmarks as usize) };
        let landmarks: Vec<[f32; 2]> = flat.chunks_exact(2).map(|p| [p[0], p[1]]).collect();
        let found = face_chip(spec, scheme, &landmarks).map_err(|e| invalid(e.to_string()))?;
        let flat6 = |s: pipnet_infer::core::Similarity| {
            let [[a, b, c], [d, e, f]] = s.0;
            [a, b, c, d, e, f]
        };
        unsafe {
            *chip = PipnetChip {
                size: found.size,
                to_chip: flat6(found.to_chip),
                to_image: flat6(found.to_image),
            }
        };
        if pixels.is_null() && capacity == 0 {
            return Ok(());
        }
        non_null(pixels.cast_const(), "pixels")?;
        let needed = 3 * (found.size as usize).pow(2);
        if capacity < needed {
            return Err(invalid(format!(
                "capacity {capacity} is under the chip's {needed} bytes ({0} x {0} x 3)",
                found.size
            )));
        }
        let rgb = unsafe { image_arg(&*image)? };
        let cut = cut_chip(&rgb, &found);
        unsafe { std::ptr::copy_nonoverlapping(cut.as_raw().as_ptr(), pixels, needed) };
        Ok(())
    })
}

/// A live tracker: faces followed over video frames. Calls on one tracker are serialised.
pub struct PipnetTracker {
    tracker: Mutex<Tracker>,
}

fn tracker_arg(tracker: *const PipnetTracker) -> Result<Arc<PipnetTracker>, Failure> {
    live_arg(
        tracker,
        "tracker",
        "tracker is not live (destroyed, or never made by pipnet_tracker_create)",
    )
}

/// `options` and `tracking` (NULL: all zeros) as tracker options, zeros taken from
/// [`TrackerOptions::default`], as `pipnet track` runs; [`Tracker::open`] checks the values.
fn tracker_options(
    options: &PipnetOptions,
    tracking: Option<&PipnetTrackerOptions>,
) -> Result<TrackerOptions, Failure> {
    let defaults = TrackerOptions::default();
    let pipeline = pipeline_options(options, defaults.pipeline)?;
    let zeros = PipnetTrackerOptions::default();
    let t = tracking.unwrap_or(&zeros);
    let count = |v: u32, default: usize| if v == 0 { default } else { v as usize };
    let rate = |v: f32, default: f64| if v == 0.0 { default } else { f64::from(v) };
    let one_euro = OneEuroSettings::default();
    Ok(TrackerOptions {
        pipeline,
        detect_every: count(t.detect_every, defaults.detect_every),
        max_missed: count(t.max_missed, defaults.max_missed),
        smoothing: (t.no_smooth == 0).then_some(OneEuroSettings {
            min_cutoff: rate(t.min_cutoff, one_euro.min_cutoff),
            beta: rate(t.beta, one_euro.beta),
            ..one_euro
        }),
        ..defaults
    })
}

/// A tracker over the pipeline `options` describe (as `pipnet_create`), with `tracking`
/// (NULL: the defaults), written to `*out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipnet_tracker_create(
    options: *const PipnetOptions,
    tracking: *const PipnetTrackerOptions,
    out: *mut *mut PipnetTracker,
) -> PipnetStatus {
    guard(|| {
        non_null(options, "options")?;
        non_null(out, "out")?;
        let options = unsafe { &*options };
        let tracking = unsafe { tracking.as_ref() };
        let settings = tracker_options(options, tracking)?;
        let session = session_options(options)?;
        let (landmark_model, detector) = unsafe { graph_paths(options)? };
        let tracker = Tracker::open(landmark_model, detector, &session, settings)?;
        unsafe {
            *out = register(PipnetTracker {
                tracker: Mutex::new(tracker),
            })
        };
        Ok(())
    })
}

/// The faces of the next frame of a video, seen at `time` seconds (frames in order: a time
/// before the last frame's is `PIPNET_STATUS_INVALID_ARGUMENT`, `pipnet_tracker_reset` starts
/// a new video); face ids stay the same while a face is followed. The new result goes to
/// `*out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipnet_tracker_track(
    tracker: *const PipnetTracker,
    image: *const PipnetImage,
    time: f64,
    out: *mut *mut PipnetResult,
) -> PipnetStatus {
    guard(|| {
        let tracker = tracker_arg(tracker)?;
        non_null(image, "image")?;
        non_null(out, "out")?;
        let rgb = unsafe { image_arg(&*image)? };
        let mut tracker = tracker
            .tracker
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let smoothing = tracker.options().smoothing.is_some();
        let scheme = tracker.pipeline().model().metadata().scheme;
        let faces = tracker
            .track(&rgb, time)?
            .iter()
            .map(|t| ResultFace::new(&t.face, scheme, t.id, smoothing.then_some(&t.smoothed[..])))
            .collect();
        unsafe { *out = register(PipnetResult { faces }) };
        Ok(())
    })
}

/// Forgets every face the tracker follows (a new video; ids go on counting).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipnet_tracker_reset(tracker: *const PipnetTracker) -> PipnetStatus {
    guard(|| {
        let tracker = tracker_arg(tracker)?;
        let mut tracker = tracker
            .tracker
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tracker.reset();
        Ok(())
    })
}

/// Frees a tracker. NULL is a no-op; a tracker destroyed twice is
/// `PIPNET_STATUS_STALE_HANDLE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipnet_tracker_destroy(tracker: *mut PipnetTracker) -> PipnetStatus {
    guard(|| free(tracker, "tracker destroyed twice or never created"))
}

/// Frees a result. NULL is a no-op; a result freed twice is `PIPNET_STATUS_STALE_HANDLE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pipnet_result_free(result: *mut PipnetResult) -> PipnetStatus {
    guard(|| free(result, "result freed twice or never made"))
}
