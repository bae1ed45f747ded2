//! The C ABI from C: the checked-in header is what cbindgen makes, the C example built against
//! the shared and the static library prints the landmarks the Rust API finds, misuse from C
//! gets error codes, AddressSanitizer (and valgrind, when installed) find nothing, one handle
//! serves several threads, and a destroy racing calls on other threads gets statuses only.

mod common;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

use pipnet_ffi::*;
use pipnet_infer::core::{Scheme, head_pose};
use pipnet_infer::image_io::{DEFAULT_MAX_PIXELS, load_rgb};
use pipnet_infer::{Faces, Pipeline, PipelineOptions, SessionOptions, Tracker, TrackerOptions};

fn header_path() -> PathBuf {
    common::repo_root().join("include/pipnet.h")
}

#[test]
fn test_checked_in_header_is_what_cbindgen_generates() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen")
        .write(&mut generated);
    if std::env::var_os("PIPNET_BLESS").is_some() {
        std::fs::write(header_path(), &generated).unwrap();
    }
    let checked_in = std::fs::read(header_path()).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/pipnet.h is stale: regenerate with PIPNET_BLESS=1 cargo test -p pipnet-ffi \
         --test ffi test_checked_in_header"
    );
}

/// The folder holding `libpipnet_ffi.so` and `libpipnet_ffi.a`. Cargo builds only the rlib
/// for integration tests, so the C libraries are built here, once per test process, with the
/// cargo that runs the tests (same target folder and profile: dependencies are reused).
fn lib_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile_dir = common::target_profile_dir();
            let mut cargo = Command::new(env!("CARGO"));
            cargo
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "pipnet-ffi",
                    "--lib",
                    "--target-dir",
                ])
                .arg(profile_dir.parent().expect("target folder"))
                .current_dir(common::repo_root());
            if profile_dir.ends_with("release") {
                cargo.arg("--release");
            }
            let output = cargo.output().expect("run cargo");
            assert!(
                output.status.success(),
                "cargo build -p pipnet-ffi failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            profile_dir
        })
        .clone()
}

/// Compiles C (or C++) `sources` into `out` with `extra` flags; panics with the compiler's
/// output on failure.
fn compile(compiler: &str, sources: &[PathBuf], out: &Path, extra: &[String]) {
    let output = Command::new(compiler)
        .args(sources)
        .arg("-I")
        .arg(common::repo_root().join("include"))
        .args(["-Wall", "-Wextra", "-Werror", "-o"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("run {compiler}: {e}"));
    assert!(
        output.status.success(),
        "{compiler} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn shared_link() -> Vec<String> {
    let dir = lib_dir().display().to_string();
    vec![
        format!("-L{dir}"),
        "-lpipnet_ffi".into(),
        format!("-Wl,-rpath,{dir}"),
    ]
}

/// The static library plus the system libraries Rust's standard library needs on Linux.
fn static_link() -> Vec<String> {
    let mut flags = vec![lib_dir().join("libpipnet_ffi.a").display().to_string()];
    flags.extend(["-lpthread", "-ldl", "-lm", "-lrt", "-lgcc_s", "-lutil"].map(String::from));
    flags
}

/// Runs a program (optionally under a wrapper such as valgrind); returns stdout, asserting
/// success.
fn run(wrapper: &[&str], program: &Path, args: &[&Path]) -> String {
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    };
    let output = cmd.args(args).output().expect("run program");
    assert!(
        output.status.success(),
        "{} failed ({}):\n{}\n{}",
        program.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The six-face sample photo, turned clockwise by `quarter_turns`, as a binary PPM, and the
/// landmarks the Rust API finds in it, formatted as the C example prints them.
fn photo_and_expected(dir: &Path, quarter_turns: u32) -> (PathBuf, String) {
    let photo = common::sample_photos().join("2008_002470.jpg");
    let mut image = load_rgb(&photo, DEFAULT_MAX_PIXELS).unwrap();
    for _ in 0..quarter_turns {
        image = image::imageops::rotate90(&image);
    }
    let ppm = dir.join(format!("photo-{quarter_turns}.ppm"));
    let mut bytes = format!("P6\n{} {}\n255\n", image.width(), image.height()).into_bytes();
    bytes.extend_from_slice(image.as_raw());
    std::fs::write(&ppm, bytes).unwrap();

    let model =
        pipnet_infer::LandmarkModel::load(&common::shipped_model(), &SessionOptions::default())
            .unwrap();
    let detector = pipnet_infer::detect::FaceDetector::builtin(&SessionOptions::default()).unwrap();
    // The C example's zero-initialised options are the CLI's defaults.
    let mut pipeline =
        Pipeline::with_options(model, Some(detector), PipelineOptions::default()).unwrap();
    let faces = pipeline.faces(&[(&image, &Faces::Detect)]).unwrap();
    let mut expected = String::new();
    for (i, face) in faces[0].iter().enumerate() {
        let b = face.face_box();
        expected.push_str(&format!(
            "# face {} of {}: box {:.1} {:.1} {:.1} {:.1}, presence {:.3}",
            i + 1,
            faces[0].len(),
            b.x0,
            b.y0,
            b.x1,
            b.y1,
            face.presence()
        ));
        let pose = face
            .annotation(pipeline.model().metadata().scheme)
            .pose
            .unwrap();
        expected.push_str(&format!(
            ", yaw {:.1} pitch {:.1} roll {:.1}\n",
            pose.yaw, pose.pitch, pose.roll
        ));
        for p in &face.landmarks.in_image {
            expected.push_str(&format!("{:.3} {:.3}\n", p[0], p[1]));
        }
    }
    assert_eq!(faces[0].len(), 6, "the photo has six faces");
    (ppm, expected)
}

#[test]
#[cfg(target_os = "linux")]
fn test_c_example_prints_the_rust_landmarks_with_shared_and_static_library() {
    let tmp = tempfile::tempdir().unwrap();
    let (ppm, expected) = photo_and_expected(tmp.path(), 0);
    let source = common::repo_root().join("examples/c/annotate.c");
    for (name, link) in [("shared", shared_link()), ("static", static_link())] {
        let exe = tmp.path().join(format!("annotate_{name}"));
        compile("cc", std::slice::from_ref(&source), &exe, &link);
        let printed = run(&[], &exe, &[&ppm, &common::shipped_model()]);
        assert_eq!(printed, expected, "{name} library");
    }
    // Without a model path: the built-in model, which is the shipped default.
    let exe = tmp.path().join("annotate_shared");
    assert_eq!(run(&[], &exe, &[&ppm]), expected, "built-in model");
    // The photo lying on its side and upside down: the turned faces' landmarks too.
    for quarter_turns in [1, 2] {
        let (ppm, expected) = photo_and_expected(tmp.path(), quarter_turns);
        let printed = run(&[], &exe, &[&ppm]);
        assert_eq!(
            printed, expected,
            "photo turned {quarter_turns} quarter turns"
        );
    }

    // The C++ example, against the shared library.
    let exe = tmp.path().join("minimal");
    let cpp = common::repo_root().join("examples/cpp/minimal.cpp");
    compile("c++", &[cpp], &exe, &shared_link());
    let printed = run(&[], &exe, &[&common::shipped_model()]);
    assert!(printed.starts_with("300w-68: 68 landmarks"), "{printed}");
}

#[test]
#[cfg(target_os = "linux")]
fn test_misuse_from_c_gets_error_codes_under_address_sanitizer() {
    let tmp = tempfile::tempdir().unwrap();
    let not_a_model = tmp.path().join("notes.onnx");
    std::fs::write(&not_a_model, "not an ONNX graph").unwrap();
    let exe = tmp.path().join("misuse");
    let source = common::repo_root().join("tests/c/misuse.c");
    let mut flags = vec!["-fsanitize=address,undefined".to_string(), "-g".into()];
    flags.extend(shared_link());
    compile("cc", &[source], &exe, &flags);
    let printed = run(&[], &exe, &[&common::shipped_model(), &not_a_model]);
    assert!(printed.ends_with("0 failed\n"), "{printed}");
    assert!(printed.contains("ok destroy twice: status 3"), "{printed}");

    // The C example under AddressSanitizer too.
    let (ppm, expected) = photo_and_expected(tmp.path(), 0);
    let exe = tmp.path().join("annotate_asan");
    let source = common::repo_root().join("examples/c/annotate.c");
    let mut flags = vec!["-fsanitize=address,undefined".to_string(), "-g".into()];
    flags.extend(shared_link());
    compile("cc", &[source], &exe, &flags);
    assert_eq!(run(&[], &exe, &[&ppm]), expected, "the built-in model");

    // And under valgrind's memcheck where it is installed: invalid reads and writes count,
    // leaks do not (ONNX Runtime keeps process-lifetime allocations), and two reports from
    // glibc's loader and ONNX Runtime itself are suppressed (tests/c/valgrind.supp).
    let valgrind = Command::new("valgrind").arg("--version").output();
    if valgrind.is_ok_and(|o| o.status.success()) {
        let exe = tmp.path().join("misuse_plain");
        let mut flags = vec!["-g".to_string()];
        flags.extend(shared_link());
        compile(
            "cc",
            &[common::repo_root().join("tests/c/misuse.c")],
            &exe,
            &flags,
        );
        let suppressions = common::repo_root().join("tests/c/valgrind.supp");
        let suppressions = format!("--suppressions={}", suppressions.display());
        let wrapper = [
            "valgrind",
            "-q",
            "--error-exitcode=99",
            "--leak-check=no",
            suppressions.as_str(),
        ];
        let printed = run(&wrapper, &exe, &[&common::shipped_model(), &not_a_model]);
        assert!(printed.ends_with("0 failed\n"), "{printed}");
    } else {
        eprintln!("valgrind not installed: only the AddressSanitizer runs were made");
    }
}

/// One-thread CPU options for `model` (NULL: the built-in one), the rest the defaults.
fn cpu_options(model: *const std::ffi::c_char) -> PipnetOptions {
    PipnetOptions {
        landmark_model: model,
        detector_model: std::ptr::null(),
        device: PIPNET_DEVICE_CPU,
        threads: 1,
        min_face: 0.0,
        refine: 0,
        min_presence: 0.0,
    }
}

/// Creates a handle through the C ABI.
fn create(model: &CString) -> *mut PipnetHandle {
    let options = cpu_options(model.as_ptr());
    let mut handle = std::ptr::null_mut();
    assert_eq!(
        unsafe { pipnet_create(&options, &mut handle) },
        PipnetStatus::Ok
    );
    handle
}

/// A C view of an RGB image (valid while `image` lives).
fn rgb_view(image: &image::RgbImage) -> PipnetImage {
    PipnetImage {
        pixels: image.as_raw().as_ptr(),
        width: image.width(),
        height: image.height(),
        stride: image.width() as usize * 3,
        format: PIPNET_PIXEL_RGB,
    }
}

/// All landmarks of one detect call through the C ABI.
fn detect_through_abi(handle: *const PipnetHandle, image: &image::RgbImage) -> Vec<f32> {
    let view = rgb_view(image);
    let mut result = std::ptr::null_mut();
    assert_eq!(
        unsafe { pipnet_detect(handle, &view, &mut result) },
        PipnetStatus::Ok
    );
    let mut count = 0;
    assert_eq!(
        unsafe { pipnet_result_count(result, &mut count) },
        PipnetStatus::Ok
    );
    let mut points = Vec::new();
    for i in 0..count {
        let mut face = std::mem::MaybeUninit::<PipnetFace>::uninit();
        assert_eq!(
            unsafe { pipnet_result_face(result, i, face.as_mut_ptr()) },
            PipnetStatus::Ok
        );
        let face = unsafe { face.assume_init() };
        let n = 2 * face.num_landmarks as usize;
        points.extend_from_slice(unsafe { std::slice::from_raw_parts(face.landmarks, n) });
    }
    assert_eq!(unsafe { pipnet_result_free(result) }, PipnetStatus::Ok);
    points
}

/// Raw handle pointers are only shared to exercise the documented thread safety.
#[derive(Clone, Copy)]
struct SharedHandle(*mut PipnetHandle);
unsafe impl Send for SharedHandle {}
unsafe impl Sync for SharedHandle {}

#[test]
fn test_one_handle_from_many_threads_and_many_handles_at_once() {
    let model = CString::new(common::shipped_model().display().to_string()).unwrap();
    let photos: Vec<image::RgbImage> = ["2008_002470.jpg", "2007_007763.jpg"]
        .iter()
        .map(|f| load_rgb(&common::sample_photos().join(f), DEFAULT_MAX_PIXELS).unwrap())
        .collect();
    let shared = SharedHandle(create(&model));
    let expected: Vec<Vec<f32>> = photos
        .iter()
        .map(|p| detect_through_abi(shared.0, p))
        .collect();
    assert!(expected.iter().all(|e| e.len() >= 5 * 68 * 2));

    std::thread::scope(|scope| {
        // Four threads on one handle, two more with a handle each, all at once.
        for t in 0..6 {
            let (photos, expected, model) = (&photos, &expected, &model);
            scope.spawn(move || {
                let own = (t >= 4).then(|| SharedHandle(create(model)));
                let handle = own.unwrap_or(shared);
                for round in 0..3 {
                    let i = (t + round) % photos.len();
                    assert_eq!(detect_through_abi(handle.0, &photos[i]), expected[i]);
                }
                if let Some(h) = own {
                    assert_eq!(unsafe { pipnet_destroy(h.0) }, PipnetStatus::Ok);
                }
            });
        }
    });
    assert_eq!(unsafe { pipnet_destroy(shared.0) }, PipnetStatus::Ok);
}

/// Everything a C caller can get wrong about an image, in one case: its size, stride and pixel
/// format, and the handle (live, freed, or a pointer that was never one). The buffer is as long
/// as the declared geometry needs (a C library cannot see a buffer's length: a caller that
/// lies about it is outside any contract). Each call returns a status.
#[derive(Debug, Clone)]
struct AbiCase {
    width: u32,
    height: u32,
    /// Bytes added to (or, when negative, taken from) a tight row.
    stride_slack: i64,
    format: u32,
    handle: u8,
    crops: bool,
}

fn abi_case() -> impl proptest::strategy::Strategy<Value = AbiCase> {
    use proptest::prelude::*;
    (
        prop_oneof![0u32..48, Just(u32::MAX)],
        prop_oneof![0u32..48, Just(u32::MAX)],
        -4i64..16,
        0u32..7,
        0u8..3,
        any::<bool>(),
    )
        .prop_map(
            |(width, height, stride_slack, format, handle, crops)| AbiCase {
                width,
                height,
                stride_slack,
                format,
                handle,
                crops,
            },
        )
}

#[test]
fn test_random_sizes_strides_formats_and_handles_get_a_status_never_a_crash() {
    use proptest::test_runner::{Config, TestRunner};
    let model = CString::new(common::shipped_model().display().to_string()).unwrap();
    let live = create(&model);
    let freed = create(&model);
    assert_eq!(unsafe { pipnet_destroy(freed) }, PipnetStatus::Ok);
    let never_a_handle = std::cell::UnsafeCell::new(0u64);
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let mut runner = TestRunner::new(Config::with_cases(300));
    runner
        .run(&abi_case(), |case| {
            let channels = match case.format {
                PIPNET_PIXEL_RGBA | PIPNET_PIXEL_BGRA => 4,
                PIPNET_PIXEL_GRAY => 1,
                _ => 3,
            };
            let row = i64::from(case.width.min(48)) * channels;
            let stride = (row + case.stride_slack).max(0) as usize;
            // Never allocate for the huge declared sizes: their checks must fail first.
            let rows = case.height.min(48) as usize;
            let needed = stride * rows.saturating_sub(1) + row as usize;
            let pixels = vec![128u8; needed.max(1)];
            let image = PipnetImage {
                pixels: pixels.as_ptr(),
                width: case.width,
                height: case.height,
                stride,
                format: case.format,
            };
            let handle = match case.handle {
                0 => live,
                1 => freed,
                _ => never_a_handle.get().cast::<PipnetHandle>(),
            };
            let mut result = std::ptr::null_mut();
            let status = unsafe {
                if case.crops {
                    pipnet_landmarks_in_crops(handle, &image, 1, &mut result)
                } else {
                    pipnet_detect(handle, &image, &mut result)
                }
            };
            let valid_geometry = case.width > 0
                && case.height > 0
                && case.width < 48
                && case.height < 48
                && case.format <= PIPNET_PIXEL_GRAY
                && case.stride_slack >= 0;
            let expected_ok = case.handle == 0 && valid_geometry;
            if status == PipnetStatus::Ok {
                proptest::prop_assert!(expected_ok, "{case:?} succeeded");
                assert_eq!(unsafe { pipnet_result_free(result) }, PipnetStatus::Ok);
            } else {
                proptest::prop_assert!(!expected_ok, "{case:?}: {status:?}");
                let message = unsafe { std::ffi::CStr::from_ptr(pipnet_last_error()) };
                proptest::prop_assert!(!message.to_bytes().is_empty(), "{case:?}: no message");
                proptest::prop_assert!(status != PipnetStatus::Panic, "{case:?}: {message:?}");
            }
            *statuses
                .borrow_mut()
                .entry(format!("{status:?}"))
                .or_insert(0) += 1;
            Ok(())
        })
        .unwrap();
    // The cases reached every kind of answer, not only the first check.
    let statuses = statuses.into_inner();
    for status in ["Ok", "InvalidArgument", "StaleHandle"] {
        assert!(statuses.contains_key(status), "{statuses:?}");
    }
    assert_eq!(unsafe { pipnet_destroy(live) }, PipnetStatus::Ok);
}

/// The C library carries each built-in graph once.
#[test]
#[cfg(target_os = "linux")]
fn test_the_library_holds_each_graph_once() {
    let library = lib_dir().join("libpipnet_ffi.so");
    assert_eq!(common::embedded_graph_copies(&library), [1, 1]);
}

/// Presence and aligned chips through the C ABI, and what a caller can get wrong about them.
#[test]
fn test_presence_and_chips_through_the_abi() {
    let model = CString::new(common::shipped_model().display().to_string()).unwrap();
    let handle = create(&model);
    let photo = load_rgb(
        &common::sample_photos().join("2008_002470.jpg"),
        DEFAULT_MAX_PIXELS,
    )
    .unwrap();
    let view = rgb_view(&photo);
    let mut result = std::ptr::null_mut();
    assert_eq!(
        unsafe { pipnet_detect(handle, &view, &mut result) },
        PipnetStatus::Ok
    );
    let mut face = std::mem::MaybeUninit::<PipnetFace>::uninit();
    assert_eq!(
        unsafe { pipnet_result_face(result, 0, face.as_mut_ptr()) },
        PipnetStatus::Ok
    );
    let face = unsafe { face.assume_init() };
    let n = face.num_landmarks as usize;
    let scores = unsafe { std::slice::from_raw_parts(face.landmark_scores, n) };
    let mean = scores.iter().sum::<f32>() / n as f32;
    assert!(
        (face.presence - mean).abs() < 1e-5,
        "{} vs {mean}",
        face.presence
    );
    assert!(face.presence >= pipnet_infer::pipeline::DEFAULT_MIN_PRESENCE);

    let spec = CString::new("arcface112").unwrap();
    let mut chip = std::mem::MaybeUninit::<PipnetChip>::uninit();
    let call = |pixels: *mut u8, capacity: usize, spec: *const std::ffi::c_char, chip| unsafe {
        pipnet_face_chip(&view, &face, spec, pixels, capacity, chip)
    };
    // Size first, then the pixels.
    assert_eq!(
        call(std::ptr::null_mut(), 0, spec.as_ptr(), chip.as_mut_ptr()),
        PipnetStatus::Ok
    );
    let info = unsafe { chip.assume_init_read() };
    assert_eq!(info.size, 112);
    let mut pixels = vec![0u8; 112 * 112 * 3];
    assert_eq!(
        call(
            pixels.as_mut_ptr(),
            pixels.len(),
            spec.as_ptr(),
            chip.as_mut_ptr()
        ),
        PipnetStatus::Ok
    );
    assert!(pixels.iter().any(|&v| v > 0), "the chip has pixels");
    // to_image undoes to_chip.
    let landmarks = unsafe { std::slice::from_raw_parts(face.landmarks, 2 * n) };
    let (x, y) = (f64::from(landmarks[0]), f64::from(landmarks[1]));
    let [a, b, c, d, e, f] = info.to_chip;
    let (u, v) = (a * x + b * y + c, d * x + e * y + f);
    let [a, b, c, d, e, f] = info.to_image;
    assert!((a * u + b * v + c - x).abs() < 1e-3 && (d * u + e * v + f - y).abs() < 1e-3);

    // Misuse: a status, never a crash.
    assert_eq!(
        call(pixels.as_mut_ptr(), 100, spec.as_ptr(), chip.as_mut_ptr()),
        PipnetStatus::InvalidArgument,
        "capacity under the chip's size"
    );
    assert_eq!(
        call(std::ptr::null_mut(), 10, spec.as_ptr(), chip.as_mut_ptr()),
        PipnetStatus::NullPointer
    );
    assert_eq!(
        call(
            pixels.as_mut_ptr(),
            pixels.len(),
            std::ptr::null(),
            chip.as_mut_ptr()
        ),
        PipnetStatus::NullPointer
    );
    let bad = CString::new("huge").unwrap();
    assert_eq!(
        call(
            pixels.as_mut_ptr(),
            pixels.len(),
            bad.as_ptr(),
            chip.as_mut_ptr()
        ),
        PipnetStatus::InvalidArgument
    );
    let five = PipnetFace {
        num_landmarks: 5,
        ..face
    };
    assert_eq!(
        unsafe {
            pipnet_face_chip(
                &view,
                &five,
                spec.as_ptr(),
                std::ptr::null_mut(),
                0,
                chip.as_mut_ptr(),
            )
        },
        PipnetStatus::InvalidArgument,
        "no scheme has 5 points"
    );
    assert_eq!(unsafe { pipnet_result_free(result) }, PipnetStatus::Ok);
    assert_eq!(unsafe { pipnet_destroy(handle) }, PipnetStatus::Ok);
}

/// The tracker through the C ABI: one id along a moving face, smoothed and raw points, reset,
/// and what a caller can get wrong (a tracker where a handle goes and back, double destroy,
/// NULL and NaN arguments).
#[test]
fn test_tracker_through_the_abi() {
    let data = common::repo_root().join("../shared/data/face68-train");
    let face = &pipnet_infer::labeled::read_labeled(&data, None).unwrap()[3];
    let photo = load_rgb(&face.image, DEFAULT_MAX_PIXELS).unwrap();
    let video = common::synthetic_video(&photo, &face.points, 6, 256, 1.0, 4.0, 5);
    let options = cpu_options(std::ptr::null());
    let mut tracker = std::ptr::null_mut();
    assert_eq!(
        unsafe { pipnet_tracker_create(&options, std::ptr::null(), &mut tracker) },
        PipnetStatus::Ok
    );
    // A C tracker with zeroed options is the Rust tracker with the defaults (`pipnet track`'s).
    let session = SessionOptions {
        threads: Some(1),
        ..Default::default()
    };
    let defaults = TrackerOptions::default();
    let pipeline = Pipeline::open(None, None, true, &session, defaults.pipeline).unwrap();
    let mut rust_tracker = Tracker::new(pipeline, defaults).unwrap();
    /// A face of a C result, copied out: id, landmarks, raw landmarks, pose.
    type CFace = (u64, Vec<f32>, Vec<f32>, Option<PipnetHeadPose>);
    let track = |frame: &image::RgbImage, time: f64| -> Vec<CFace> {
        let view = rgb_view(frame);
        let mut result = std::ptr::null_mut();
        assert_eq!(
            unsafe { pipnet_tracker_track(tracker, &view, time, &mut result) },
            PipnetStatus::Ok
        );
        let mut count = 0;
        unsafe { pipnet_result_count(result, &mut count) };
        let faces = (0..count)
            .map(|i| {
                let mut face = std::mem::MaybeUninit::<PipnetFace>::uninit();
                unsafe { pipnet_result_face(result, i, face.as_mut_ptr()) };
                let face = unsafe { face.assume_init() };
                let points = |p: *const f32| {
                    unsafe { std::slice::from_raw_parts(p, 2 * face.num_landmarks as usize) }
                        .to_vec()
                };
                let pose = (face.has_pose != 0).then_some(face.pose);
                (
                    face.id,
                    points(face.landmarks),
                    points(face.raw_landmarks),
                    pose,
                )
            })
            .collect();
        assert_eq!(unsafe { pipnet_result_free(result) }, PipnetStatus::Ok);
        faces
    };
    let mut moved_apart = false;
    for (t, (frame, _)) in video.iter().enumerate() {
        let time = t as f64 / 30.0;
        let faces = track(frame, time);
        assert_eq!(faces.len(), 1, "frame {t}");
        let (id, smoothed, raw, pose) = &faces[0];
        assert_eq!(*id, 1, "frame {t}");
        moved_apart |= smoothed != raw;
        let want = rust_tracker.track(frame, time).unwrap();
        assert_eq!(want.len(), 1, "frame {t}");
        for (got, want) in [
            (smoothed, &want[0].smoothed),
            (raw, &want[0].face.landmarks.in_image),
        ] {
            let worst = got
                .iter()
                .zip(want.as_flattened())
                .map(|(g, w)| (g - w).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-3, "frame {t}: C and Rust differ by {worst} px");
        }
        // The pose is the smoothed points' pose.
        let pose = pose.expect("a 68-point face has a pose");
        let want_pose = head_pose(Scheme::W300_68, &want[0].smoothed).unwrap();
        let differ = [pose.yaw, pose.pitch, pose.roll]
            .iter()
            .zip([want_pose.yaw, want_pose.pitch, want_pose.roll])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            differ < 0.05,
            "frame {t}: C and Rust poses differ by {differ} degrees"
        );
    }
    assert!(
        moved_apart,
        "smoothed points differ from the raw ones somewhere"
    );
    // Time going back is refused; a reset starts a new video.
    let view = rgb_view(&video[0].0);
    let mut result = std::ptr::null_mut();
    assert_eq!(
        unsafe { pipnet_tracker_track(tracker, &view, 0.0, &mut result) },
        PipnetStatus::InvalidArgument
    );
    assert_eq!(unsafe { pipnet_tracker_reset(tracker) }, PipnetStatus::Ok);
    assert_eq!(track(&video[0].0, 0.0)[0].0, 2, "ids go on after a reset");

    // Misuse.
    assert_eq!(
        unsafe { pipnet_tracker_track(tracker, std::ptr::null(), 0.0, &mut result) },
        PipnetStatus::NullPointer
    );
    assert_eq!(
        unsafe { pipnet_tracker_track(tracker, &view, f64::NAN, &mut result) },
        PipnetStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { pipnet_destroy(tracker.cast()) },
        PipnetStatus::StaleHandle,
        "a tracker is not a handle"
    );
    assert_eq!(unsafe { pipnet_tracker_destroy(tracker) }, PipnetStatus::Ok);
    assert_eq!(
        unsafe { pipnet_tracker_destroy(tracker) },
        PipnetStatus::StaleHandle
    );
    assert_eq!(
        unsafe { pipnet_tracker_track(tracker, &view, 1.0, &mut result) },
        PipnetStatus::StaleHandle
    );
    let bad = PipnetTrackerOptions {
        detect_every: 0,
        max_missed: 0,
        no_smooth: 0,
        min_cutoff: -1.0,
        beta: 0.0,
    };
    let mut other = std::ptr::null_mut();
    assert_eq!(
        unsafe { pipnet_tracker_create(&options, &bad, &mut other) },
        PipnetStatus::InvalidArgument
    );
}

/// What a call that races a destroy may answer: it ran on the live handle, or it came after.
fn ok_or_stale(status: PipnetStatus) -> bool {
    matches!(status, PipnetStatus::Ok | PipnetStatus::StaleHandle)
}

#[test]
fn test_destroy_racing_calls_from_other_threads_gets_a_status_never_a_crash() {
    let model = CString::new(common::shipped_model().display().to_string()).unwrap();
    let photo = load_rgb(
        &common::sample_photos().join("2008_002470.jpg"),
        DEFAULT_MAX_PIXELS,
    )
    .unwrap();
    let view = rgb_view(&photo);
    for round in 0..6u64 {
        let handle = SharedHandle(create(&model));
        // A result shared by the readers below while the main thread frees it.
        let mut first = std::ptr::null_mut();
        assert_eq!(
            unsafe { pipnet_detect(handle.0, &view, &mut first) },
            PipnetStatus::Ok
        );
        let result = SharedResult(first);
        std::thread::scope(|scope| {
            let photo = &photo;
            let callers: Vec<_> = (0..3)
                .map(|t| {
                    scope.spawn(move || {
                        // Whole values moved in (not their raw-pointer fields).
                        let (handle, result, view) = (handle, result, rgb_view(photo));
                        // Until the destroy is seen, each call runs on a live handle.
                        loop {
                            let status = if t == 2 {
                                let mut count = 0;
                                let mut face = std::mem::MaybeUninit::<PipnetFace>::uninit();
                                let counted = unsafe { pipnet_result_count(result.0, &mut count) };
                                let read =
                                    unsafe { pipnet_result_face(result.0, 0, face.as_mut_ptr()) };
                                assert!(ok_or_stale(read), "result face: {read:?}");
                                counted
                            } else {
                                let mut out = std::ptr::null_mut();
                                let status = unsafe { pipnet_detect(handle.0, &view, &mut out) };
                                if status == PipnetStatus::Ok {
                                    assert_eq!(
                                        unsafe { pipnet_result_free(out) },
                                        PipnetStatus::Ok
                                    );
                                }
                                status
                            };
                            assert!(ok_or_stale(status), "thread {t}: {status:?}");
                            if status == PipnetStatus::StaleHandle {
                                return;
                            }
                        }
                    })
                })
                .collect();
            // Destroy while the callers are mid-call, at a different moment each round.
            std::thread::sleep(std::time::Duration::from_millis(20 + 37 * round));
            assert_eq!(unsafe { pipnet_result_free(result.0) }, PipnetStatus::Ok);
            assert_eq!(unsafe { pipnet_destroy(handle.0) }, PipnetStatus::Ok);
            for caller in callers {
                caller.join().expect("a caller panicked");
            }
        });
        assert_eq!(
            unsafe { pipnet_destroy(handle.0) },
            PipnetStatus::StaleHandle
        );
    }
}

/// A result pointer shared between threads to race reads against its free.
#[derive(Clone, Copy)]
struct SharedResult(*mut PipnetResult);
unsafe impl Send for SharedResult {}
unsafe impl Sync for SharedResult {}
