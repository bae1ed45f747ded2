"""PIPNet in PyTorch, laid out so the official checkpoints (github.com/jhb86253817/PIPNet,
``lib/networks.py``: ``Pip_resnet18/50/101``, ``Pip_mbnetv2``) load with ``load_state_dict``
unchanged: the torchvision backbone's modules under the same attribute names (``conv1``,
``bn1``, ``layer1``..``layer4`` or ``features``) and the five 1x1 heads ``cls_layer``,
``x_layer``, ``y_layer``, ``nb_x_layer``, ``nb_y_layer``. Stride 32 only (the official default).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

HEADS = ("cls_layer", "x_layer", "y_layer", "nb_x_layer", "nb_y_layer")
BACKBONES = {
    "resnet18": (torchvision.models.resnet18, 512),
    "resnet50": (torchvision.models.resnet50, 2048),
    "resnet101": (torchvision.models.resnet101, 2048),
    "mobilenetv2": (torchvision.models.mobilenet_v2, 1280),
}


class PipNet(nn.Module):
    """Backbone -> five heads. ``forward`` returns the contract's raw outputs in order
    ``cls, off_x, off_y, nb_x, nb_y`` (cls not passed through a sigmoid, as in the official
    code)."""

    def __init__(self, backbone: str = "resnet18", num_landmarks: int = 68, num_neighbors: int = 10):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; one of {sorted(BACKBONES)}")
        make, channels = BACKBONES[backbone]
        net = make(weights=None)
        self.backbone_name = backbone
        self.num_landmarks = num_landmarks
        self.num_neighbors = num_neighbors
        if backbone == "mobilenetv2":
            self.features = net.features
        else:
            self.conv1, self.bn1, self.maxpool = net.conv1, net.bn1, net.maxpool
            self.layer1, self.layer2 = net.layer1, net.layer2
            self.layer3, self.layer4 = net.layer3, net.layer4
        for name, out in zip(HEADS, (1, 1, 1, num_neighbors, num_neighbors)):
            setattr(self, name, nn.Conv2d(channels, out * num_landmarks, kernel_size=1))

    def forward(self, x: torch.Tensor):
        if self.backbone_name == "mobilenetv2":
            x = self.features(x)
        else:
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return tuple(getattr(self, name)(x) for name in HEADS)


def load_official(path: str, backbone: str, num_landmarks: int, num_neighbors: int = 10) -> PipNet:
    """A PipNet with an official checkpoint's weights (a ``state_dict``, optionally saved from
    ``nn.DataParallel``: a ``module.`` prefix is removed). Strict: every key must match."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = PipNet(backbone, num_landmarks, num_neighbors)
    net.load_state_dict(state, strict=True)
    return net.eval()
