"""PyTorch PIPNet -> an ONNX graph of the pipnet contract, checked with ``onnx.checker``.

``python -m pipnet_export.export CHECKPOINT --backbone resnet18 --scheme 300w-68
--meanface meanface.txt --out model.onnx`` where meanface.txt is the official repository's
``data/<dataset>/meanface.txt`` (one line of ``x0 y0 x1 y1 ...`` in crop-normalised units);
neighbours are computed from it. The official models crop the landmark box enlarged 1.1 times
at 256x256 with ImageNet normalisation, which is what the metadata records.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import onnx
import torch

from .contract import OUTPUTS, metadata, neighbors
from .network import PipNet, load_official


def export(net: PipNet, meta: dict[str, str], out: str, opset: int = 17) -> onnx.ModelProto:
    """Writes ``net`` with input ``image`` [N, 3, S, S] (N dynamic), the five raw outputs and
    ``meta`` as metadata_props; returns the checked model."""
    size = int(meta["pipnet.input_size"])
    dummy = torch.zeros(1, 3, size, size)
    axes = {name: {0: "batch"} for name in ("image", *OUTPUTS)}
    torch.onnx.export(
        net.eval(), dummy, out, input_names=["image"], output_names=list(OUTPUTS),
        dynamic_axes=axes, opset_version=opset, dynamo=False,
    )
    model = onnx.load(out)
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, out)
    return model


def read_meanface(path: str) -> np.ndarray:
    values = np.loadtxt(path, dtype=np.float64).ravel()
    return values.reshape(-1, 2)


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m pipnet_export.export")
    p.add_argument("checkpoint")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--scheme", default="300w-68")
    p.add_argument("--meanface", required=True)
    p.add_argument("--neighbors", type=int, default=10)
    p.add_argument("--input-size", type=int, default=256)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    face = read_meanface(args.meanface)
    net = load_official(args.checkpoint, args.backbone, len(face), args.neighbors)
    meta = metadata(
        scheme=args.scheme, meanface=face, neighbor_index=neighbors(face, args.neighbors),
        input_size=args.input_size, stride=32, backbone=args.backbone,
    )
    export(net, meta, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
