"""Batch inference on Ray Data: ``Dataset.map_batches`` with a pool of actors, each holding one
:class:`pipnet.Pipeline`.

>>> import ray, pipnet.ray
>>> photos = ray.data.from_items([{"path": p} for p in pipnet.ray.image_files("photos/")])
>>> rows = photos.map_batches(pipnet.ray.Annotator, batch_size=8, compute=ray.data.ActorPoolStrategy(size=2))
>>> rows.write_parquet("landmarks/")

Each input row names an image by ``path`` (read in the actor as ``pipnet annotate`` reads it:
EXIF orientation applied, any colour type converted), or also carries its pixels in ``image``
(an ``HxWx3`` uint8 array, e.g. from ``ray.data.read_images(..., include_paths=True)``). Each
output row is one image: ``path``, ``width``, ``height``, ``error`` (null, or why the image could
not be annotated: a bad image is a row with its error, never a failed job) and ``faces``, a list
of ``{box, score, presence, landmarks, landmark_scores, pose}`` in image pixels, the fields of
:class:`pipnet.Face`. The rows are Arrow tables with a fixed schema, so they write to Parquet and
JSON as they are.

Importable only where Ray is installed; Ray is not a dependency of ``pipnet``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import ray

import pipnet

__all__ = ["Annotator", "SCHEMA", "image_files"]

_FACE = pa.struct(
    [
        ("box", pa.list_(pa.float32(), 4)),
        ("score", pa.float32()),
        ("presence", pa.float32()),
        ("landmarks", pa.list_(pa.list_(pa.float32(), 2))),
        ("landmark_scores", pa.list_(pa.float32())),
        (
            "pose",
            pa.struct(
                [
                    ("yaw", pa.float32()),
                    ("pitch", pa.float32()),
                    ("roll", pa.float32()),
                    ("rotation", pa.list_(pa.list_(pa.float32(), 3), 3)),
                    ("translation", pa.list_(pa.float32(), 2)),
                    ("scale", pa.float32()),
                    ("residual", pa.float32()),
                ]
            ),
        ),
    ]
)

SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("error", pa.string()),
        ("faces", pa.list_(_FACE)),
    ]
)
"""The rows :class:`Annotator` returns: one per image."""

# The one list of image extensions, the Rust walk's.
_IMAGE_EXTENSIONS = {"." + ext for ext in pipnet._native.IMAGE_EXTENSIONS}


def image_files(folder: "os.PathLike[str] | str") -> list[str]:
    """The image files below ``folder`` (walked recursively; ``pipnet annotate``'s extensions,
    in any case), sorted: the paths to feed an :class:`Annotator`."""
    return sorted(
        str(p) for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_EXTENSIONS
    )


def _actor_cpus() -> Optional[int]:
    """The CPUs Ray gave this actor (or task), at least 1; None outside Ray."""
    if not ray.is_initialized():
        return None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    return max(1, int(round(cpus)))


class Annotator:
    """A callable class for ``Dataset.map_batches``: one :class:`pipnet.Pipeline` per actor,
    opened with these keyword arguments (``model``, ``detector``, ``device``, ``min_face``,
    ``refine``, ``min_presence``, ... as for :class:`pipnet.Pipeline`). ``threads`` defaults to
    the CPUs Ray assigned the actor (``num_cpus``), so actors on one machine do not
    oversubscribe its cores."""

    def __init__(self, **pipeline_options: Any) -> None:
        pipeline_options.setdefault("threads", _actor_cpus())
        self.pipeline = pipnet.Pipeline(**pipeline_options)

    def __call__(self, batch: dict) -> pa.Table:
        paths = [str(p) for p in batch["path"]]
        pixels = batch.get("image")
        rows = [{"path": p, "width": None, "height": None, "error": None, "faces": []} for p in paths]
        images = {}
        for i, (row, path) in enumerate(zip(rows, paths)):
            try:
                image = pipnet.load_image(path) if pixels is None else np.asarray(pixels[i])
            except (pipnet.PipnetError, ValueError, TypeError) as e:
                row["error"] = str(e)
                continue
            row["height"], row["width"] = int(image.shape[0]), int(image.shape[1])
            images[i] = image
        for i, faces in self._detect(images).items():
            if isinstance(faces, Exception):
                rows[i]["error"] = str(faces)
            else:
                rows[i]["faces"] = [_face_row(face) for face in faces]
        return pa.Table.from_pylist(rows, schema=SCHEMA)

    def _detect(self, images: dict) -> dict:
        """Faces of every image, batched across them; if the batch fails, image by image, so
        that one bad image cannot sink its neighbours."""
        try:
            found = self.pipeline.detect_many(list(images.values()))
            return dict(zip(images, found))
        except (pipnet.PipnetError, ValueError, TypeError):
            results: dict = {}
            for i, image in images.items():
                try:
                    results[i] = self.pipeline.detect(image)
                except (pipnet.PipnetError, ValueError, TypeError) as e:
                    results[i] = e
            return results


def _face_row(face: pipnet.Face) -> dict:
    return {
        "box": face.box.tolist(),
        "score": face.score,
        "presence": face.presence,
        "landmarks": face.landmarks.tolist(),
        "landmark_scores": face.landmark_scores.tolist(),
        "pose": None if face.pose is None else {
            "yaw": face.pose.yaw,
            "pitch": face.pose.pitch,
            "roll": face.pose.roll,
            "rotation": face.pose.rotation.tolist(),
            "translation": face.pose.translation.tolist(),
            "scale": face.pose.scale,
            "residual": face.pose.residual,
        },
    }
