"""INT8 twin of a contract graph: ONNX Runtime's static quantization (QDQ format, per-channel
int8 weights, uint8 activations: the U8S8 kernels ONNX Runtime runs fastest on x86; int8
activations measured 20% slower than float32 here), calibrated on face crops cut from training faces by the model's
own crop rule (or the detector's crops), with the contract metadata carried over and
``pipnet.precision = int8`` added.

Activation ranges are the 99.99th percentile of each tensor's values over the calibration
faces (``--calibration percentile``, ``--percentile``): on the validation split this halved
what INT8 costs the landmarks against the observed extremes (``--calibration minmax``, the
earlier recipe; ``docs/experiments.md``). The faces are calibrated in chunks, so the histograms of
300 faces at 256 px fit in memory.

``python -m pipnet_export.quantize MODEL.onnx DATA --out MODEL.int8.onnx [--faces 300]
[--split 0.1:1] [--crops PER_FACE.csv] [--calibration percentile|minmax] [--percentile 99.99]``
takes the calibration faces from ``DATA`` (images
with iBUG ``.pts`` files beside them) outside the validation split ``FRACTION:SEED`` of a
training config (the same rule as ``pipnet eval --split``), so the faces it is measured on stay
unseen. By default each face is cut from its true landmark box; ``--crops`` takes the crops of
``pipnet eval DATA --crops detector --per-face PER_FACE.csv`` instead, the ones ``annotate``
feeds the model in its first pass (faces the detector missed are left out).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .reference import crop_to_tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def is_validation(name: str, fraction: float, seed: int) -> bool:
    """``pipnet_infer::labeled::split_validation``: FNV-1a over the seed (8 bytes, little
    endian) and the photo's name (the face name without its ``_<k>`` suffix)."""
    photo = name.rsplit("_", 1)[0] if "_" in name else name
    h = 0xCBF29CE484222325
    for b in seed.to_bytes(8, "little") + photo.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h / 0xFFFFFFFFFFFFFFFF < fraction


def read_pts(path: Path) -> np.ndarray:
    """The points of an iBUG ``.pts`` file, 0-based (the file's values minus 1)."""
    lines = path.read_text().split("{", 1)[1].split("}", 1)[0].split()
    return np.asarray(lines, dtype=np.float64).reshape(-1, 2) - 1.0


def parse_crop_rule(text: str) -> tuple[float, float, float]:
    """``pipnet.crop`` -> (scale, shift_x, shift_y)."""
    values = dict(part.split("=", 1) for part in text.split(",") if part.strip())
    return (
        float(values["landmark_box_scale"]),
        float(values.get("shift_x", 0.0)),
        float(values.get("shift_y", 0.0)),
    )


# A face's crop in image pixels: (centre x, centre y, side, angle in radians).
Crop = tuple[float, float, float, float]


def read_crops(path: Path) -> dict[str, Crop]:
    """Face name -> crop, from the CSV of ``pipnet eval --per-face`` (columns face, nme, crop_x,
    crop_y, crop_side, crop_angle)."""
    import csv

    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = ("crop_x", "crop_y", "crop_side", "crop_angle")
    if not rows or any(c not in rows[0] for c in ("face", *columns)):
        raise SystemExit(f"{path}: not a `pipnet eval --per-face` CSV with crop columns (face, {', '.join(columns)})")
    return {row["face"]: tuple(float(row[c]) for c in columns) for row in rows}


def training_faces(
    data: Path, fraction: float, seed: int, count: int, only: set[str] | None = None
) -> list[tuple[Path, Path]]:
    """(image, .pts) pairs outside the validation split (and among ``only`` when given), evenly
    spread over the sorted names."""
    pairs = []
    for pts in sorted(data.glob("*.pts")):
        image = next((pts.with_suffix(s) for s in IMAGE_SUFFIXES if pts.with_suffix(s).is_file()), None)
        if image is None or is_validation(pts.stem, fraction, seed):
            continue
        if only is None or pts.stem in only:
            pairs.append((image, pts))
    if not pairs:
        what = "training faces" if only is None else "training faces with a crop in --crops"
        raise SystemExit(f"{data}: no {what} (images with .pts files beside them, outside the validation split)")
    step = max(1, len(pairs) // count)
    return pairs[::step][:count]


def true_box_crop(meta: dict[str, str], pts_path: Path) -> Crop:
    """The model's crop rule applied to the tight box around the face's true landmarks."""
    scale, shift_x, shift_y = parse_crop_rule(meta["pipnet.crop"])
    points = read_pts(pts_path)
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    side = scale * max(x1 - x0, y1 - y0)
    return ((x0 + x1) / 2 + shift_x * side, (y0 + y1) / 2 + shift_y * side, side, 0.0)


def calibration_crops(
    meta: dict[str, str], faces: list[tuple[Path, Path]], given: dict[str, Crop] | None = None
) -> list[np.ndarray]:
    """Each face cut as the model sees it: from ``given[name]`` when given, else from its true
    landmark box by the model's crop rule."""
    from PIL import Image

    size = int(meta["pipnet.input_size"])
    mean = [float(v) for v in meta["pipnet.mean"].split(",")]
    std = [float(v) for v in meta["pipnet.std"].split(",")]
    crops = []
    for image_path, pts_path in faces:
        cx, cy, side, angle = given[pts_path.stem] if given is not None else true_box_crop(meta, pts_path)
        image = np.asarray(Image.open(image_path).convert("RGB"))
        crops.append(crop_to_tensor(image, (cx, cy), side, angle, size, mean, std)[None])
    return crops


# Faces whose activations are held at once while calibrating (ONNX Runtime keeps every
# intermediate output of a chunk: 300 faces at 256 px outgrow 24 GB at once).
CALIBRATION_CHUNK = 50

CALIBRATIONS = ("percentile", "minmax")


def quantize(
    model: Path,
    out: Path,
    crops: list[np.ndarray],
    calibration: str = "percentile",
    percentile: float = 99.99,
) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration not in CALIBRATIONS:
        raise SystemExit(f"calibration {calibration!r} is not one of {', '.join(CALIBRATIONS)}")
    if not 0.0 < percentile <= 100.0:
        raise SystemExit(f"percentile {percentile} is not in (0, 100]")
    if not crops:
        raise SystemExit("no calibration faces")

    class Crops(CalibrationDataReader):
        """The crops, one batch each, a chunk at a time (``set_range``)."""

        def __init__(self):
            self.set_range(0, len(crops))

        def __len__(self):
            return len(crops)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.batches = iter(crops[start_index:end_index])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    # ONNX Runtime walks the faces in equal chunks that must divide their number.
    chunk = max(d for d in range(1, min(CALIBRATION_CHUNK, len(crops)) + 1) if len(crops) % d == 0)
    # The five heads' outputs stay float: the decoder reads them as the contract says.
    options = {"WeightSymmetric": True, "CalibStridedMinMax": chunk}
    if calibration == "percentile":
        method = CalibrationMethod.Percentile
        options["CalibPercentile"] = percentile
    else:
        method = CalibrationMethod.MinMax

    source = onnx.load(str(model))
    metadata = {p.key: p.value for p in source.metadata_props}
    if "pipnet.format" not in metadata:
        raise SystemExit(f"{model}: not a pipnet contract graph (no pipnet.* metadata)")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Our graphs have static shapes but the batch: plain ONNX shape inference suffices.
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(quantized),
            Crops(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=method,
            extra_options=options,
        )
        graph = onnx.load(str(quantized))
    del graph.metadata_props[:]
    for key, value in {**metadata, "pipnet.precision": "int8"}.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(graph, full_check=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.tmp")
    onnx.save(graph, str(partial))
    os.replace(partial, out)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipnet_export.quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path, help="labeled faces: images with .pts files beside them")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--faces", type=int, default=300, help="calibration faces (default 300)")
    parser.add_argument("--split", default="0.1:1", help="validation split FRACTION:SEED to leave out")
    parser.add_argument(
        "--crops",
        type=Path,
        help="per-face crops from `pipnet eval DATA --crops detector --per-face FILE` (default: true landmark boxes)",
    )
    parser.add_argument(
        "--calibration",
        choices=CALIBRATIONS,
        default="percentile",
        help="activation ranges: a percentile of the values (default) or their extremes",
    )
    parser.add_argument(
        "--percentile", type=float, default=99.99, help="with --calibration percentile (default 99.99)"
    )
    args = parser.parse_args(argv)
    fraction, seed = args.split.split(":")
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(args.model), load_external_data=False).metadata_props}
    if "pipnet.format" not in meta:
        print(f"{args.model}: not a pipnet contract graph (no pipnet.* metadata)", file=sys.stderr)
        return 2
    given = read_crops(args.crops) if args.crops is not None else None
    faces = training_faces(args.data, float(fraction), int(seed), args.faces, None if given is None else set(given))
    quantize(args.model, args.out, calibration_crops(meta, faces, given), args.calibration, args.percentile)
    source = "true landmark boxes" if given is None else f"crops from {args.crops}"
    ranges = f"{args.percentile}th percentile" if args.calibration == "percentile" else "min-max"
    print(
        f"{args.out}: int8 (QDQ, per-channel, {ranges} activation ranges), calibrated on "
        f"{len(faces)} training faces ({source})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
