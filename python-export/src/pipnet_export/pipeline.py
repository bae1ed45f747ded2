"""The Python reference pipeline: what a user would write with onnxruntime, numpy and Pillow to
annotate known face crops. ``pipnet bench`` runs it on the same graph and crops as the Rust
runtime and reports the throughput ratio.

``python -m pipnet_export.pipeline MODEL CROPS.json [--batch N] [--threads N] [--repeat R]
[--runner onnxruntime|pipnet]`` where CROPS.json is ``[{"image": path, "crops": [[cx, cy, side, angle], ...]}, ...]``; prints one
JSON object: ``{"faces", "seconds", "faces_per_second", "points"}`` (points of the last repeat,
image pixels). ``--runner pipnet`` runs the same crops through the ``pipnet`` Python package
(pipnet's Rust pipeline from Python) instead, when it is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

from .contract import parse_metadata


def decode_vectorised(cls, off_x, off_y, nb_x, nb_y, neighbors) -> np.ndarray:
    """The contract's decode + merge as a numpy user would write it (no Python loops over
    landmarks): merged crop-normalised points ``[N, L, 2]``. Equal to
    :func:`pipnet_export.reference.decode` (tested)."""
    n, landmarks, grid, _ = cls.shape
    count = neighbors.shape[1]
    best = cls.reshape(n, landmarks, -1).argmax(axis=2)  # [N, L]
    rows, cols = best // grid, best % grid
    faces = np.arange(n)[:, None]
    lms = np.arange(landmarks)[None, :]
    own_x = (cols + off_x[faces, lms, rows, cols]) / grid
    own_y = (rows + off_y[faces, lms, rows, cols]) / grid
    channels = lms[..., None] * count + np.arange(count)  # [1, L, C]
    r, c = rows[..., None], cols[..., None]
    vote_x = (c + nb_x[faces[..., None], channels, r, c]) / grid  # [N, L, C]
    vote_y = (r + nb_y[faces[..., None], channels, r, c]) / grid
    sum_x, sum_y = own_x.copy(), own_y.copy()
    votes = np.ones(landmarks)
    targets = neighbors.ravel()
    for f in range(n):
        np.add.at(sum_x[f], targets, vote_x[f].ravel())
        np.add.at(sum_y[f], targets, vote_y[f].ravel())
    np.add.at(votes, targets, 1.0)
    return np.stack([sum_x / votes, sum_y / votes], axis=2)


class ReferencePipeline:
    """An onnxruntime session on a contract graph, with Pillow crops and numpy decoding."""

    def __init__(self, model: str, threads: int = 0):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.meta = parse_metadata(self.session.get_modelmeta().custom_metadata_map)

    def crop(self, image: Image.Image, cx: float, cy: float, side: float, angle: float) -> np.ndarray:
        """The crop as a normalised ``[3, S, S]`` tensor, through Pillow's affine transform
        (bilinear). Pillow maps output pixel centres ``(u + 0.5, v + 0.5)`` through the affine
        map to input coordinates whose pixel centres are at ``i + 0.5``."""
        s = self.meta["input_size"]
        scale = side / s
        cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
        # input = centre + R * scale * (out - S/2), in pixel-centre units shifted by 0.5.
        a, b = cos, -sin
        d, e = sin, cos
        c = cx + 0.5 - (a + b) * s / 2
        f = cy + 0.5 - (d + e) * s / 2
        patch = image.transform((s, s), Image.AFFINE, (a, b, c, d, e, f), Image.BILINEAR)
        rgb = np.asarray(patch, dtype=np.float32) / 255.0
        return ((rgb - self.meta["mean"]) / self.meta["std"]).transpose(2, 0, 1)

    def run(self, items: list[dict], batch: int) -> list[np.ndarray]:
        """Landmarks (image pixels, ``[L, 2]``) of every crop, in order."""
        tensors, crops = [], []
        for item in items:
            image = ImageOps.exif_transpose(Image.open(item["image"])).convert("RGB")
            for crop in item["crops"]:
                tensors.append(self.crop(image, *crop))
                crops.append(crop)
        results = []
        for start in range(0, len(tensors), batch):
            x = np.stack(tensors[start : start + batch])
            cls, off_x, off_y, nb_x, nb_y = self.session.run(
                ["cls", "off_x", "off_y", "nb_x", "nb_y"], {"image": x}
            )
            points = decode_vectorised(cls, off_x, off_y, nb_x, nb_y, self.meta["neighbors"])
            for p, (cx, cy, side, angle) in zip(points, crops[start : start + batch]):
                rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
                results.append(np.array([cx, cy]) + (side * (p - 0.5)) @ rot.T)
        return results


class PackagePipeline:
    """The same crops through the ``pipnet`` package: its image loader and ``Pipeline.crops``."""

    def __init__(self, model: str, threads: int = 0, batch: int = 16):
        import pipnet

        self.pipnet = pipnet
        self.pipeline = pipnet.Pipeline(model, threads=threads or None, batch=batch)

    def run(self, items: list[dict], batch: int) -> list[np.ndarray]:
        results = []
        for item in items:
            image = self.pipnet.load_image(item["image"])
            results.extend(f.landmarks for f in self.pipeline.crops(image, item["crops"]))
        return results


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipnet_export.pipeline")
    parser.add_argument("model")
    parser.add_argument("crops")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runner", choices=["onnxruntime", "pipnet"], default="onnxruntime")
    args = parser.parse_args(argv)
    with open(args.crops) as f:
        items = json.load(f)
    if args.runner == "pipnet":
        pipeline = PackagePipeline(args.model, args.threads, args.batch)
    else:
        pipeline = ReferencePipeline(args.model, args.threads)
    pipeline.run(items[:1], args.batch)  # warm-up
    times = []
    for _ in range(max(1, args.repeat)):
        start = time.perf_counter()
        points = pipeline.run(items, args.batch)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    print(json.dumps({
        "faces": len(points),
        "seconds": seconds,
        "faces_per_second": len(points) / seconds if seconds > 0 else 0.0,
        "points": [p.tolist() for p in points],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
