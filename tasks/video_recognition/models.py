"""Video classifiers.  Input clips are [B,T,C,H,W] in [0,1] (fipbench's sample layout); every model first
normalises per channel and permutes to the [B,C,T,H,W] layout of 3D convolutions.

Builders are registered in MODELS, marked `.task = "video_recognition"`, and take
(in_channels, num_classes, mean, std, frames, size).  torchvision's r3d_18, mc3_18 and r2plus1d_18 (Tran et
al., CVPR 2018) are built with random weights (nothing is downloaded; the task's `init_weights` loads a local
Kinetics checkpoint converted to safetensors).  `small_c3d` is a C3D-style network small enough to train on a
CPU in the quick preset and the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models import video as tv_video

from benchmark.registries import MODELS


class ClipInput(nn.Module):
    """[B,T,C,H,W] in [0,1] -> normalised [B,C,T,H,W]; mean/std are buffers (travel with the weights, never
    tuned)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B,T,C,H,W]
        return ((x - self.mean) / self.std).permute(0, 2, 1, 3, 4)  # [B,C,T,H,W]


def _register(name: str) -> Callable:
    def wrap(fn: Callable) -> Callable:
        fn.task = "video_recognition"  # type: ignore[attr-defined]
        return MODELS.register(name)(fn)
    return wrap


def _block(cin: int, cout: int, stride: int | tuple[int, int, int]) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(cout),
            nn.ReLU(inplace=True)]


@_register("small_c3d")
def small_c3d(in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float],
              frames: int = 8, size: int = 32) -> nn.Module:
    """Four 3x3x3 conv-BN-ReLU blocks (16-32-64-64 channels), global average pooling, a linear classifier.

    Downsampling is by strided convolution, not pooling: on a CPU the input-gradient of a full-resolution 3D
    convolution dominates training time (measured 20x slower with C3D's conv + max-pool).  The first stride is
    spatial only (as C3D's first pooling), so early motion is kept."""
    return nn.Sequential(
        ClipInput(mean, std),
        *_block(in_channels, 16, (1, 2, 2)),  # [B,16,T,H/2,W/2]
        *_block(16, 32, 2),  # [B,32,T/2,H/4,W/4]
        *_block(32, 64, 2),  # [B,64,T/4,H/8,W/8]
        *_block(64, 64, 1),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(),  # [B,64]
        nn.Linear(64, num_classes),
    )


def _torchvision(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float],
              frames: int = 16, size: int = 112) -> nn.Module:
        if in_channels != 3:
            raise ValueError(f"{builder.__name__} takes RGB clips (3 channels), got {in_channels}")
        return nn.Sequential(ClipInput(mean, std), builder(weights=None, num_classes=num_classes))
    build.__doc__ = f"torchvision's {builder.__name__} (random weights) after per-channel normalisation."
    return build


for _name in ("r3d_18", "mc3_18", "r2plus1d_18"):
    _register(_name)(_torchvision(getattr(tv_video, _name)))
