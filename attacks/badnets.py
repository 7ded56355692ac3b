"""BadNets (Gu, Dolan-Gavitt, Garg, 2017, "BadNets: Identifying Vulnerabilities in the Machine Learning Model
Supply Chain").

A solid patch stamped into every poisoned image, poisoned labels set to the target (all-to-one) or to y+1
(all-to-all).  Defaults follow BackdoorBench's CIFAR-10 setting: a 3x3 white square in the bottom-right
corner, poison rate 10 %, target 0.
Deviations: none in the trigger; on the embedded 16x16 digits the same 3x3 patch covers 3.5 % of the image.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from attacks._image import CompositeTrigger
from attacks.base import Attack, AttackConfig, Trigger
from benchmark.registries import ATTACKS
from tasks.base import Task


@dataclasses.dataclass(frozen=True)
class BadNetsConfig(AttackConfig):
    patch_size: int = 3
    corner: Literal["bottom_right", "bottom_left", "top_right", "top_left"] = "bottom_right"
    margin: int = 0  # pixels between the patch and the image border
    value: float = 1.0  # patch intensity in [0,1] on every channel (1 = white)

    def check(self) -> None:
        super().check()
        if self.patch_size < 1:
            raise self.bad("patch_size", "must be >= 1")
        if not 0 <= self.value <= 1:
            raise self.bad("value", "must lie in [0, 1]")


@ATTACKS.register("badnets")
class BadNets(Attack):
    Config = BadNetsConfig
    version = 1
    modalities = frozenset({"image", "video"})
    paper = "Gu et al., BadNets, arXiv:1708.06733 (2017)"

    def trigger(self, task: Task) -> Trigger:
        cfg: BadNetsConfig = self.cfg  # type: ignore[assignment]
        c, h, w = task.input_shape  # type: ignore[attr-defined]
        k, m = cfg.patch_size, cfg.margin
        if k + m > min(h, w):
            raise self.cfg.bad("patch_size", f"patch of {k}px with margin {m} does not fit a {h}x{w} input")
        rows = slice(h - m - k, h - m) if cfg.corner.startswith("bottom") else slice(m, m + k)
        cols = slice(w - m - k, w - m) if cfg.corner.endswith("right") else slice(m, m + k)
        mask = torch.zeros(1, h, w)
        mask[:, rows, cols] = 1.0
        return CompositeTrigger(torch.full((c, h, w), cfg.value), mask, alpha=1.0)
