"""Adversarial Neuron Pruning (Wu & Wang, "Adversarial Neuron Perturbations Expose Backdoors", NeurIPS 2021).

Reference code: github.com/csdongxian/ANP_backdoor (optimize_mask_cifar.py, prune_neuron_cifar.py) and
BackdoorBench's defense/anp.py with config/defense/anp/config.yaml.

Method.  Every neuron k (a BatchNorm channel, see `defenses._e_masks`) gets a mask m_k in [0,1] and
multiplicative adversarial perturbations δ_k (weight) and ξ_k (bias), |δ|,|ξ| <= eps.  Per mini-batch:
  1. δ, ξ ~ U[-eps, eps]; `anp_steps` steps of SGD (lr eps/anp_steps) *ascending* the clean loss with the
     perturbation on, then clipped to [-eps, eps];
  2. the masks take one SGD step (lr 0.2, momentum 0.9) on  α·L(m) + (1-α)·L(m, δ, ξ)  and are clipped to [0,1].
Then the neurons with small masks are pruned (their BatchNorm weight set to 0) in the *original* model; the
masks are learned on a copy, whose BatchNorm running statistics may drift (the authors likewise learn masks on
one network and prune a freshly loaded one).

Hyper-parameters (paper / authors' code / BackdoorBench): eps 0.4, anp_steps 1, α 0.2, mask lr 0.2 with
momentum 0.9, 2,000 iterations of batch 128, model in train mode, the clean set with the training
augmentation; pruning by threshold 0.2 (the paper's reported setting).

Deviations.
- Selection: the authors sweep thresholds and report them on test data; BackdoorBench picks the threshold with
  the lowest *test* ASR among those within 10 % relative *test* accuracy (acc_ratio 0.1).  fipbench never looks
  at test data: `select: fixed` (default) prunes at `amount` (threshold 0.2, the paper's setting);
  `select: holdout` takes the largest grid threshold whose *clean holdout* accuracy stays within
  `tolerance` (0.1 relative, BackdoorBench's acc_ratio) of the unpruned model's.
- The mask step is `Task.fit` with a hook (the noise maximisation runs in `on_batch`, the perturbed loss is added
  in `on_loss`), so the clean term sees the task's standard augmentation, as in the authors' code.
- Models without BatchNorm use their LayerNorm/GroupNorm weights as neurons (ANP is defined for BatchNorm).
"""

from __future__ import annotations

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
class ANPConfig(DefenseConfig):
    # Mask optimisation: SGD lr 0.2, momentum 0.9, no weight decay, 2,000 iterations of 128 (authors).
    fit: FitConfig = FitConfig(epochs=1, steps=2000, batch_size=128, lr=0.2, momentum=0.9, weight_decay=0.0,
                               schedule="constant")
    eps: float = 0.4  # anp_eps: bound of the multiplicative neuron perturbations
    steps: int = 1  # anp_steps: noise ascent steps per batch
    alpha: float = 0.2  # anp_alpha: weight of the natural loss (1 - alpha on the perturbed loss)
    prune_by: Literal["threshold", "fraction"] = "threshold"
    amount: float = 0.2  # threshold on mask values, or fraction of neurons
    select: Literal["fixed", "holdout"] = "fixed"
    grid_max: float = 0.9  # holdout selection grid: step, 2·step, ..., grid_max (authors: 0.05 to 0.90)
    grid_step: float = 0.05
    tolerance: float = 0.1  # relative clean-holdout drop allowed by the holdout selection

    def check(self) -> None:
        if self.eps < 0:
            raise self.bad("eps", "must be >= 0")
        if self.steps < 1:
            raise self.bad("steps", "must be >= 1")
        if not 0 <= self.alpha <= 1:
            raise self.bad("alpha", "must lie in [0, 1]")
        if not 0 <= self.amount <= 1:
            raise self.bad("amount", "must lie in [0, 1]")
        if not 0 < self.grid_step <= self.grid_max <= 1:
            raise self.bad("grid_step", "need 0 < grid_step <= grid_max <= 1")
        if self.tolerance < 0:
            raise self.bad("tolerance", "must be >= 0")


class ANPObjective(Hook):
    """Inner maximisation over the neuron noise before each batch, perturbed loss added to the natural one."""

    def __init__(self, masked: MaskedModel, task: Task, cfg: ANPConfig, generator: torch.Generator):
        self.masked, self.task, self.cfg, self.generator = masked, task, cfg, generator
        self.noise_opt = torch.optim.SGD(masked.noise_params(), lr=cfg.eps / cfg.steps)

    def on_batch(self, batch: Batch, step: int) -> Batch:
        if self.cfg.eps > 0:
            m = self.masked
            m.reset_noise(self.cfg.eps, self.generator)
            m.set_perturbed(True)
            for _ in range(self.cfg.steps):
                self.noise_opt.zero_grad(set_to_none=True)
                (-self.task.loss(m.model, batch)).backward()  # ascend the loss in δ, ξ
                self.noise_opt.step()
                m.clip(self.cfg.eps)
            m.set_perturbed(False)  # Task.fit's own forward is the natural loss
        return batch

    def on_loss(self, model: nn.Module, batch: Batch, loss: torch.Tensor, step: int) -> torch.Tensor:
        if self.cfg.eps == 0:
            return loss
        self.masked.set_perturbed(True)
        robust = self.task.loss(model, batch)
        self.masked.set_perturbed(False)
        return self.cfg.alpha * loss + (1 - self.cfg.alpha) * robust

    def on_step_end(self, model: nn.Module, step: int) -> None:
        self.masked.clip(self.cfg.eps)


@DEFENSES.register("anp")
class ANP(Defense):
    Config = ANPConfig
    version = 1
    modalities = frozenset({"*"})  # needs only task.loss and normalisation layers
    clean_data = "the clean holdout (paper: 1 % of CIFAR-10 training data, 500 images)"
    paper = ("Wu & Wang, Adversarial Neuron Perturbations Expose Backdoors in Deep Neural Networks, "
             "NeurIPS 2021")
    smoke_overrides = {"fit": {"steps": 4, "batch_size": 32}}

    def purify(self, model: nn.Module, clean: Sequence[Sample], task: Task, *, rng: torch.Generator) -> nn.Module:
        cfg: ANPConfig = self.cfg  # type: ignore[assignment]
        masked = MaskedModel(model, bias_noise=True)
        hook = ANPObjective(masked, task, cfg, child(rng, "noise"))
        params = masked.mask_params()
        result = task.fit(masked.model, clean, cfg.fit, hooks=[hook], generator=child(rng, "fit"), params=params,
                          desc="anp")
        values = masked.values()
        del masked
        trace = None
        amount = cfg.amount
        if cfg.select == "holdout":
            n = int(round(cfg.grid_max / cfg.grid_step))
            grid = [round(cfg.grid_step * (i + 1), 10) for i in range(n)]
            amount, trace = select_on_holdout(model, values, task, clean, cfg.prune_by, grid, cfg.tolerance)
        chosen = choose(values, cfg.prune_by, amount)
        prune(model, chosen)
        model.eval()
        self.report = {"tuned_params": count_tuned(params), "steps": result.steps, "fit_seconds": result.seconds,
                       "neurons": len(values), "pruned_neurons": len(chosen), "prune_by": cfg.prune_by,
                       "amount": amount, "select": cfg.select, "selection_trace": trace,
                       "below_paper_threshold_0.2": sum(v < 0.2 for _, _, v in values),
                       "mask_quantiles": _quantiles([v for _, _, v in values])}
        return model


def _quantiles(v: list[float]) -> dict[str, float]:
    t = torch.tensor(v)
    return {f"q{int(q * 100)}": float(t.quantile(q)) for q in (0.0, 0.05, 0.25, 0.5, 1.0)}
