"""Facial landmarks with PIPNet, run by pipnet's Rust pipeline.

>>> import pipnet
>>> faces = pipnet.Pipeline()(pipnet.load_image("photo.jpg"))
>>> faces[0].landmarks.shape
(68, 2)

Images are numpy ``uint8`` arrays: ``HxWx3`` RGB, ``HxW`` gray or ``HxWx4`` RGBA (a path is read
the way ``pipnet annotate`` reads it, EXIF orientation applied). OpenCV's frames are BGR: pass
``channels="bgr"``. Landmarks are ``float32`` image
pixels (0-based pixel centres). ONNX Runtime is the library the ``onnxruntime`` wheel installed,
unless ``ORT_DYLIB_PATH`` names another one.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import time as _time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _native
from ._native import PipnetError, __version__

__all__ = [
    "Chip",
    "Face",
    "HeadPose",
    "Pipeline",
    "TrackedFace",
    "Tracker",
    "PipnetError",
    "annotate",
    "info",
    "load_image",
    "__version__",
]


def __dir__() -> list:
    """The public names only (PEP 562): not the modules and typing helpers used inside."""
    return sorted(__all__)


PathLike = Union[str, "os.PathLike[str]"]
_RUN_OPTIONS = ("format", "preview", "pose_axes", "crops", "boxes", "force", "chips")


@functools.lru_cache(maxsize=None)
def _onnxruntime_library() -> Optional[str]:
    """The shared library of the installed ``onnxruntime`` package; None when ORT_DYLIB_PATH
    is set (pipnet then loads that file)."""
    if os.environ.get("ORT_DYLIB_PATH"):
        return None
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise PipnetError(
            "the onnxruntime package is not installed: `pip install onnxruntime` "
            "(pipnet runs its graphs with that package's library)"
        )
    capi = Path(next(iter(spec.submodule_search_locations))) / "capi"
    found = sorted(capi.glob("libonnxruntime.so*")) + sorted(capi.glob("libonnxruntime*.dylib"))
    found += sorted(capi.glob("onnxruntime.dll"))
    if not found:
        raise PipnetError(f"no ONNX Runtime library in {capi}; reinstall onnxruntime")
    return str(found[0])


def _path(path: Optional[PathLike]) -> Optional[str]:
    return None if path is None else os.fspath(path)


# eq=False: numpy fields have no single truth value, so `face == other` would raise.
@dataclasses.dataclass(frozen=True, eq=False)
class Face:
    """One face: its box and score (the detector's; for faces from given boxes or crops, the
    bounds of the last crop the model saw, and 1.0) and its landmarks in image pixels."""

    box: np.ndarray
    """``(4,)`` float32: x0, y0, x1, y1."""
    score: float
    landmarks: np.ndarray
    """``(L, 2)`` float32: x, y per landmark, in the model's scheme order (300-W's 68 points)."""
    landmark_scores: np.ndarray
    """``(L,)`` float32: the score map's value at each landmark's cell (trained towards 1 there,
    0 elsewhere; not normalised, it can exceed 1)."""
    presence: float
    """The mean landmark score: low for false detections (``Pipeline(min_presence=...)``)."""
    pose: Optional["HeadPose"]
    """The head pose fitted to ``landmarks``; ``None`` where the scheme has no 3-D mean face
    (WFLW's 98 points)."""

    @classmethod
    def _from_native(cls, native: Any) -> "Face":
        pose = native.pose
        return cls(
            np.asarray(native.box, dtype=np.float32),
            float(native.score),
            native.landmarks,
            native.landmark_scores,
            float(native.presence),
            None if pose is None else HeadPose._from_native(pose),
        )

    def chip(self, image: Any, spec: str = "arcface112", *, channels: str = "rgb") -> "Chip":
        """The face cut out of ``image`` upright: ``spec`` is ``"arcface112"`` (InsightFace's
        five-point template, 112x112) or ``"SIZE[:PADDING]"`` (eyes level, face centred)."""
        pixels, to_chip, to_image, five = _native.face_chip(
            _image(image, channels), self.landmarks.tolist(), spec
        )
        if channels == "bgr":
            pixels = np.ascontiguousarray(pixels[..., ::-1])
        return Chip(pixels, np.array(to_chip), np.array(to_image), np.array(five, np.float32))


@dataclasses.dataclass(frozen=True, eq=False)
class HeadPose:
    """A head pose from the landmarks: a 3-D mean face (learned from 300-W's 2-D landmarks)
    fitted with a weak-perspective camera. Camera axes are OpenCV's (x right, y down, z away
    from the camera) and ``rotation = Rz(roll) @ Ry(yaw) @ Rx(pitch)``: roll > 0 tilts the head
    clockwise in the picture, yaw > 0 turns the nose toward the image's left, pitch > 0 turns it
    down. Yaw and pitch are relative to the mean pose of 300-W's training photos."""

    yaw: float
    """Degrees."""
    pitch: float
    """Degrees."""
    roll: float
    """Degrees."""
    rotation: np.ndarray
    """``(3, 3)`` float32, mean-face coordinates -> camera coordinates."""
    translation: np.ndarray
    """``(2,)`` float32 image pixels: where the mean face's origin (its centroid) lands."""
    scale: float
    """Image pixels per mean-face unit (the outer-eye-corner distance)."""
    residual: float
    """RMS distance of the landmarks from the fitted mean face, over ``scale``: 0.033-0.082 on
    90% of real faces; far above, do not trust the pose."""

    @classmethod
    def _from_native(cls, native: dict) -> "HeadPose":
        return cls(
            float(native["yaw"]),
            float(native["pitch"]),
            float(native["roll"]),
            np.asarray(native["rotation"], dtype=np.float32),
            np.asarray(native["translation"], dtype=np.float32),
            float(native["scale"]),
            float(native["residual"]),
        )

    def project(self, points: Any) -> np.ndarray:
        """Image pixels of ``(N, 3)`` points in mean-face units, e.g. ``[[0, 0, 0], [1, 0, 0]]``
        for the origin and the end of the x axis (to draw the axes)."""
        points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        return self.scale * points @ self.rotation[:2].T + self.translation


@dataclasses.dataclass(frozen=True, eq=False)
class Chip:
    """An aligned face chip and how it maps to the image it came from."""

    image: np.ndarray
    """``(S, S, 3)`` uint8, in the colour order of the image it was cut from."""
    to_chip: np.ndarray
    """``(2, 3)`` float64 similarity, image pixels -> chip pixels (``cv2.warpAffine``'s layout)."""
    to_image: np.ndarray
    """``(2, 3)`` float64, chip pixels -> image pixels (its inverse)."""
    five_points: np.ndarray
    """``(5, 2)`` float32 image pixels: eye centres, nose tip, mouth corners."""


def load_image(path: PathLike) -> np.ndarray:
    """Reads an image file as ``annotate`` does (EXIF orientation applied, gray, 16-bit and
    palette images converted) into an ``HxWx3`` uint8 RGB array."""
    return _native.load_image(os.fspath(path))


def _rows(values: Any, name: str, columns: str) -> list:
    array = np.asarray(values, dtype=np.float32)
    if array.size == 0:
        return []
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must be an N x 4 array of [{columns}], got shape {array.shape}")
    return array.tolist()


_CHANNELS = ("rgb", "bgr")


def _image(image: Any, channels: str = "rgb") -> Any:
    """A path read with :func:`load_image`, or an array with its colour order made RGB(A)."""
    if channels not in _CHANNELS:
        raise ValueError(f"channels must be 'rgb' or 'bgr' (OpenCV's order), got {channels!r}")
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if channels == "bgr":
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ValueError(
                f"channels='bgr' needs an HxWx3 (BGR) or HxWx4 (BGRA) array, got shape {array.shape}"
            )
        order = [2, 1, 0, 3][: array.shape[2]]
        return np.ascontiguousarray(array[..., order])
    return image


def _count(value: Any, name: str, minimum: int = 1) -> Optional[int]:
    """``None``, or a whole number >= ``minimum`` (a clear error instead of an overflow deep
    down)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a whole number >= {minimum} or None, got {value!r}")
    if not minimum <= value <= 2**31 - 1:
        raise ValueError(f"{name} must be a whole number >= {minimum} or None, got {value}")
    return int(value)


class Pipeline:
    """A landmark model with its face detector, loaded once. Calls from several threads are
    safe (they take turns on the model) and release the GIL while they run.

    ``model`` and ``detector`` are ONNX graph files (None: the built-in ones); ``device`` is
    ``"cpu"``, ``"cuda"`` or ``"auto"``; ``threads`` are ONNX Runtime's intra-op threads (None:
    every core) and ``batch`` the faces per run (None: 16), each a whole number >= 1; ``min_face``
    the smallest face searched for in pixels (None: 40); ``refine`` is which faces get a second
    landmark pass on a crop made from their first landmarks: None (the default, as in
    ``pipnet annotate``) those whose first pass says the crop was off or the face is unsure,
    True every face, False none; ``flip`` averages each crop
    with its mirror image (twice the landmark work); detected faces whose presence is under
    ``min_presence`` are dropped (None: the CLI's default; 0 keeps all).
    """

    def __init__(
        self,
        model: Optional[PathLike] = None,
        *,
        device: str = "cpu",
        threads: Optional[int] = None,
        batch: Optional[int] = None,
        min_face: Optional[float] = None,
        refine: Optional[bool] = None,
        flip: bool = False,
        detector: Optional[PathLike] = None,
        min_presence: Optional[float] = None,
    ) -> None:
        self._native = _native.Pipeline(
            model=_path(model),
            device=device,
            threads=_count(threads, "threads"),
            batch=_count(batch, "batch"),
            min_face=min_face,
            refine=refine,
            flip=flip,
            detector=_path(detector),
            ort_library=_onnxruntime_library(),
            min_presence=min_presence,
        )

    def __call__(self, image: Any, *, channels: str = "rgb") -> list[Face]:
        """Same as :meth:`detect`."""
        return self.detect(image, channels=channels)

    def detect(self, image: Any, *, channels: str = "rgb") -> list[Face]:
        """Every face the detector finds in ``image`` (an array or a path), with landmarks.
        ``channels="bgr"`` for BGR(A) arrays such as OpenCV's."""
        faces = self._native.detect(_image(image, channels))
        return [Face._from_native(f) for f in faces]

    def detect_many(self, images: Sequence[Any], *, channels: str = "rgb") -> list[list[Face]]:
        """:meth:`detect` on several images in one call: their landmark passes run in batches
        across the images (as ``annotate`` runs a folder), faster than one call each. One bad
        image fails the call; check or load them first (:func:`load_image`)."""
        found = self._native.detect_many([_image(image, channels) for image in images])
        return [[Face._from_native(f) for f in faces] for faces in found]

    def landmarks(self, image: Any, boxes: Any, *, channels: str = "rgb") -> list[Face]:
        """Landmarks for known faces: ``boxes`` is ``N x 4`` tight landmark boxes
        ``[x0, y0, x1, y1]`` in pixels (the 300-W protocol), one face per box, in order."""
        rows = _rows(boxes, "boxes", "x0, y0, x1, y1")
        faces = self._native.landmarks(_image(image, channels), rows)
        return [Face._from_native(f) for f in faces]

    def crops(self, image: Any, crops: Any, *, channels: str = "rgb") -> list[Face]:
        """Landmarks for the model's input windows themselves: ``crops`` is ``N x 4``
        ``[cx, cy, side, angle]`` squares (pixels, radians), run with no crop rule and no
        refinement pass (for callers with their own face alignment)."""
        rows = _rows(crops, "crops", "cx, cy, side, angle")
        faces = self._native.crops(_image(image, channels), rows)
        return [Face._from_native(f) for f in faces]

    def annotate(
        self,
        inputs: Union[PathLike, Sequence[PathLike]],
        out: PathLike,
        *,
        format: str = "json",
        preview: bool = False,
        pose_axes: bool = False,
        crops: bool = False,
        boxes: Optional[PathLike] = None,
        force: bool = False,
        chips: Optional[str] = None,
    ) -> dict:
        """``pipnet annotate`` with this pipeline: image files and folders (walked recursively)
        into ``out``, one file per image (``json``, ``csv`` or ``pts``; ``preview`` adds JPEGs
        with the landmarks drawn, and each face's head-pose axes with ``pose_axes``), written
        atomically; a rerun skips images already done
        (``force`` redoes them). ``crops``: every image is one face crop; ``boxes``: a JSON file
        of tight landmark boxes per image (as ``--boxes``). Unreadable images are listed in
        ``out/failures.jsonl`` and in the summary returned: ``{"images", "annotated",
        "skipped", "faces", "failures": [(image, error), ...]}``."""
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        return self._native.annotate(
            [os.fspath(p) for p in inputs],
            os.fspath(out),
            format=format,
            preview=preview,
            pose_axes=pose_axes,
            crops=crops,
            boxes=_path(boxes),
            force=force,
            chips=chips,
        )

    @property
    def info(self) -> dict:
        """The landmark model's metadata (the PIPNet contract keys, plus num_landmarks, grid
        and the execution provider its session uses)."""
        return self._native.info()


@dataclasses.dataclass(frozen=True, eq=False)
class TrackedFace:
    """One face on one video frame: its track ``id`` (stable while the face is followed),
    ``box``, ``score`` (the detector's on frames it ran, else 1.0), ``landmarks`` (smoothed, when
    the tracker smooths), ``raw_landmarks`` (as measured), ``landmark_scores`` and ``presence``."""

    id: int
    box: np.ndarray
    score: float
    landmarks: np.ndarray
    raw_landmarks: np.ndarray
    landmark_scores: np.ndarray
    presence: float

    @classmethod
    def _from_native(cls, native: Any) -> "TrackedFace":
        face = Face._from_native(native.face)
        return cls(
            int(native.id),
            face.box,
            face.score,
            face.landmarks,
            native.raw_landmarks,
            face.landmark_scores,
            face.presence,
        )


class Tracker:
    """Landmarks on video: call it on successive frames; faces keep their ``id`` while they are
    followed. A held face costs one landmark pass and no detection; the detector runs every
    ``detect_every`` frames and while a face is lost; a face unseen for more than ``max_missed``
    frames gets a new id. Points go through a One Euro filter (``smooth``, ``min_cutoff`` Hz,
    ``beta``). The other options are :class:`Pipeline`'s. The GIL is released while it runs.

    >>> tracker = pipnet.Tracker()
    >>> for frame in frames:                       # e.g. OpenCV: cap.read() -> BGR
    ...     for face in tracker(frame, channels="bgr"):
    ...         print(face.id, face.landmarks[30])
    """

    def __init__(
        self,
        model: Optional[PathLike] = None,
        *,
        device: str = "cpu",
        threads: Optional[int] = None,
        min_face: Optional[float] = None,
        min_presence: Optional[float] = None,
        detector: Optional[PathLike] = None,
        detect_every: int = 10,
        max_missed: int = 5,
        smooth: bool = True,
        min_cutoff: Optional[float] = None,
        beta: Optional[float] = None,
    ) -> None:
        self._native = _native.Tracker(
            model=_path(model),
            device=device,
            threads=_count(threads, "threads"),
            min_face=min_face,
            min_presence=min_presence,
            detector=_path(detector),
            ort_library=_onnxruntime_library(),
            detect_every=_count(detect_every, "detect_every"),
            max_missed=_count(max_missed, "max_missed", minimum=0),
            smooth=smooth,
            min_cutoff=min_cutoff,
            beta=beta,
        )

    def __call__(self, frame: Any, time: Optional[float] = None, *, channels: str = "rgb") -> list:
        """The faces of the next frame. ``time``: the frame's time in seconds (None: now, for a
        live camera); it must grow from frame to frame."""
        when = _time.monotonic() if time is None else float(time)
        faces = self._native.track(_image(frame, channels), when)
        return [TrackedFace._from_native(f) for f in faces]

    def reset(self) -> None:
        """Forgets every face (a new video); ids go on counting."""
        self._native.reset()


def info(model: Optional[PathLike] = None) -> dict:
    """The metadata of a landmark model file (None: the built-in model)."""
    return _native.info(model=_path(model), ort_library=_onnxruntime_library())


def annotate(inputs: Union[PathLike, Sequence[PathLike]], out: PathLike, **options: Any) -> dict:
    """``pipnet annotate`` as a function: :meth:`Pipeline.annotate` on a pipeline made with the
    options that are :class:`Pipeline`'s (``model``, ``device``, ``threads``, ...); the rest
    (``format``, ``preview``, ``pose_axes``, ``crops``, ``boxes``, ``force``, ``chips``) go to
    the run."""
    run = {key: options.pop(key) for key in _RUN_OPTIONS if key in options}
    return Pipeline(**options).annotate(inputs, out, **run)
