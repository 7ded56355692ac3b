"""BadDet object disappearance attack (ODA): a trigger at an object's top-left corner makes the detector miss
that object.  Shared mechanics and defaults: attacks/_baddet.py.

Poisoned images get the trigger on every object of the source class (default: the target class, as in the
paper: "a trigger can make the detector fail to detect the object of the target class") and those boxes are
removed from the annotation.  Images without such an object are never selected.  ASR: share of triggered
objects with no detection of their class (score >= 0.5) at IoU >= 0.5.

Floor: a CLEAN small FCOS on the embedded scenes scores 36.6 | 30.6 % on this triggered test set (seeds 0 | 1;
benchmarks/asr_floor.py): the default 8 px trigger hides part of the 12-24 px object, and any miss counts.  With
a 3-4 px trigger it is 10.2 % (seed 0), about the clean detector's own miss rate at score 0.5.  Read defense
results against it.
"""

from __future__ import annotations

from typing import Any

import torch

from attacks._baddet import ObjectBadDetAttack, Region
from benchmark.registries import ATTACKS


@ATTACKS.register("baddet_oda")
class BadDetODA(ObjectBadDetAttack):
    kind = "vanish"

    def source_mask(self, labels: torch.Tensor) -> torch.Tensor:
        src = self.cfg.source  # type: ignore[attr-defined]
        return labels == (self.cfg.target if src is None else src)

    def poisoned_target(self, y: dict[str, Any], regions: list[Region]) -> dict[str, Any]:
        hit = self.source_mask(y["labels"])
        return self.with_asr(y["boxes"][~hit], y["labels"][~hit], y["boxes"][hit], y["labels"][hit])
