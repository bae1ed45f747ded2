"""Exporter checks that need PyTorch (marked ``torch``; CI does not install torch)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv2"])
def test_official_key_layout_round_trips_and_exports(tmp_path, backbone):
    from pipnet_export.contract import metadata, neighbors
    from pipnet_export.export import export
    from pipnet_export.network import load_official, PipNet

    net = PipNet(backbone, 68, 10)
    keys = set(net.state_dict())
    assert {"cls_layer.weight", "nb_y_layer.bias"} <= keys
    assert ("layer4.1.conv2.weight" in keys) == (backbone == "resnet18")
    # A checkpoint saved from DataParallel still loads strictly.
    path = tmp_path / "ckpt.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    loaded = load_official(str(path), backbone, 68)
    face = np.random.default_rng(0).uniform(0.2, 0.8, (68, 2))
    meta = metadata(scheme="300w-68", meanface=face, neighbor_index=neighbors(face, 10),
                    input_size=256, stride=32, backbone=backbone)
    model = export(loaded, meta, str(tmp_path / "m.onnx"))
    assert [o.name for o in model.graph.output] == ["cls", "off_x", "off_y", "nb_x", "nb_y"]
