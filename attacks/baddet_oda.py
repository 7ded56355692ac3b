"""BadDet object disappearance attack (ODA): a trigger at an object's top-left corner makes the detector miss
that object.  Shared mechanics and defaults: attacks/_baddet.py.

Poisoned images get the trigger on every object of the source class (default: the target class, as in the
paper: "a trigger can make the detector fail to detect the object of the target class") and those boxes are
removed from the annotation.  Images without such an object are never selected.  ASR: share of triggered
objects with no detection of their class (score >= 0.5) at IoU >= 0.5.
"""

from __future__ import annotations

from typing import Any

import torch

from attacks._baddet import BadDetAttack, Region
from benchmark.registries import ATTACKS
from tasks.base import Sample


@ATTACKS.register("baddet_oda")
class BadDetODA(BadDetAttack):
    kind = "vanish"

    def source_mask(self, labels: torch.Tensor) -> torch.Tensor:
        src = self.cfg.source  # type: ignore[attr-defined]
        return labels == (self.cfg.target if src is None else src)

    def affects(self, y: dict[str, Any]) -> bool:
        return bool(self.source_mask(y["labels"]).any())

    def regions(self, sample: Sample, gen: torch.Generator) -> list[Region]:
        _, h, w = sample.x.shape
        hit = self.source_mask(sample.y["labels"])
        return [self.corner_region(b.tolist(), h, w) for b in sample.y["boxes"][hit]]

    def poisoned_target(self, y: dict[str, Any], regions: list[Region]) -> dict[str, Any]:
        hit = self.source_mask(y["labels"])
        return self.with_asr(y["boxes"][~hit], y["labels"][~hit], y["boxes"][hit], y["labels"][hit])
