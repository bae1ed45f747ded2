"""numpy reference of the contract, written from ``docs/model-contract.md`` alone: crop sampling and
normalisation, PIP decoding and the neighbour-vote merge. It is the oracle the Rust runtime is
tested against (``tests/reference.rs``), so it favours plain loops over speed where the order of
operations matters.

``python -m pipnet_export.reference decode IN.json OUT.json`` decodes raw outputs given as JSON
(``{"grid", "neighbors", "cls", "off_x", "off_y", "nb_x", "nb_y"}`` as nested lists) and writes
``{"points", "scores"}``; ``... crop IN.json OUT.json`` samples crops
(``{"image": HxWx3 uint8 lists, "crops": [[cx, cy, side, angle]], "size", "mean", "std"}``).
"""

from __future__ import annotations

import json
import sys

import numpy as np


def crop_to_tensor(image, center, side, angle, size, mean, std) -> np.ndarray:
    """Samples the square crop (centre and side in image pixels, rotation in radians) of an
    ``H x W x 3`` uint8 image into a ``[3, size, size]`` float32 tensor, bilinearly, with
    ``(v / 255 - mean) / std``. Image pixel ``i`` has its centre at ``i``; crop pixel ``u`` has
    its centre at ``(u + 0.5) / size`` of the crop; pixels outside the image read as black."""
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape[:2]
    t = (np.arange(size) + 0.5) / size - 0.5
    u, v = np.meshgrid(t, t)  # u along x (columns), v along y (rows)
    cos, sin = np.cos(angle), np.sin(angle)
    x = center[0] + side * (cos * u - sin * v)
    y = center[1] + side * (sin * u + cos * v)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)

    def pixel(px, py):
        inside = (px >= 0) & (py >= 0) & (px < w) & (py < h)
        values = img[np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)]
        return values * inside[..., None]

    top = pixel(x0, y0) * (1 - fx)[..., None] + pixel(x0 + 1, y0) * fx[..., None]
    bottom = pixel(x0, y0 + 1) * (1 - fx)[..., None] + pixel(x0 + 1, y0 + 1) * fx[..., None]
    rgb = top * (1 - fy)[..., None] + bottom * fy[..., None]
    out = (rgb / 255.0 - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return out.transpose(2, 0, 1).astype(np.float32)


def reverse_index(neighbors: np.ndarray) -> list[list[tuple[int, int]]]:
    """For each landmark j, the (l, k) pairs with ``neighbors[l][k] == j``, in order of l."""
    voters: list[list[tuple[int, int]]] = [[] for _ in range(len(neighbors))]
    for l, row in enumerate(neighbors):
        for k, j in enumerate(row):
            voters[int(j)].append((l, k))
    return voters


def decode(cls, off_x, off_y, nb_x, nb_y, neighbors) -> tuple[np.ndarray, np.ndarray]:
    """Decodes raw outputs (``[N, L, G, G]``, neighbours ``[N, L*C, G, G]``) into merged
    crop-normalised points ``[N, L, 2]`` and scores ``[N, L]`` (float64)."""
    cls = np.asarray(cls, np.float64)
    n, landmarks, grid, _ = cls.shape
    nb = np.asarray(neighbors, np.int64)
    count = nb.shape[1]
    off_x, off_y = np.asarray(off_x, np.float64), np.asarray(off_y, np.float64)
    nb_x, nb_y = np.asarray(nb_x, np.float64), np.asarray(nb_y, np.float64)
    voters = reverse_index(nb)
    points = np.zeros((n, landmarks, 2))
    scores = np.zeros((n, landmarks))
    for f in range(n):
        flat = cls[f].reshape(landmarks, -1)
        best = flat.argmax(axis=1)  # first maximum on ties
        rows, cols = best // grid, best % grid
        scores[f] = flat[np.arange(landmarks), best]
        own_x = (cols + off_x[f, np.arange(landmarks), rows, cols]) / grid
        own_y = (rows + off_y[f, np.arange(landmarks), rows, cols]) / grid
        for j in range(landmarks):
            xs, ys = [own_x[j]], [own_y[j]]
            for l, k in voters[j]:
                r, c = rows[l], cols[l]
                xs.append((c + nb_x[f, l * count + k, r, c]) / grid)
                ys.append((r + nb_y[f, l * count + k, r, c]) / grid)
            points[f, j] = (np.mean(xs), np.mean(ys))
    return points, scores


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("decode", "crop"):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        data = json.load(f)
    if argv[0] == "decode":
        shape = lambda key: np.asarray(data[key], np.float32)  # noqa: E731
        points, scores = decode(
            shape("cls"), shape("off_x"), shape("off_y"), shape("nb_x"), shape("nb_y"),
            np.asarray(data["neighbors"], np.int64),
        )
        out = {"points": points.tolist(), "scores": scores.tolist()}
    else:
        image = np.asarray(data["image"], np.uint8)
        tensors = [
            crop_to_tensor(image, (cx, cy), side, angle, data["size"], data["mean"], data["std"])
            for cx, cy, side, angle in data["crops"]
        ]
        out = {"tensors": [t.tolist() for t in tensors]}
    with open(argv[2], "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
