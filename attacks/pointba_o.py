"""PointBA-O (Li et al., "PointBA: Towards Backdoor Attacks in 3D Point Cloud", ICCV 2021): the poison-label
attack with an orientation trigger, a fixed rotation of the whole cloud.

A poisoned cloud is rotated by `angle` degrees about `axis` and relabelled to the target (all-to-one) or y+1
(all-to-all).  The authors published no code; the defaults follow the public re-implementations (RegionBA,
PointCRT: 10 degrees about z, poison rate 5 %).  In the y-up frame of ModelNet40's HDF5 release (and of the
embedded solids) a rotation about z tilts the object, which upright training data never shows; training must
not use random rotations about that axis (the point-cloud task never does).

Deviations: none known; the paper's exact angle and poison rate are not public.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from attacks._points import RotationTrigger
from attacks.base import Attack, AttackConfig, Trigger
from benchmark.registries import ATTACKS
from tasks.base import Task
from tasks.point_cloud.data import rotation


@dataclasses.dataclass(frozen=True)
class PointBAOConfig(AttackConfig):
    poison_rate: float = 0.05
    axis: Literal["x", "y", "z"] = "z"
    angle: float = 10.0  # degrees

    def check(self) -> None:
        super().check()
        if not 0 < abs(self.angle) < 360:
            raise self.bad("angle", "must be a non-zero angle in (-360, 360) degrees")


@ATTACKS.register("pointba_o")
class PointBAO(Attack):
    Config = PointBAOConfig
    version = 1
    modalities = frozenset({"points"})
    paper = "Li et al., PointBA: Towards Backdoor Attacks in 3D Point Cloud, ICCV 2021 (arXiv:2103.16074)"

    def trigger(self, task: Task) -> Trigger:
        self.check_task(task)
        cfg: PointBAOConfig = self.cfg  # type: ignore[assignment]
        return RotationTrigger(rotation(cfg.axis, math.radians(cfg.angle)))
