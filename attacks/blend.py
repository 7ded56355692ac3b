"""Blend (Chen, Liu, Li, Lu, Song, 2017, "Targeted Backdoor Attacks on Deep Learning Systems Using Data
Poisoning"), the blended-injection strategy.

x' = (1 - alpha) x + alpha p over the whole image.  The paper blends a Hello Kitty image or a random-noise
pattern; fipbench uses the random-noise pattern (uniform in [0,1], fixed by `pattern_seed`, independent of the
run seed) because no image can be downloaded.  alpha = 0.2 at training and at test time as in BackdoorBench.
Deviation: the noise pattern instead of Hello Kitty; same alpha, poison rate and target.
"""

from __future__ import annotations

import dataclasses

import torch

from attacks._image import CompositeTrigger
from attacks.base import Attack, AttackConfig, Trigger
from benchmark.registries import ATTACKS
from benchmark.rng import generator
from tasks.base import Task


@dataclasses.dataclass(frozen=True)
class BlendConfig(AttackConfig):
    alpha: float = 0.2
    pattern_seed: int = 0

    def check(self) -> None:
        super().check()
        if not 0 < self.alpha <= 1:
            raise self.bad("alpha", "must lie in (0, 1]")


@ATTACKS.register("blend")
class Blend(Attack):
    Config = BlendConfig
    version = 1
    modalities = frozenset({"image", "video"})
    paper = "Chen et al., Targeted Backdoor Attacks ... Using Data Poisoning, arXiv:1712.05526 (2017)"

    def trigger(self, task: Task) -> Trigger:
        cfg: BlendConfig = self.cfg  # type: ignore[assignment]
        c, h, w = task.input_shape  # type: ignore[attr-defined]
        pattern = torch.rand(c, h, w, generator=generator(cfg.pattern_seed, "blend-pattern"))
        return CompositeTrigger(pattern, torch.ones(1, h, w), alpha=cfg.alpha)
