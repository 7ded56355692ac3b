"""PointBA-I (Li et al., "PointBA: Towards Backdoor Attacks in 3D Point Cloud", ICCV 2021): the poison-label
attack with an interaction trigger, a small ball of points at a fixed position.

A poisoned cloud has `num_points` of its points replaced by points on a sphere of `radius` about `centre` (in
the normalised frame, clouds in the unit ball), and its label set to the target (all-to-one) or y+1
(all-to-all).  The authors published no code; the defaults follow the public re-implementations the point-cloud
backdoor literature compares against (PointCRT's config: centre (0.05, 0.05, 0.05), radius 0.05; RegionBA's:
32 points replacing random points, poison rate 5 %).

Deviations: the ball's points are drawn uniformly by area, afresh for every poisoned cloud (deterministic by
index); no re-normalisation after the insertion (the ball lies inside the unit ball).
"""

from __future__ import annotations

import dataclasses

import torch

from attacks._points import ClusterTrigger
from attacks.base import Attack, AttackConfig, Trigger
from benchmark.registries import ATTACKS
from tasks.base import Task


@dataclasses.dataclass(frozen=True)
class PointBAIConfig(AttackConfig):
    poison_rate: float = 0.05
    centre: tuple[float, float, float] = (0.05, 0.05, 0.05)
    radius: float = 0.05
    num_points: int = 32

    def check(self) -> None:
        super().check()
        if not self.radius > 0:
            raise self.bad("radius", "must be > 0")
        if self.num_points < 1:
            raise self.bad("num_points", "must be >= 1")


@ATTACKS.register("pointba_i")
class PointBAI(Attack):
    Config = PointBAIConfig
    version = 1
    modalities = frozenset({"points"})
    paper = "Li et al., PointBA: Towards Backdoor Attacks in 3D Point Cloud, ICCV 2021 (arXiv:2103.16074)"

    def trigger(self, task: Task) -> Trigger:
        self.check_task(task)
        cfg: PointBAIConfig = self.cfg  # type: ignore[assignment]
        p = task.input_shape[0]  # type: ignore[attr-defined]
        if cfg.num_points >= p:
            raise cfg.bad("num_points", f"a trigger of {cfg.num_points} points does not fit clouds of {p}")
        return ClusterTrigger(torch.tensor(cfg.centre), cfg.radius, cfg.num_points)
