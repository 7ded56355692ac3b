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

from attacks._baddet import BadDetAttack, Region
from benchmark.registries import ATTACKS
from tasks.base import Sample


@ATTACKS.register("baddet_rma")
class BadDetRMA(BadDetAttack):
    kind = "appear"

    def affects(self, y: dict[str, Any]) -> bool:
        return bool(self.source_mask(y["labels"]).any())

    def regions(self, sample: Sample, gen: torch.Generator) -> list[Region]:
        _, h, w = sample.x.shape
        hit = self.source_mask(sample.y["labels"])
        return [self.corner_region(b.tolist(), h, w) for b in sample.y["boxes"][hit]]

    def poisoned_target(self, y: dict[str, Any], regions: list[Region]) -> dict[str, Any]:
        hit = self.source_mask(y["labels"])
        labels = torch.where(hit, torch.full_like(y["labels"], self.cfg.target), y["labels"])
        return self.with_asr(y["boxes"], labels, y["boxes"][hit], labels[hit])
