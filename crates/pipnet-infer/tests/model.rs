//! Loading real contract graphs (written by pipnet-train's emitter) into ONNX Runtime: running,
//! batching, back-projection, and refusing graphs that break the contract.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use pipnet_core::FaceCrop;
use pipnet_infer::runtime::runtime;
use pipnet_infer::{ErrorKind, LandmarkModel, OrtLibrary, SessionOptions};
use pipnet_train::emit::emit_model;
use pipnet_train::network::PipNetWeights;
use pipnet_train::onnx::ModelProto;
use pipnet_train::seeded::{synthetic_metadata, tiny_spec, write_seeded_model};
use prost::Message;

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.onnx");
    write_seeded_model(&path, tiny_spec(), 3).expect("write model");
    path
}

fn options(batch: usize) -> SessionOptions {
    SessionOptions {
        threads: Some(1),
        batch_size: Some(batch),
        ..Default::default()
    }
}

fn test_image() -> RgbImage {
    RgbImage::from_fn(120, 90, |x, y| {
        Rgb([(x * 2) as u8, (y * 2) as u8, ((x + y) % 256) as u8])
    })
}

#[test]
fn test_seeded_graph_loads_and_decodes_finite_landmarks() {
    let dir = temp_dir();
    let mut model = LandmarkModel::load(&tiny_model(dir.path()), &options(4)).unwrap();
    assert_eq!(model.execution_provider(), "CPUExecutionProvider");
    assert_eq!(model.metadata().grid(), 4);
    let image = test_image();
    let crop = FaceCrop::new([60.0, 45.0], 70.0, 0.1);
    let faces = model.landmarks(&[(&image, crop)]).unwrap();
    assert_eq!(faces.len(), 1);
    assert_eq!(faces[0].in_crop.len(), 68);
    for (p, q) in faces[0].in_crop.iter().zip(&faces[0].in_image) {
        let back = crop.to_image([p.x, p.y]);
        assert!((back[0] - q[0]).abs() < 1e-3 && (back[1] - q[1]).abs() < 1e-3);
        assert!(p.x.is_finite() && p.score.is_finite());
    }
}

/// Flip averaging is mirror-equivariant whatever the network: the averaged landmarks of a
/// mirrored image are the mirror (through the scheme's permutation) of the original's.
#[test]
fn test_flip_average_is_mirror_equivariant() {
    let dir = temp_dir();
    let mut model = LandmarkModel::load(&tiny_model(dir.path()), &options(4)).unwrap();
    let image = test_image();
    let mirrored = image::imageops::flip_horizontal(&image);
    let crop = FaceCrop::new([50.0, 45.0], 60.0, 0.0);
    let mirrored_crop = FaceCrop::new([image.width() as f32 - 1.0 - 50.0, 45.0], 60.0, 0.0);
    let perm = pipnet_core::Scheme::W300_68.flip_permutation();
    let worst_deviation = |model: &mut LandmarkModel| {
        let a = model.landmarks(&[(&image, crop)]).unwrap();
        let b = model.landmarks(&[(&mirrored, mirrored_crop)]).unwrap();
        (0..68)
            .map(|i| {
                let (p, q) = (a[0].in_crop[i], b[0].in_crop[perm[i]]);
                (p.x - (1.0 - q.x)).abs().max((p.y - q.y).abs())
            })
            .fold(0.0f32, f32::max)
    };
    // A seeded network is not mirror-symmetric by itself...
    assert!(worst_deviation(&mut model) > 1e-3);
    // ...but its flip-averaged landmarks are.
    model.set_flip_average(true);
    let worst = worst_deviation(&mut model);
    assert!(
        worst < 1e-4,
        "flip-averaged landmarks deviate from mirror symmetry by {worst}"
    );
}

#[test]
fn test_batching_does_not_change_results() {
    let dir = temp_dir();
    let path = tiny_model(dir.path());
    let image = test_image();
    let crops: Vec<_> = (0..5)
        .map(|i| {
            (
                &image,
                FaceCrop::new([40.0 + 5.0 * i as f32, 45.0], 50.0, 0.0),
            )
        })
        .collect();
    let one_by_one = LandmarkModel::load(&path, &options(1))
        .unwrap()
        .landmarks(&crops)
        .unwrap();
    let batched = LandmarkModel::load(&path, &options(3))
        .unwrap()
        .landmarks(&crops)
        .unwrap();
    assert_eq!(one_by_one.len(), 5);
    for (a, b) in one_by_one.iter().zip(&batched) {
        for (p, q) in a.in_crop.iter().zip(&b.in_crop) {
            assert!(
                (p.x - q.x).abs() < 1e-5 && (p.y - q.y).abs() < 1e-5,
                "{p:?} vs {q:?}"
            );
        }
    }
    // Different crops give different landmarks: the image reaches the network.
    assert_ne!(one_by_one[0].in_crop, one_by_one[4].in_crop);
}

#[test]
fn test_wrong_input_length_is_an_error_not_a_panic() {
    let dir = temp_dir();
    let mut model = LandmarkModel::load(&tiny_model(dir.path()), &options(2)).unwrap();
    let err = model.run_prepared(&[0.0; 10], 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains("expected 1 x 3 x 64 x 64"),
        "{err}"
    );
}

#[test]
fn test_nan_input_is_reported_as_non_finite_output() {
    let dir = temp_dir();
    let mut model = LandmarkModel::load(&tiny_model(dir.path()), &options(1)).unwrap();
    let err = model
        .run_prepared(&vec![f32::NAN; 3 * 64 * 64], 1)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Inference);
    assert!(err.to_string().contains("non-finite"), "{err}");
}

/// Emits the tiny model, lets `break_it` damage the proto, writes it, and loads it.
fn load_broken(break_it: impl FnOnce(&mut ModelProto)) -> pipnet_infer::Error {
    let spec = tiny_spec();
    let meta = synthetic_metadata(&spec, pipnet_core::Scheme::W300_68).unwrap();
    let mut proto = emit_model(&PipNetWeights::seeded(spec, 1).unwrap(), &meta).unwrap();
    break_it(&mut proto);
    let dir = temp_dir();
    let path = dir.path().join("broken.onnx");
    std::fs::write(&path, proto.encode_to_vec()).unwrap();
    LandmarkModel::load(&path, &options(1)).unwrap_err()
}

#[test]
fn test_missing_metadata_is_refused_by_name() {
    let err = load_broken(|m| {
        m.metadata_props
            .retain(|p| p.key.as_deref() != Some("pipnet.neighbors"))
    });
    assert_eq!(err.kind(), ErrorKind::Contract);
    assert!(
        err.to_string().contains("pipnet.neighbors: missing"),
        "{err}"
    );

    let err = load_broken(|m| m.metadata_props.clear());
    assert!(err.to_string().contains("pipnet.format: missing"), "{err}");
}

#[test]
fn test_wrong_output_name_is_refused() {
    let err = load_broken(|m| {
        let graph = m.graph.as_mut().unwrap();
        for node in &mut graph.node {
            for out in &mut node.output {
                if out == "nb_x" {
                    *out = "neighbors_x".into();
                }
            }
        }
        graph.output[3].name = Some("neighbors_x".into());
    });
    assert_eq!(err.kind(), ErrorKind::Contract);
    assert!(
        err.to_string().contains("no tensor named \"nb_x\""),
        "{err}"
    );
}

#[test]
fn test_wrong_output_shape_is_refused() {
    // Metadata says 10 neighbours; make it 9 so nb_x/nb_y should have 612 channels, not 680.
    let err = load_broken(|m| {
        for p in &mut m.metadata_props {
            match p.key.as_deref() {
                Some("pipnet.num_neighbors") => p.value = Some("9".into()),
                Some("pipnet.neighbors") => {
                    let rows: Vec<&str> = p.value.as_deref().unwrap().split(',').collect();
                    let kept: Vec<&str> = rows.chunks(10).flat_map(|r| r[..9].to_vec()).collect();
                    p.value = Some(kept.join(","));
                }
                _ => {}
            }
        }
    });
    assert_eq!(err.kind(), ErrorKind::Contract);
    assert!(
        err.to_string()
            .contains("nb_x float32 [N, 680, 4, 4], expected nb_x float32 [N, 612, 4, 4]"),
        "{err}"
    );
}

#[test]
fn test_a_file_that_is_not_onnx_is_refused() {
    let dir = temp_dir();
    let path = dir.path().join("notes.onnx");
    std::fs::write(&path, "this is not a graph").unwrap();
    let err = LandmarkModel::load(&path, &options(1)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ModelLoad);
    assert!(err.to_string().contains("notes.onnx"), "{err}");
    let err = LandmarkModel::load(&dir.path().join("absent.onnx"), &options(1)).unwrap_err();
    assert!(err.to_string().contains("no such file"), "{err}");
}

/// One process loads one ONNX Runtime library: asking for the loaded file again is fine, for
/// another file is an error that says which one is loaded.
#[test]
fn test_a_second_library_is_refused_once_one_is_loaded() {
    let loaded = runtime(&SessionOptions::default(), |_| {}).unwrap();
    let library = |path: PathBuf| SessionOptions {
        library: OrtLibrary::File(path),
        ..Default::default()
    };
    let again = runtime(&library(loaded.library.clone()), |_| {}).unwrap();
    assert_eq!(again.library, loaded.library);
    let dir = temp_dir();
    let other = dir.path().join("libonnxruntime.so");
    std::fs::write(&other, b"another library").unwrap();
    let err = runtime(&library(other), |_| {}).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Runtime);
    let message = err.to_string();
    assert!(
        message.contains("already loaded")
            && message.contains(&loaded.library.display().to_string()),
        "{message}"
    );
}
