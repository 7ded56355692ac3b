"""Detectors, all built by torchvision without downloaded weights (`weights=None, weights_backbone=None`).

Every builder takes (num_classes, mean, std, image_size) where num_classes counts object classes only (the
background class torchvision adds is handled here), and returns a torchvision detector whose transform
normalises internally.  `image_size` (the side of the embedded set's square images) fixes the detector's resize
so that 64 px scenes are not upsampled to 800 px; None keeps each architecture's standard input size.

- `small_fcos`: FCOS (Tian et al., ICCV 2019) with a three-stage convolutional backbone and a two-level
  top-down merge to one stride-4 feature map, and a two-conv head: fast enough for the CPU tests and the quick
  preset (about 0.4 M parameters).
- `ssd300_vgg16`: SSD300 with a VGG-16 backbone, the FIP paper's detection setup.
- `fasterrcnn_mobilenet_v3_large_fpn`, `fcos_resnet50_fpn`: torchvision's two-stage and anchor-free detectors.
  Faster R-CNN is made twice differentiable (FIP's trace term, I-BAU, the sharpness figures need it) without
  changing what it computes: MobileNetV3's Hardsigmoid becomes relu6(x + 3) / 6 (bit-identical; aten's
  hardsigmoid_backward has no derivative), and its RoIAlign runs torchvision's own pure-PyTorch implementation
  while second derivatives are wanted (the C++ kernel's backward has none; the two agree exactly, tests check
  both).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import inspect
import sys
from unittest import mock

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.models import detection
from torchvision.ops import MultiScaleRoIAlign, poolers
from torchvision.ops._utils import convert_boxes_to_roi_format
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead

from benchmark.registries import MODELS
from tasks.base import second_order_wanted

Builder = Callable[..., nn.Module]


def detection_model(name: str) -> Callable[[Builder], Builder]:
    """Register a detector builder, marked so that the detection task accepts it and the others refuse it."""
    def wrap(fn: Builder) -> Builder:
        fn.task = "object_detection"  # type: ignore[attr-defined]
        return MODELS.register(name)(fn)
    return wrap


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    """[B,3,H,W] -> {"0": [B,64,H/4,W/4]}: strides 4 and 8 merged top-down (a two-level FPN)."""

    out_channels = 64

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(3, 32, 2), _conv(32, 32))  # stride 2
        self.c4 = nn.Sequential(_conv(32, 64, 2), _conv(64, 64))  # stride 4
        self.c8 = nn.Sequential(_conv(64, 96, 2), _conv(96, 96))  # stride 8
        self.lateral = nn.Conv2d(96, 64, 1)
        self.smooth = _conv(64, 64)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        c4 = self.c4(self.stem(x))  # [B,64,H/4,W/4]
        c8 = self.c8(c4)  # [B,96,H/8,W/8]
        up = nn.functional.interpolate(self.lateral(c8), size=c4.shape[-2:], mode="nearest")
        return OrderedDict([("0", self.smooth(c4 + up))])


@detection_model("small_fcos")
def small_fcos(num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
               image_size: int | None = 64) -> nn.Module:
    size = image_size or 320
    backbone = TinyBackbone()
    # One level, so FCOS assigns every box to it whatever its size (the level's size range is unbounded).
    anchors = AnchorGenerator(sizes=((8,),), aspect_ratios=((1.0,),))
    head = FCOSHead(backbone.out_channels, num_anchors=1, num_classes=num_classes + 1, num_convs=2)
    return detection.FCOS(backbone, num_classes + 1, min_size=size, max_size=size, image_mean=list(mean),
                          image_std=list(std), anchor_generator=anchors, head=head, score_thresh=0.05,
                          detections_per_img=50, topk_candidates=200)


def _fixed_size(image_size: int | None) -> dict[str, int]:
    return {} if image_size is None else {"min_size": image_size, "max_size": image_size}


@detection_model("ssd300_vgg16")
def ssd300_vgg16(num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
                 image_size: int | None = None) -> nn.Module:
    # SSD300 always resizes to 300 x 300 (its anchors are laid out for that input).
    return detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                                  image_mean=list(mean), image_std=list(std))


class Hardsigmoid(nn.Module):
    """nn.Hardsigmoid as relu6(x + 3) / 6: the same values bit for bit, built from ops with second derivatives."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu6(x + 3) / 6


# torchvision's pure-PyTorch RoIAlign (it falls back to it where its C++ ops are missing), unwrapped from its
# lazy torch.compile decorator so that it runs eagerly and needs no C++ compiler.
_pure_roi_align = inspect.unwrap(sys.modules["torchvision.ops.roi_align"]._roi_align)


def _twice_differentiable_roi_align(input: torch.Tensor, boxes: torch.Tensor | list[torch.Tensor],
                                    output_size: int | tuple[int, int], spatial_scale: float = 1.0,
                                    sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """torchvision.ops.roi_align's signature and values; [N,C,H,W] features, [K,5] rois -> [K,C,h,w]."""
    rois = boxes if isinstance(boxes, torch.Tensor) else convert_boxes_to_roi_format(boxes)
    h, w = _pair(output_size)
    return _pure_roi_align(input, rois, spatial_scale, h, w, sampling_ratio, aligned)


class TwiceDifferentiableRoIAlign(MultiScaleRoIAlign):
    """MultiScaleRoIAlign whose RoIAlign is the pure-PyTorch one while second derivatives are wanted (slower
    and heavier in memory, so only then).  torchvision's pooler calls its module-level `roi_align`, hence the
    patch for the duration of this forward; cells never share a process's threads, so no other forward sees it."""

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        if not second_order_wanted():
            return super().forward(x, boxes, image_shapes)
        with mock.patch.object(poolers, "roi_align", _twice_differentiable_roi_align):
            return super().forward(x, boxes, image_shapes)


def twice_differentiable(model: nn.Module) -> nn.Module:
    """Swaps, in place, the parts of a torchvision detector torch cannot differentiate twice for exact equivalents
    that it can (no parameters or buffers change, so state dicts load either way)."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Hardsigmoid):
                setattr(parent, name, Hardsigmoid())
            elif type(child) is MultiScaleRoIAlign:
                setattr(parent, name, TwiceDifferentiableRoIAlign(
                    child.featmap_names, child.output_size, child.sampling_ratio,
                    canonical_scale=child.canonical_scale, canonical_level=child.canonical_level))
    return model


@detection_model("fasterrcnn_mobilenet_v3_large_fpn")
def fasterrcnn_mobilenet_v3_large_fpn(num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
                                      image_size: int | None = None) -> nn.Module:
    return twice_differentiable(detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes + 1, image_mean=list(mean),
        image_std=list(std), box_score_thresh=0.05, **_fixed_size(image_size)))


@detection_model("fcos_resnet50_fpn")
def fcos_resnet50_fpn(num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
                      image_size: int | None = None) -> nn.Module:
    return detection.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                                       image_mean=list(mean), image_std=list(std), score_thresh=0.05,
                                       **_fixed_size(image_size))
