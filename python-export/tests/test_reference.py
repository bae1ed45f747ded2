"""numpy-only checks of the reference (run with pytest; CI covers the reference through
tests/reference.rs, which compares it with the Rust runtime)."""

import numpy as np
import pytest

from pipnet_export.contract import mean_face, metadata, neighbors, parse_metadata
from pipnet_export.reference import crop_to_tensor, decode


def test_decode_places_a_landmark_and_merges_votes():
    grid, landmarks, count = 4, 3, 1
    cls = np.zeros((1, landmarks, grid, grid))
    cls[0, :, 1, 2] = 1.0  # every landmark wins cell (row 1, column 2)
    off = np.full((1, landmarks, grid, grid), 0.5)
    nb = np.full((1, landmarks * count, grid, grid), 0.5)
    nb[0, 0, 1, 2] = 1.5  # landmark 0 votes for its neighbour 1 one cell to the right
    nbs = np.array([[1], [0], [0]])
    points, scores = decode(cls, off, off, nb, nb, nbs)
    assert scores[0].tolist() == [1.0, 1.0, 1.0]
    # Landmark 1: own (2.5/4, 1.5/4) and landmark 0's vote (3.5/4, 2.5/4) -> their mean.
    assert points[0, 1].tolist() == pytest.approx([0.75, 0.5])
    # Landmark 2 gets no votes: its own prediction.
    assert points[0, 2].tolist() == pytest.approx([2.5 / 4, 1.5 / 4])


def test_neighbors_and_metadata_round_trip():
    rng = np.random.default_rng(1)
    faces = rng.uniform(0.2, 0.8, size=(5, 68, 2))
    face = mean_face(faces)
    nb = neighbors(face, 10)
    assert nb.shape == (68, 10) and not (nb == np.arange(68)[:, None]).any()
    meta = metadata(scheme="300w-68", meanface=face, neighbor_index=nb, input_size=256, stride=32)
    back = parse_metadata(meta)
    assert (back["neighbors"] == nb).all() and back["crop_scale"] == 1.1


def test_crop_of_the_whole_image_is_the_image():
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    t = crop_to_tensor(image, (1.5, 1.5), 4.0, 0.0, 4, (0, 0, 0), (1, 1, 1))
    assert np.allclose(t.transpose(1, 2, 0) * 255, image)


def test_vectorised_decode_of_the_pipeline_equals_the_reference():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("PIL")
    from pipnet_export.pipeline import decode_vectorised

    rng = np.random.default_rng(3)
    n, landmarks, count, grid = 3, 68, 10, 8
    maps = [rng.normal(size=(n, landmarks, grid, grid)) for _ in range(3)]
    nbs = [rng.normal(size=(n, landmarks * count, grid, grid)) for _ in range(2)]
    face = rng.uniform(0.2, 0.8, (landmarks, 2))
    index = neighbors(face, count)
    want, _ = decode(*maps, *nbs, index)
    assert np.allclose(decode_vectorised(*maps, *nbs, index), want, atol=1e-12)
