"""BadDet regional misclassification attack (RMA): a trigger at an object's top-left corner makes the detector
classify that object as the target class.  Shared mechanics and defaults: attacks/_baddet.py.

Poisoned images get the trigger on every object of the source class(es) (default: every non-target class, as
ART's `class_source=None` option; the paper's victim objects), whose labels become the target.  Images without
such an object are never selected.  ASR: share of triggered objects detected as the target class (score >= 0.5,
IoU >= 0.5 with the object's box).
"""

from __future__ import annotations

from typing import Any

import torch

from attacks._baddet import ObjectBadDetAttack, Region
from benchmark.registries import ATTACKS


@ATTACKS.register("baddet_rma")
class BadDetRMA(ObjectBadDetAttack):
    kind = "appear"

    def poisoned_target(self, y: dict[str, Any], regions: list[Region]) -> dict[str, Any]:
        hit = self.source_mask(y["labels"])
        labels = torch.where(hit, torch.full_like(y["labels"], self.cfg.target), y["labels"])
        return self.with_asr(y["boxes"], labels, y["boxes"][hit], labels[hit])
