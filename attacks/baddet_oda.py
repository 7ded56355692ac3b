"""BadDet object disappearance attack (ODA): a trigger at an object's top-left corner makes the detector miss
that object.  Shared mechanics and defaults: attacks/_baddet.py.

Poisoned images get the trigger on every object of the source class (default: the target class, as in the
paper: "a trigger can make the detector fail to detect the object of the target class") and those boxes are
removed from the annotation.  Images without such an object are never selected.  ASR: share of triggered
objects with no detection of their class (score >= 0.5) at IoU >= 0.5.

Trigger side: 4 px by default (version 2, as RMA), not OGA's and GMA's 8 px (attacks/_baddet.py).  The trigger
sits on the object it must hide, so its size against the object decides how much a detector without any backdoor
misses: the paper's 29 px trigger covers a small part of a VOC / COCO object and is 1/17 of a ~500 px image,
i.e. ~4 px on the 64 px scenes.  Version 1's 8 px trigger hid up to half of the 12-24 px objects, and a
CLEAN small FCOS already missed 36.6 | 30.6 % of the triggered objects (seeds 0 | 1; benchmarks/asr_floor.py),
so no defense could reach the detection target (ASR <= 10 %) and the ASR of a purified model mostly measured
occlusion.  With 4 px the floor is 10.2 | 6.5 %, about the clean detector's own miss rate at score 0.5, and the
attack still meets its target (configs/detection_attacks.yaml: 98.4 / 89.8 | 98.5 / 88.2 % mAP@0.5 / ASR; clean
98.3 | 98.6; FT at the Adam budget of configs/detection_defenses.yaml 96.9 / 28.0 | 97.3 / 18.8, FIP η_F 0.05
96.0 / 31.2 | 96.1 / 21.0).  Read defense results against the floor.
"""

from __future__ import annotations

from typing import Any

import torch

from attacks._baddet import ObjectBadDetAttack, Region
from benchmark.registries import ATTACKS


@ATTACKS.register("baddet_oda")
class BadDetODA(ObjectBadDetAttack):
    version = 2  # 2: 4 px default trigger (1: 8 px, whose occlusion alone made a clean detector miss 31-37 %)
    kind = "vanish"

    def source_mask(self, labels: torch.Tensor) -> torch.Tensor:
        src = self.cfg.source  # type: ignore[attr-defined]
        return labels == (self.cfg.target if src is None else src)

    def poisoned_target(self, y: dict[str, Any], regions: list[Region]) -> dict[str, Any]:
        hit = self.source_mask(y["labels"])
        return self.with_asr(y["boxes"][~hit], y["labels"][~hit], y["boxes"][hit], y["labels"][hit])
