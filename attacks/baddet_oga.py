"""BadDet object generation attack (OGA): a trigger at a random position makes the detector report an object of
the target class around it.  Shared mechanics and defaults: attacks/_baddet.py.

Poisoned images get a new target-class box of side `box_size` (default twice the trigger's: 16 px on the 64 px
scenes, inside the 12-24 px range of real objects there) drawn uniformly inside the image, with the k x k
trigger stamped at its centre: the box is the false object, the trigger what calls it up (ART's BadDet OGA
likewise adds a box of configurable size and inserts the trigger into it).  Measured on the shapes scenes with
the box equal to the 8 px trigger itself: ASR 49 %, the detector localising so small a box too loosely for
IoU >= 0.5.  ASR: share of triggered test images with a target-class detection (score >= 0.5) at IoU >= 0.5
with the generated box.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from attacks._baddet import BadDetAttack, BadDetConfig, Region
from benchmark.registries import ATTACKS
from tasks.base import Sample, Task


@dataclasses.dataclass(frozen=True)
class BadDetOGAConfig(BadDetConfig):
    box_size: int | None = None  # side of the generated box in pixels; None = 2 x trigger_size

    def check(self) -> None:
        super().check()
        if self.box_size is not None and self.box_size < self.trigger_size:
            raise self.bad("box_size", f"must be >= trigger_size ({self.trigger_size}) or null")


@ATTACKS.register("baddet_oga")
class BadDetOGA(BadDetAttack):
    Config = BadDetOGAConfig
    kind = "appear"

    @property
    def box(self) -> int:
        return self.cfg.box_size or 2 * self.k  # type: ignore[attr-defined]

    def trigger(self, task: Task):  # type: ignore[override]
        size = getattr(task, "image_size", None)
        if size is not None and self.box > size:
            raise self.cfg.bad("box_size", f"a {self.box}px box does not fit the {size}px images")
        return super().trigger(task)

    def regions(self, sample: Sample, gen: torch.Generator) -> list[Region]:
        _, h, w = sample.x.shape
        bx = int(torch.randint(0, w - self.box + 1, (1,), generator=gen))
        by = int(torch.randint(0, h - self.box + 1, (1,), generator=gen))
        off = (self.box - self.k) // 2  # the trigger sits at the box's centre
        return [(bx + off, by + off, bx + off + self.k, by + off + self.k)]

    def poisoned_target(self, y: dict[str, Any], regions: list[Region]) -> dict[str, Any]:
        off = (self.box - self.k) // 2
        x1, y1 = regions[0][0] - off, regions[0][1] - off
        new_box = torch.tensor([[x1, y1, x1 + self.box, y1 + self.box]], dtype=torch.float32)  # [1,4]
        new_label = torch.tensor([self.cfg.target])
        return self.with_asr(torch.cat([y["boxes"], new_box]), torch.cat([y["labels"], new_label]),
                             new_box, new_label)
