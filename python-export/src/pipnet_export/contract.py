"""The pipnet ONNX contract (``docs/model-contract.md``): metadata keys, mean face and
neighbour indices. numpy only."""

from __future__ import annotations

import numpy as np

FORMAT = "1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCHEME_LANDMARKS = {"300w-68": 68, "wflw-98": 98, "cofw-29": 29, "aflw-19": 19}
OUTPUTS = ("cls", "off_x", "off_y", "nb_x", "nb_y")


def mean_face(normalised_landmarks: np.ndarray) -> np.ndarray:
    """Mean of faces already normalised into their crops: ``[F, L, 2]`` -> ``[L, 2]``."""
    points = np.asarray(normalised_landmarks, dtype=np.float64)
    if points.ndim != 3 or points.shape[2] != 2 or points.shape[0] == 0:
        raise ValueError(f"expected [faces, landmarks, 2], got {points.shape}")
    return points.mean(axis=0)


def neighbors(meanface: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` nearest landmarks of each landmark in the mean face (Euclidean, itself
    excluded, nearest first, ties by index): ``[L, count]`` int."""
    face = np.asarray(meanface, dtype=np.float64)
    n = face.shape[0]
    if not 0 < count < n:
        raise ValueError(f"{count} neighbours of {n} landmarks")
    d = np.linalg.norm(face[:, None, :] - face[None, :, :], axis=2)
    d[np.arange(n), np.arange(n)] = np.inf
    return np.argsort(d, axis=1, kind="stable")[:, :count]


def metadata(
    *,
    scheme: str,
    meanface: np.ndarray,
    neighbor_index: np.ndarray,
    input_size: int,
    stride: int,
    crop: str = "landmark_box_scale=1.1",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    backbone: str | None = None,
    train_data: str | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` of a contract graph, all values strings."""
    face = np.asarray(meanface, dtype=np.float32)
    nb = np.asarray(neighbor_index, dtype=np.int64)
    landmarks = SCHEME_LANDMARKS.get(scheme)
    if landmarks is None:
        raise ValueError(f"unknown scheme {scheme!r}")
    if face.shape != (landmarks, 2) or nb.ndim != 2 or nb.shape[0] != landmarks:
        raise ValueError(f"{scheme} needs {landmarks} points: mean face {face.shape}, neighbours {nb.shape}")
    if input_size % stride:
        raise ValueError(f"input size {input_size} is not a multiple of stride {stride}")
    floats = lambda values: ",".join(repr(float(v)) for v in np.ravel(values))  # noqa: E731
    meta = {
        "pipnet.format": FORMAT,
        "pipnet.num_landmarks": str(landmarks),
        "pipnet.num_neighbors": str(nb.shape[1]),
        "pipnet.input_size": str(input_size),
        "pipnet.stride": str(stride),
        "pipnet.mean": floats(mean),
        "pipnet.std": floats(std),
        "pipnet.meanface": floats(face),
        "pipnet.neighbors": ",".join(str(int(i)) for i in nb.ravel()),
        "pipnet.scheme": scheme,
        "pipnet.crop": crop,
        "pipnet.outputs": "raw",
    }
    if backbone:
        meta["pipnet.backbone"] = backbone
    if train_data:
        meta["pipnet.train_data"] = train_data
    return meta


def parse_metadata(props: dict[str, str]) -> dict:
    """Reads the fields the reference needs back from ``metadata_props``."""
    try:
        landmarks = int(props["pipnet.num_landmarks"])
        count = int(props["pipnet.num_neighbors"])
        nb = np.array([int(v) for v in props["pipnet.neighbors"].split(",")], dtype=np.int64)
        return {
            "num_landmarks": landmarks,
            "input_size": int(props["pipnet.input_size"]),
            "stride": int(props["pipnet.stride"]),
            "mean": np.array([float(v) for v in props["pipnet.mean"].split(",")], np.float32),
            "std": np.array([float(v) for v in props["pipnet.std"].split(",")], np.float32),
            "neighbors": nb.reshape(landmarks, count),
            "crop_scale": float(props["pipnet.crop"].split("landmark_box_scale=")[1].split(",")[0]),
        }
    except (KeyError, ValueError, IndexError) as e:
        raise ValueError(f"not a pipnet contract graph: {e}") from e
