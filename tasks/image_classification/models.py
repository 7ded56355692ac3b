"""Image classifiers.  Every model starts with `Normalize`, so data and triggers live in [0,1] pixel space.

Builders are registered in MODELS and take (in_channels, num_classes, mean, std).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.registries import MODELS


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers, so they travel with the weights and are never tuned."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B,C,H,W]
        return (x - self.mean) / self.std


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@MODELS.register("small_cnn")
def small_cnn(in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """Three conv-BN-ReLU blocks (32-64-128) with two 2x poolings, global average pool, two linear layers."""
    return nn.Sequential(
        Normalize(mean, std),
        *_conv_bn(in_channels, 32),
        *_conv_bn(32, 64), nn.MaxPool2d(2),
        *_conv_bn(64, 128), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # [B,128]
        nn.Linear(128, 128), nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    )


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    """He et al. 2016 pre-activation ResNet-18, CIFAR variant (3x3 stem, no max-pool), as used by the FIP
    paper and BackdoorBench for 32x32 images."""

    def __init__(self, in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B,C,H,W] in [0,1]
        out = self.layers(self.conv1(self.normalize(x)))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)  # [B,512]
        return self.linear(out)


MODELS.register("preact_resnet18")(PreActResNet18)
