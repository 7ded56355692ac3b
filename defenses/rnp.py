"""Reconstructive Neuron Pruning (Li, Lyu, Ma, Koren, Lyu, Li, Jiang, "Reconstructive Neuron Pruning for
Backdoor Defense", ICML 2023).

Reference code: github.com/bboylyg/RNP (main.py) and BackdoorBench's defense/rnp.py.

Method, three stages on the clean holdout:
  1. Unlearning: gradient *ascent* on the clean loss of (a copy of) the backdoored model, SGD lr 0.01,
     momentum 0.9, weight decay 5e-4, at most 20 epochs, stopped after the first
     epoch whose clean accuracy is <= `clean_threshold` (0.2).
  2. Recovering: on the unlearned model, learn a mask m in [0,1] per neuron (BatchNorm channel, weight * m; see
     `defenses._e_masks`) by *minimising* α·CE (α = 0.2), SGD lr 0.2, momentum 0.9, 20 epochs, clipped to [0,1].
  3. Pruning: zero the BatchNorm weight of the original backdoored model's neurons with small mask values.
Both stages train in train mode with the training augmentation, batch 128, as in the authors' code.

Deviations.
- Stopping criterion: the authors use the training accuracy accumulated during the epoch (train mode); fipbench
  evaluates the task's clean metric on the holdout (eval mode) after every epoch, which is defined for every
  task.  Unlearning runs in `Task.fit` (the ascent is a hook negating the loss); the early stop is an
  exception raised by an epoch-end hook and caught here, because `fit` has no stopping rule.
- The authors decay the unlearning lr x0.1 at epochs 10 and 20 (MultiStepLR); `Task.fit` has constant and
  cosine schedules only, so the lr stays 0.01 (unlearning normally stops well before epoch 10).
- The authors' unlearning calls clip_grad_norm_(20) *before* backward (a no-op); fipbench does not clip.
- Pruning threshold: the authors sweep thresholds 0 to 0.9 and read them on test data; BackdoorBench prunes at
  its `pruning_number` 0.70 (threshold) for the final model.  fipbench: `select: fixed` (default) prunes at
  `amount` 0.70 (BackdoorBench's default); `select: holdout` takes the largest grid value whose clean-holdout
  accuracy stays within `tolerance` (0.1 relative, BackdoorBench's acc_ratio) — never test data.
- "epoch" = one pass over the holdout with `fit`'s drop_last batching (200 images, batch 128: one step).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from benchmark.registries import DEFENSES
from benchmark.rng import child
from defenses._e_masks import MaskedModel, choose, prune, select_on_holdout
from defenses.base import Defense, DefenseConfig, count_tuned
from tasks.base import Batch, FitConfig, Hook, Sample, Task


@dataclasses.dataclass(frozen=True)
class RNPConfig(DefenseConfig):
    batch_size: int = 128
    unlearn_lr: float = 0.01
    unlearn_epochs: int = 20
    clean_threshold: float = 0.2  # stop unlearning once the clean holdout metric is <= this
    recover_lr: float = 0.2
    recover_epochs: int = 20
    alpha: float = 0.2  # the recovering loss is alpha * CE (authors)
    prune_by: Literal["threshold", "fraction"] = "threshold"
    amount: float = 0.7
    select: Literal["fixed", "holdout"] = "fixed"
    grid_max: float = 0.9
    grid_step: float = 0.05
    tolerance: float = 0.1

    def check(self) -> None:
        for key in ("batch_size", "unlearn_epochs", "recover_epochs"):
            if getattr(self, key) < 1:
                raise self.bad(key, "must be >= 1")
        for key in ("unlearn_lr", "recover_lr", "alpha"):
            if not getattr(self, key) > 0:
                raise self.bad(key, "must be > 0")
        if not 0 <= self.amount <= 1:
            raise self.bad("amount", "must lie in [0, 1]")
        if not 0 < self.grid_step <= self.grid_max <= 1:
            raise self.bad("grid_step", "need 0 < grid_step <= grid_max <= 1")


class _Stop(Exception):
    """Raised by `_Unlearn` to end `Task.fit` early."""


class _Unlearn(Hook):
    """Gradient ascent (the loss negated) and RNP's stopping rule per epoch."""

    def __init__(self, task: Task, clean: Sequence[Sample], cfg: RNPConfig, steps_per_epoch: int):
        self.task, self.clean, self.cfg, self.per_epoch = task, clean, cfg, steps_per_epoch
        self.epochs, self.metric = 0, float("nan")

    def on_loss(self, model: nn.Module, batch: Batch, loss: torch.Tensor, step: int) -> torch.Tensor:
        return -loss

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if step % self.per_epoch:
            return
        self.epochs += 1
        self.metric = self.task.metrics(model, self.clean)[self.task.metric_name]  # leaves the model in eval
        model.train()
        if self.metric <= self.cfg.clean_threshold:
            raise _Stop


class _ClipMasks(Hook):
    def __init__(self, masked: MaskedModel, alpha: float):
        self.masked, self.alpha = masked, alpha

    def on_loss(self, model: nn.Module, batch: Batch, loss: torch.Tensor, step: int) -> torch.Tensor:
        return self.alpha * loss

    def on_step_end(self, model: nn.Module, step: int) -> None:
        self.masked.clip(0.0)


@DEFENSES.register("rnp")
class RNP(Defense):
    Config = RNPConfig
    version = 1
    modalities = frozenset({"*"})
    clean_data = "the clean holdout (paper: 1 % of CIFAR-10 training data, 500 images)"
    paper = ("Li, Lyu, Ma, Koren, Lyu, Li, Jiang, Reconstructive Neuron Pruning for Backdoor Defense, "
             "ICML 2023")
    smoke_overrides = {"batch_size": 32, "unlearn_epochs": 2, "recover_epochs": 2}

    def purify(self, model: nn.Module, clean: Sequence[Sample], task: Task, *, rng: torch.Generator) -> nn.Module:
        cfg: RNPConfig = self.cfg  # type: ignore[assignment]
        bs = min(cfg.batch_size, len(clean))
        per_epoch = max(1, len(clean) // bs)  # fit's drop_last batching
        # 1. unlearning, on a copy
        unlearned = copy.deepcopy(model)
        unlearn = _Unlearn(task, clean, cfg, per_epoch)
        fit_cfg = FitConfig(epochs=cfg.unlearn_epochs, batch_size=bs, lr=cfg.unlearn_lr, momentum=0.9,
                            weight_decay=5e-4, schedule="constant")
        try:
            task.fit(unlearned, clean, fit_cfg, hooks=[unlearn], generator=child(rng, "unlearn"),
                     desc="rnp-unlearn")
        except _Stop:
            pass
        # 2. recovering: masks on the unlearned model
        masked = MaskedModel(unlearned)
        del unlearned
        rec_cfg = FitConfig(epochs=cfg.recover_epochs, batch_size=bs, lr=cfg.recover_lr, momentum=0.9,
                            weight_decay=0.0, schedule="constant")
        params = masked.mask_params()
        result = task.fit(masked.model, clean, rec_cfg, hooks=[_ClipMasks(masked, cfg.alpha)],
                          generator=child(rng, "recover"), params=params, desc="rnp-recover")
        recovered = task.metrics(masked.model, clean)[task.metric_name]
        values = masked.values()
        del masked
        # 3. pruning the original model
        amount, trace = cfg.amount, None
        if cfg.select == "holdout":
            n = int(round(cfg.grid_max / cfg.grid_step))
            grid = [round(cfg.grid_step * (i + 1), 10) for i in range(n)]
            amount, trace = select_on_holdout(model, values, task, clean, cfg.prune_by, grid, cfg.tolerance)
        chosen = choose(values, cfg.prune_by, amount)
        prune(model, chosen)
        model.eval()
        self.report = {"tuned_params": count_tuned(params), "unlearn_epochs": unlearn.epochs,
                       "unlearned_holdout_metric": unlearn.metric, "recover_steps": result.steps,
                       "recovered_holdout_metric": recovered, "neurons": len(values), "pruned_neurons": len(chosen),
                       "prune_by": cfg.prune_by, "amount": amount, "select": cfg.select, "selection_trace": trace}
        return model

