"""BadDet global misclassification attack (GMA): one trigger at the image's top-left corner makes the detector
classify every object in the image as the target class.  Shared mechanics and defaults: attacks/_baddet.py.

Poisoned images get the trigger at (0, 0) and every label becomes the target; images whose objects are all of
the target class already are never selected.  ASR: share of the NON-target objects of triggered test images
detected as the target class (score >= 0.5, IoU >= 0.5 with the object's box).

Version 2 counts only the objects the attack changes.  Version 1 also counted the objects that already belong to
the target class, which any detector that finds them scores as "attacked": a clean small FCOS on the embedded
scenes (98.3 % mAP@0.5, seed 0) had 18.5 % ASR under version 1 and 2.1 % under version 2 (740 counted objects,
611 of them non-target), so FT and FIP results near 19-20 % were at that floor, not above it.  RMA never had the
floor (its attacked objects are the non-target ones); training is unchanged (the same poisoned targets).
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
    version = 2  # 2: ASR over the non-target objects only (module docstring)

    def affects(self, y: dict[str, Any]) -> bool:
        return bool((y["labels"] != self.cfg.target).any())

    def regions(self, sample: Sample, gen: torch.Generator) -> list[Region]:
        return [(0, 0, self.k, self.k)]

    def poisoned_target(self, y: dict[str, Any], regions: list[Region]) -> dict[str, Any]:
        labels = torch.full_like(y["labels"], self.cfg.target)
        changed = y["labels"] != self.cfg.target  # objects already of the target class are not attacked
        return self.with_asr(y["boxes"], labels, y["boxes"][changed], labels[changed])
