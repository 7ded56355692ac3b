"""Vanilla fine-tuning: plain `task.loss` on the clean holdout, all parameters, same budget as FIP.

The standard first baseline of every backdoor-defense paper (e.g. Liu et al., Fine-Pruning, RAID 2018, and
the FT rows of BackdoorBench and the FIP paper).  It differs from FIP only in the objective, so comparing the
two isolates FIP's regularisers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from benchmark.registries import DEFENSES
from defenses.base import Defense, TuningConfig, count_tuned
from tasks.base import Sample, Task


@DEFENSES.register("finetune")
class FineTune(Defense):
    Config = TuningConfig
    smoke_overrides = {"fit": {"steps": 6, "batch_size": 32}}
    paper = "vanilla fine-tuning on clean data (baseline)"

    def purify(self, model: nn.Module, clean: Sequence[Sample], task: Task, *, rng: torch.Generator) -> nn.Module:
        cfg: TuningConfig = self.cfg  # type: ignore[assignment]
        params = [p for p in model.parameters() if p.requires_grad]
        result = task.fit(model, clean, cfg.fit, generator=rng, params=params, desc="finetune")
        self.report = {"tuned_params": count_tuned(params), "steps": result.steps, "fit_seconds": result.seconds}
        return model
