"""FT-SAM (Zhu, Wei, Shen, Li, Wu, "Enhancing Fine-Tuning Based Backdoor Defense with Sharpness-Aware
Minimization", ICCV 2023): fine-tune the backdoored model on the clean holdout with (adaptive) SAM.

Each step, with g = ∇L(w) on the batch:
    e(w) = ρ · T_w² g / ‖T_w g‖      (adaptive, ASAM: T_w = |w| elementwise; plain SAM: T_w = 1)
    update: the base optimiser's step with the gradient ∇L(w + e(w)), taken at w.
Reference for hyper-parameters and behaviour: BackdoorBench (defense/ft-sam.py, config/defense/ft-sam/config.yaml,
utils/defense_utils/sam.py, a GSAM-style optimiser run with α = 0, i.e. plain (A)SAM): adaptive = True,
ρ = 2.0 (ρ_max = ρ_min = 2, so no ρ schedule), perturbation eps 1e-12.

Construction inside `Task.fit` (the only training loop): the `on_loss` hook receives the batch loss L(w) that
`fit` computed, takes g = ∇L(w) (autograd.grad), moves the weights to w + e(w) in place, evaluates L(w + e) and
its gradient g_SAM, moves the weights back to w, and returns the surrogate
    L(w + e).detach() + Σ_j ⟨w_j, g_SAM_j⟩ − (Σ_j ⟨w_j, g_SAM_j⟩).detach()
whose value is the SAM loss and whose gradient with respect to w is exactly g_SAM.  `fit` then back-propagates
it and takes its optimiser step (momentum, weight decay) at w with g_SAM: precisely SAM's update with that base
optimiser (the tests check this against a hand-computed SAM step).  The extra forward at w + e leaves BatchNorm's
running statistics alone (the usual SAM practice), so they are updated once per step.

Deviations:
- No label smoothing: the objective is `task.loss` (BackdoorBench's FT-SAM uses smoothing 0.1), so the defense
  runs on every task.
- The fine-tuning budget is the shared `TuningConfig` one (300 steps of 64, SGD lr 0.005, momentum 0.95, no
  weight decay, constant lr) instead of BackdoorBench's 100 epochs at lr 0.01 with cosine decay and wd 5e-4,
  so that all tuning defenses are comparable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from benchmark.registries import DEFENSES
from benchmark.rng import child
from defenses.base import Defense, TuningConfig, count_tuned
from defenses.fisher import frozen_norm_stats
from tasks.base import Batch, Hook, Sample, Task


@dataclasses.dataclass(frozen=True)
class FTSAMConfig(TuningConfig):
    rho: float = 2.0  # neighbourhood radius (BackdoorBench: rho_max = rho_min = 2.0 with adaptive SAM)
    adaptive: bool = True  # ASAM (scale-invariant neighbourhood); False: plain SAM
    eps: float = 1e-12  # added to the gradient norm

    def check(self) -> None:
        if self.rho < 0:
            raise self.bad("rho", "must be >= 0")


class SAMStep(Hook):
    """Turns `fit`'s gradient step into a SAM step (see the module docstring)."""

    def __init__(self, task: Task, params: Sequence[nn.Parameter], rho: float, adaptive: bool, eps: float):
        self.task, self.params = task, list(params)
        self.rho, self.adaptive, self.eps = rho, adaptive, eps
        self.last: dict[str, float] = {}

    def perturbation(self, grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """e(w) per parameter (None where the loss does not depend on it)."""
        with torch.no_grad():
            scaled = [None if g is None else (p.abs() * g if self.adaptive else g) for p, g in zip(self.params, grads)]
            norm = torch.sqrt(sum((s ** 2).sum() for s in scaled if s is not None))
            scale = self.rho / (norm + self.eps)
            return [None if g is None else scale * (p ** 2 if self.adaptive else 1.0) * g
                    for p, g in zip(self.params, grads)]

    def on_loss(self, model: nn.Module, batch: Batch, loss: torch.Tensor, step: int) -> torch.Tensor:
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        e = self.perturbation(grads)
        with torch.no_grad():
            for p, ep in zip(self.params, e):
                if ep is not None:
                    p.add_(ep)  # climb to w + e(w)
        try:
            with frozen_norm_stats(model):
                perturbed = self.task.loss(model, batch)
            g_sam = torch.autograd.grad(perturbed, self.params, allow_unused=True)
        finally:
            with torch.no_grad():
                for p, ep in zip(self.params, e):
                    if ep is not None:
                        p.sub_(ep)  # back to w: the optimiser steps from w
        self.last = {"loss": float(loss.detach()), "sam_loss": float(perturbed.detach())}
        linear = sum((p * g).sum() for p, g in zip(self.params, g_sam) if g is not None)
        return perturbed.detach() + linear - linear.detach()  # value L(w+e), gradient g_SAM


@DEFENSES.register("ft_sam")
class FTSAM(Defense):
    Config = FTSAMConfig
    version = 1
    modalities = frozenset({"*"})  # uses only task.loss
    paper = ("Zhu, Wei, Shen, Li, Wu, Enhancing Fine-Tuning Based Backdoor Defense with Sharpness-Aware "
             "Minimization, ICCV 2023")
    smoke_overrides = {"fit": {"steps": 4, "batch_size": 32}}

    def purify(self, model: nn.Module, clean: Sequence[Sample], task: Task, *, rng: torch.Generator) -> nn.Module:
        cfg: FTSAMConfig = self.cfg  # type: ignore[assignment]
        params = [p for p in model.parameters() if p.requires_grad]
        hook = SAMStep(task, params, cfg.rho, cfg.adaptive, cfg.eps)
        result = task.fit(model, clean, cfg.fit, hooks=[hook], generator=child(rng, "fit"), params=params,
                          desc="ft_sam")
        self.report = {"rho": cfg.rho, "adaptive": cfg.adaptive, "tuned_params": count_tuned(params),
                       "steps": result.steps, "fit_seconds": result.seconds, "final_sam_loss": result.final_loss,
                       "seconds_per_step": result.seconds / max(1, result.steps)}
        return model
