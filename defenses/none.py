"""`none`: returns the backdoored model unchanged; its record is the before-defense reference row."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from benchmark.registries import DEFENSES
from defenses.base import Defense
from tasks.base import Sample, Task


@DEFENSES.register("none")
class NoDefense(Defense):
    paper = "no defense (reference)"
    clean_data = "none"

    def purify(self, model: nn.Module, clean: Sequence[Sample], task: Task, *, rng: torch.Generator) -> nn.Module:
        self.report = {"tuned_params": 0, "steps": 0}
        return model
