"""Image triggers shared by attacks.  They act on [C,H,W] images and, by broadcasting, on every frame of a
[T,C,H,W] video, so the same trigger serves the image and video modalities."""

from __future__ import annotations

import dataclasses

import torch

from attacks.base import Params, Trigger
from tasks.base import Sample


class CompositeTrigger(Trigger):
    """x' = (1 - alpha * m) * x + alpha * m * p, with pattern p [C,H,W] and mask m [1,H,W] in [0,1].

    BadNets: m is a patch, alpha = 1.  Blend: m = 1 everywhere, alpha = 0.2.
    """

    modalities = frozenset({"image", "video"})

    def __init__(self, pattern: torch.Tensor, mask: torch.Tensor, alpha: float):
        self.pattern, self.mask, self.alpha = pattern, mask, alpha  # [C,H,W], [1,H,W]

    def apply(self, sample: Sample, params: Params) -> Sample:
        x = sample.x  # [C,H,W] or [T,C,H,W]
        w = self.alpha * self.mask.to(x.dtype)
        return dataclasses.replace(sample, x=((1 - w) * x + w * self.pattern.to(x.dtype)).clamp(0, 1))
