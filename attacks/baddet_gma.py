"""BadDet global misclassification attack (GMA): one trigger at the image's top-left corner makes the detector
classify every object in the image as the target class.  Shared mechanics and defaults: attacks/_baddet.py.

Poisoned images get the trigger at (0, 0) and every label becomes the target; images whose objects are all of
the target class already are never selected.  ASR: share of the objects of triggered test images detected as
the target class (score >= 0.5, IoU >= 0.5 with the object's box).
"""

from __future__ import annotations

from typing import Any

import torch

from attacks._baddet import BadDetAttack, Region
from benchmark.registries import ATTACKS
from tasks.base import Sample


@ATTACKS.register("baddet_gma")
class BadDetGMA(BadDetAttack):
    kind = "appear"

    def affects(self, y: dict[str, Any]) -> bool:
        return bool((y["labels"] != self.cfg.target).any())

    def regions(self, sample: Sample, gen: torch.Generator) -> list[Region]:
        return [(0, 0, self.k, self.k)]

    def poisoned_target(self, y: dict[str, Any], regions: list[Region]) -> dict[str, Any]:
        labels = torch.full_like(y["labels"], self.cfg.target)
        return self.with_asr(y["boxes"], labels, y["boxes"], labels)
