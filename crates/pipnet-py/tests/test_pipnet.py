"""The `pipnet` Python package against the Rust API, run by tests/python.rs (`cargo test`), which
builds the package with maturin and passes the Rust results in PIPNET_RUST_FACES."""

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import pipnet

PHOTOS = Path(os.environ["PIPNET_SAMPLE_PHOTOS"])
_RUST = json.loads(Path(os.environ["PIPNET_RUST_FACES"]).read_text())
RUST_FACES, RUST_TURNED = _RUST["photos"], _RUST["turned"]
RUST_TRACKS = json.loads(Path(os.environ["PIPNET_RUST_TRACKS"]).read_text())
MODELS = PHOTOS.parent.parent / "models"


@pytest.fixture(scope="module")
def pipeline():
    return pipnet.Pipeline()


@pytest.fixture(scope="module")
def photo():
    return pipnet.load_image(PHOTOS / sorted(RUST_FACES)[0])


def assert_same_faces(got, want, rtol=1e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.box, w.box, rtol=rtol)
        np.testing.assert_allclose(g.landmarks, w.landmarks, rtol=rtol)
        np.testing.assert_allclose(g.landmark_scores, w.landmark_scores, rtol=rtol)
        assert g.score == pytest.approx(w.score, rel=rtol)


def test_landmarks_equal_the_rust_api_on_every_sample_photo(pipeline):
    total = 0
    for file, want in RUST_FACES.items():
        faces = pipeline(pipnet.load_image(PHOTOS / file))
        assert len(faces) == len(want), file
        for face, w in zip(faces, want):
            np.testing.assert_allclose(face.box, w["box"], rtol=1e-5)
            np.testing.assert_allclose(face.landmarks, w["landmarks"], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(face.landmark_scores, w["landmark_scores"], atol=1e-5)
            assert face.score == pytest.approx(w["score"], abs=1e-5)
            for name in ("yaw", "pitch", "roll", "scale", "residual"):
                assert getattr(face.pose, name) == pytest.approx(w["pose"][name], abs=1e-3)
            np.testing.assert_allclose(face.pose.rotation, w["pose"]["rotation"], atol=1e-5)
        total += len(faces)
    assert total >= 40  # the README's 43 faces, give or take a detector change


@pytest.mark.parametrize("quarter_turns", [1, 2])
def test_a_photo_taken_sideways_or_upside_down_gets_the_rust_landmarks(pipeline, quarter_turns):
    # np.rot90 with k=-1 turns clockwise, as the Rust side's image::imageops::rotate90.
    image = np.rot90(pipnet.load_image(PHOTOS / RUST_TURNED["file"]), k=-quarter_turns)
    faces, want = pipeline(image), RUST_TURNED[str(quarter_turns)]
    # Every face of the upright photo is found turned too.
    assert len(faces) == len(want) == len(RUST_FACES[RUST_TURNED["file"]])
    for face, w in zip(faces, want):
        np.testing.assert_allclose(face.box, w["box"], rtol=1e-5)
        np.testing.assert_allclose(face.landmarks, w["landmarks"], rtol=1e-5, atol=1e-5)
        assert face.pose.roll == pytest.approx(w["pose"]["roll"], abs=1e-3)


def test_detect_many_finds_what_detect_finds_on_each_image(pipeline):
    images = [pipnet.load_image(PHOTOS / name) for name in sorted(RUST_FACES)[:3]]
    for one_call, image in zip(pipeline.detect_many(images), images):
        assert_same_faces(one_call, pipeline(image), rtol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        pipeline.detect_many([images[0], np.zeros(8, np.uint8)])


def test_faces_have_numpy_fields_in_image_pixels(pipeline, photo):
    faces = pipeline.detect(photo)
    assert faces
    height, width, _ = photo.shape
    for face in faces:
        assert face.box.shape == (4,) and face.box.dtype == np.float32
        assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
        assert face.landmark_scores.shape == (68,)
        assert 0.0 < face.score <= 1.0
        x0, y0, x1, y1 = face.box
        inside = (
            (face.landmarks[:, 0] > x0 - (x1 - x0))
            & (face.landmarks[:, 0] < x1 + (x1 - x0))
            & (face.landmarks[:, 1] > y0 - (y1 - y0))
            & (face.landmarks[:, 1] < y1 + (y1 - y0))
        )
        assert inside.all(), "landmarks far outside their face's box"
        assert (face.landmarks >= -1).all() and (face.landmarks[:, 0] <= width).all()


def test_a_path_is_read_like_load_image(pipeline, photo):
    assert_same_faces(pipeline(PHOTOS / sorted(RUST_FACES)[0]), pipeline(photo))


def test_gray_and_rgba_images_equal_their_rgb_forms(pipeline, photo):
    gray = photo.mean(axis=2).astype(np.uint8)
    assert_same_faces(pipeline(gray), pipeline(np.stack([gray] * 3, axis=2)))
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    assert_same_faces(pipeline(rgba), pipeline(photo))


def test_non_contiguous_arrays_are_copied_not_misread(pipeline, photo):
    mirrored = photo[:, ::-1]
    assert not mirrored.flags["C_CONTIGUOUS"]
    assert_same_faces(pipeline(mirrored), pipeline(np.ascontiguousarray(mirrored)))
    fortran = np.asfortranarray(photo)
    assert_same_faces(pipeline(fortran), pipeline(photo))


def test_bgr_arrays_are_read_as_bgr_when_told(pipeline, photo):
    bgr = np.ascontiguousarray(photo[..., ::-1])
    assert_same_faces(pipeline(bgr, channels="bgr"), pipeline(photo))
    bgra = np.dstack([bgr, np.full(photo.shape[:2], 255, np.uint8)])
    assert_same_faces(pipeline.detect(bgra, channels="bgr"), pipeline(photo))
    with pytest.raises(ValueError, match="channels"):
        pipeline(photo, channels="hsv")
    with pytest.raises(ValueError, match="HxWx3"):
        pipeline(photo[..., 0], channels="bgr")


def test_head_poses_mirror_with_the_photo_and_project_the_mean_face(pipeline):
    # Mirroring negates yaw and roll and keeps pitch: the median face must agree as well as 95%
    # of the validation faces did (`pipnet eval --pose-checks`, README "Head pose").
    sizes = []
    for name in ("2008_002506.jpg", "2008_001322.jpg", "2009_004587.jpg"):
        photo = pipnet.load_image(PHOTOS / name)
        faces = pipeline.detect(photo)
        mirrored = pipeline.detect(np.ascontiguousarray(photo[:, ::-1]))
        width = photo.shape[1]
        assert faces and len(mirrored) == len(faces), name
        for face in faces:
            pose = face.pose
            assert pose.rotation.shape == (3, 3) and pose.translation.shape == (2,)
            np.testing.assert_allclose(pose.rotation @ pose.rotation.T, np.eye(3), atol=1e-5)
            assert pose.project([0, 0, 0])[0] == pytest.approx(pose.translation, abs=1e-4)
            assert 0 < pose.residual < 0.2
            # The same face in the mirrored photo: the one whose box mirrors this one's.
            twin = min(mirrored, key=lambda m: abs(width - 1 - m.box[2] - face.box[0])).pose
            sizes.append([twin.yaw + pose.yaw, twin.pitch - pose.pitch, twin.roll + pose.roll])
    assert len(sizes) >= 6
    median = np.median(np.abs(sizes), axis=0)
    assert (median <= [1.49, 1.40, 0.97]).all(), median


def test_faces_have_presence_and_upright_chips(pipeline, photo):
    faces = pipeline(photo)
    for face in faces:
        assert face.presence == pytest.approx(float(face.landmark_scores.mean()), rel=1e-5)
    assert len(pipnet.Pipeline(min_presence=0)(photo)) >= len(faces)
    assert pipnet.Pipeline(min_presence=10)(photo) == []
    with pytest.raises(ValueError, match="min_presence"):
        pipnet.Pipeline(min_presence=-1)
    face = faces[0]
    chip = face.chip(photo)
    assert chip.image.shape == (112, 112, 3) and chip.image.dtype == np.uint8
    points = np.c_[face.landmarks, np.ones(len(face.landmarks))]
    in_chip = points @ chip.to_chip.T
    back = np.c_[in_chip, np.ones(len(in_chip))] @ chip.to_image.T
    np.testing.assert_allclose(back, face.landmarks, atol=1e-3)
    eyes = np.c_[chip.five_points[:2], np.ones(2)] @ chip.to_chip.T
    tilt = np.degrees(np.arctan2(eyes[1, 1] - eyes[0, 1], eyes[1, 0] - eyes[0, 0]))
    assert abs(tilt) < 3, tilt
    bgr = face.chip(np.ascontiguousarray(photo[..., ::-1]), "64:0.1", channels="bgr")
    np.testing.assert_array_equal(bgr.image, face.chip(photo, "64:0.1").image[..., ::-1])
    with pytest.raises(ValueError, match="chip spec"):
        face.chip(photo, "huge")


def test_a_tracker_keeps_ids_across_frames_as_the_rust_tracker_does(photo):
    tracker = pipnet.Tracker(threads=1)
    ids = []
    for t, want in enumerate(RUST_TRACKS):
        frame = np.ascontiguousarray(np.roll(photo, 3 * t, axis=1))
        faces = tracker(frame[..., ::-1], time=t / 30, channels="bgr")
        assert all(f.landmarks.shape == (68, 2) and f.raw_landmarks.shape == (68, 2) for f in faces)
        # Default keyword arguments are the Rust tracker's defaults: same faces, same points.
        assert [f.id for f in faces] == [w["id"] for w in want], t
        for face, w in zip(faces, want):
            np.testing.assert_allclose(face.raw_landmarks, w["raw_landmarks"], atol=1e-3)
            np.testing.assert_allclose(face.landmarks, w["landmarks"], atol=1e-3)
        ids.append(sorted(f.id for f in faces))
    assert ids[0] and all(frame_ids == ids[0] for frame_ids in ids), ids
    tracker.reset()
    after = sorted(f.id for f in tracker(photo, time=1.0))
    assert min(after) > max(ids[0]), "ids go on after a reset"
    with pytest.raises(ValueError, match="detect_every"):
        pipnet.Tracker(detect_every=0)
    with pytest.raises(ValueError, match="time"):
        tracker(photo, time=float("nan"))
    with pytest.raises(ValueError, match="before the last"):
        tracker(photo, time=0.5)


def test_the_package_shows_its_public_names_only():
    assert dir(pipnet) == sorted(pipnet.__all__)
    assert all(hasattr(pipnet, name) for name in pipnet.__all__)


def test_known_boxes_give_one_face_each_in_order(pipeline, photo):
    found = pipeline(photo)
    boxes = np.array(
        [np.r_[f.landmarks.min(axis=0), f.landmarks.max(axis=0)] for f in found[:3]]
    )
    faces = pipeline.landmarks(photo, boxes)
    assert len(faces) == len(boxes)
    for face, detected, box in zip(faces, found, boxes):
        assert face.score == 1.0
        # Both end on the same face: within a tenth of its size.
        size = box[2] - box[0]
        assert np.abs(face.landmarks - detected.landmarks).mean() < 0.1 * size
    assert pipeline.landmarks(photo, np.zeros((0, 4))) == []


def test_crops_are_the_model_windows_that_boxes_make(photo):
    single_pass = pipnet.Pipeline(refine=False)
    assert single_pass.info["crop"] == "landmark_box_scale=1.1"
    boxes = np.array([[100.0, 195.0, 135.0, 232.0], [200.5, 40.0, 260.0, 110.0]], np.float32)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = 1.1 * np.max(boxes[:, 2:] - boxes[:, :2], axis=1)
    crops = np.c_[centre, side, np.zeros(len(boxes))]
    assert_same_faces(single_pass.crops(photo, crops), single_pass.landmarks(photo, boxes))
    with pytest.raises(ValueError, match="side > 0"):
        single_pass.crops(photo, [[10, 10, 0, 0]])


@pytest.mark.parametrize(
    "image, error, message",
    [
        (np.zeros((64, 64, 3), np.float32), TypeError, r"np.clip\(image \* 255"),
        ([[0, 0, 0]], TypeError, "numpy array"),
        (np.zeros((64, 64, 2), np.uint8), ValueError, "shape"),
        (np.zeros(64, np.uint8), ValueError, "shape"),
        (np.zeros((0, 64, 3), np.uint8), ValueError, "empty"),
    ],
)
def test_bad_images_are_refused_with_a_clear_error(pipeline, image, error, message):
    with pytest.raises(error, match=message):
        pipeline(image)


def test_bad_boxes_and_options_are_value_errors(pipeline, photo):
    with pytest.raises(ValueError, match="N x 4"):
        pipeline.landmarks(photo, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="box 1"):
        pipeline.landmarks(photo, [[10, 10, 5000, 5000]])
    with pytest.raises(ValueError, match="device"):
        pipnet.Pipeline(device="tpu")
    with pytest.raises(ValueError, match="threads"):
        pipnet.Pipeline(threads=0)
    with pytest.raises(ValueError, match="threads must be a whole number >= 1"):
        pipnet.Pipeline(threads=-1)
    with pytest.raises(ValueError, match="batch"):
        pipnet.Pipeline(batch=2**40)
    with pytest.raises(TypeError, match="threads"):
        pipnet.Pipeline(threads=1.5)
    with pytest.raises(ValueError, match="min_face"):
        pipnet.Pipeline(min_face=float("nan"))


def test_bad_files_raise_pipnet_errors_that_name_them(tmp_path):
    not_a_model = tmp_path / "model.onnx"
    not_a_model.write_bytes(b"not a graph")
    with pytest.raises(pipnet.PipnetError, match="model.onnx"):
        pipnet.Pipeline(model=not_a_model)
    with pytest.raises(pipnet.PipnetError, match="missing.onnx"):
        pipnet.info(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((PHOTOS / sorted(RUST_FACES)[0]).read_bytes()[:500])
    with pytest.raises(pipnet.PipnetError, match="broken.jpg"):
        pipnet.load_image(broken)


def test_info_describes_the_builtin_and_a_model_file(pipeline):
    builtin = pipnet.info()
    assert builtin["scheme"] == "300w-68" and builtin["num_landmarks"] == 68
    assert builtin["grid"] == builtin["input_size"] // builtin["stride"]
    assert builtin["metadata"]["pipnet.scheme"] == "300w-68"
    assert pipeline.info["metadata"] == builtin["metadata"]
    int8 = pipnet.info(MODELS / "pipnet-mbv2-256-face68-int8.onnx")
    assert int8["precision"] is not None and builtin["precision"] is None


def test_threads_share_one_pipeline(pipeline):
    images = [pipnet.load_image(PHOTOS / f) for f in sorted(RUST_FACES)[:4]]
    serial = [pipeline(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(pipeline, images * 2))
    for got, want in zip(parallel, serial * 2):
        assert_same_faces(got, want)


def test_the_gil_is_released_while_a_folder_is_annotated(tmp_path):
    ticks = 0
    done = threading.Event()

    def count():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    start = time.perf_counter()
    try:
        summary = pipnet.annotate(PHOTOS, tmp_path / "out", threads=1)
    finally:
        done.set()
        counter.join()
    seconds = time.perf_counter() - start
    assert summary["annotated"] == len(RUST_FACES)
    # Held GIL: the counter would stall for the whole run. Released: it ticks throughout
    # (each tick sleeps 1 ms; allow a loaded machine a tenth of the ideal rate).
    assert ticks > 0.1 * seconds * 1000, (ticks, seconds)


def test_annotate_writes_every_photo_then_resumes_and_reports_bad_files(pipeline, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for file in sorted(RUST_FACES)[:3]:
        (photos / file).write_bytes((PHOTOS / file).read_bytes())
    (photos / "truncated.jpg").write_bytes((PHOTOS / sorted(RUST_FACES)[0]).read_bytes()[:300])
    out = tmp_path / "out"
    summary = pipnet.annotate(photos, out)
    assert summary["images"] == 4 and summary["annotated"] == 3
    assert [image for image, _ in summary["failures"]] == ["truncated.jpg"]
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["image"] for f in failures] == ["truncated.jpg"]
    for file in sorted(RUST_FACES)[:3]:
        written = json.loads((out / f"{file}.json").read_text())
        want = pipeline(PHOTOS / file)
        assert len(written["faces"]) == len(want)
        for w, face in zip(written["faces"], want):
            np.testing.assert_allclose(w["landmarks"], face.landmarks, rtol=1e-4)
    again = pipnet.annotate(photos, out)
    assert again["skipped"] == 3 and again["annotated"] == 0


def test_a_pipeline_annotates_with_its_own_settings(pipeline, tmp_path):
    photo = PHOTOS / sorted(RUST_FACES)[0]
    summary = pipeline.annotate(photo, tmp_path, format="csv")
    assert summary["faces"] == len(RUST_FACES[photo.name])
    rows = (tmp_path / f"{photo.name}.csv").read_text().splitlines()
    assert len(rows) == 1 + summary["faces"]  # a header, then a row per face
    # Other settings into the same folder: refused in Python's words, done with force=True.
    refined = pipnet.Pipeline(refine=True)
    with pytest.raises(ValueError, match=r"second pass.*force=True.*another out folder"):
        refined.annotate(photo, tmp_path, format="csv")
    assert refined.annotate(photo, tmp_path, format="csv", force=True)["annotated"] == 1
    one_face = tmp_path / "face.jpg"
    one_face.write_bytes(photo.read_bytes())
    assert pipnet.annotate(one_face, tmp_path / "crops", crops=True)["faces"] == 1
    with pytest.raises(ValueError, match="exclude"):
        pipeline.annotate(photo, tmp_path, crops=True, boxes=tmp_path / "boxes.json")
    with pytest.raises(ValueError, match="format"):
        pipeline.annotate(photo, tmp_path, format="xml")


def test_ray_annotates_a_folder_to_parquet_as_the_rust_api_does(tmp_path):
    """examples/python/ray_annotate.py on a local Ray cluster (two actors of one CPU): a row per
    photo, the landmarks the Rust API finds (and so `pipnet annotate`), a bad file a row with
    its error."""
    import subprocess
    import sys

    import pyarrow.parquet

    photos = tmp_path / "photos"
    photos.mkdir()
    names = sorted(RUST_FACES)[:3]
    for name in names:
        (photos / name).write_bytes((PHOTOS / name).read_bytes())
    (photos / "truncated.jpg").write_bytes((PHOTOS / names[0]).read_bytes()[:3000])
    out = tmp_path / "parquet"
    example = PHOTOS.parent / "python" / "ray_annotate.py"
    done = subprocess.run(
        [sys.executable, str(example), str(photos), str(out), "--actors", "2", "--cpus-per-actor", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["photos"] == 4 and summary["failed"] == 1, summary
    rows = {Path(r["path"]).name: r for r in pyarrow.parquet.read_table(out).to_pylist()}
    assert "truncated" in rows["truncated.jpg"]["error"] and rows["truncated.jpg"]["faces"] == []
    for name in names:
        row, want = rows[name], RUST_FACES[name]
        assert row["error"] is None
        assert len(row["faces"]) == len(want), name
        for face, w in zip(row["faces"], want):
            np.testing.assert_allclose(face["box"], w["box"], rtol=1e-5)
            np.testing.assert_allclose(face["landmarks"], w["landmarks"], rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(face["landmark_scores"], w["landmark_scores"], atol=1e-5)
