"""Shared Adversarial Unlearning (Wei, Zhang, Zha, Wu, "Shared Adversarial Unlearning: Backdoor Mitigation by
Unlearning Shared Adversarial Examples", NeurIPS 2023).

Reference code: BackdoorBench's defense/sau.py (the official implementation, by the first author) and
config/defense/sau/config.yaml.

A shared adversarial example (SAE) of the model h and the frozen backdoored reference h₀ is x̃ = x + ε,
‖ε‖∞ <= 0.2, that both misclassify *with the same label*.  Per batch:
  1. Shared PGD (5 steps, step 0.2 with the sign of the gradient, start at ε = +0.2, early exit when every
     sample is shared) minimising  β₁·L_adv + β₂·L_share,  β₁ = 0.01, β₂ = 1:
     L_adv = −½(Σ CE(h(x̃),y) over samples h still gets right (h(x̃) = h(x)) + same for h₀) / B,
     L_share = Σ JS(h(x̃) ‖ h₀(x̃)) over the samples that are not yet shared / B.
  2. One update of h on  λ₁·CE(h(x), y) + λ₂·CE(h(x̃), y) + λ₃·L_sar,  λ = (1, 0, 1), where
     L_sar = −½ Σ_{i∈P} [log(1 − p_h(ŷ₀ᵢ | x̃ᵢ)) + log(1 − p_h(ŷ₀ᵢ | x̃ᵢ))] / B (the authors' numerically split
     form), ŷ₀ = h₀(x̃) and P the samples where h₀(x̃) is wrong and differs from h₀(x): unlearning pushes h
     away from the reference's adversarial label, so the shared examples stop being shared.
Settings (BackdoorBench): Adam lr 1e-4, cosine schedule, batch 256, 100 rounds (passes over the clean set),
BatchNorm frozen (eval mode, `train_mode` False), L_inf bound 0.2 in [0,1] pixel space, no clamping of x̃ to
[0,1] (as the authors).

Deviations.
- The update runs in `Task.fit` with a hook (PGD in `on_batch`, L_sar in `on_loss`, eval mode set in
  `on_fit_start`), so the batches carry the task's training augmentation; BackdoorBench loads the clean set
  without augmentation.
- Budget: 100 rounds of ceil(|D|/256) batches in BackdoorBench; fipbench's `fit` drops the last partial batch
  when |D| > batch, so a round is floor(|D|/256) batches (at least one).
- Classification on images only (labels and logits; an input-space L_inf perturbation).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.registries import DEFENSES
from benchmark.rng import child
from defenses.base import Defense, DefenseConfig, count_tuned
from tasks.base import Batch, FitConfig, Hook, Sample, Task


@dataclasses.dataclass(frozen=True)
class SAUConfig(DefenseConfig):
    n_rounds: int = 100  # passes over the clean holdout
    fit: FitConfig = FitConfig(epochs=1, batch_size=256, lr=1e-4, optimizer="adam", weight_decay=0.0,
                               schedule="cosine")
    norm_bound: float = 0.2  # L_inf radius of the perturbation, [0,1] pixel space
    adv_lr: float = 0.2
    adv_steps: int = 5
    beta_1: float = 0.01  # weight of L_adv in the PGD objective
    beta_2: float = 1.0  # weight of L_share in the PGD objective
    lmd_1: float = 1.0  # clean CE
    lmd_2: float = 0.0  # adversarial-training CE (off by default, as in the paper)
    lmd_3: float = 1.0  # shared adversarial risk

    def check(self) -> None:
        for key in ("n_rounds", "adv_steps"):
            if getattr(self, key) < 1:
                raise self.bad(key, "must be >= 1")
        if not self.norm_bound > 0:
            raise self.bad("norm_bound", "must be > 0")


def shared(model: nn.Module, ref: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[B] bool: x_adv is a shared adversarial example of (model, ref): both wrong, with the same label."""
    with torch.no_grad():
        p, p0 = model(x_adv).argmax(1), ref(x_adv).argmax(1)
    return (p != y) & (p0 != y) & (p == p0)


def shared_pgd(model: nn.Module, ref: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: SAUConfig) -> torch.Tensor:
    """The perturbation ε [B,C,H,W], ‖ε‖∞ <= norm_bound, of the authors' Shared_PGD (see module docstring)."""
    with torch.no_grad():
        own, own0 = model(x).argmax(1), ref(x).argmax(1)  # [B]
    eps = torch.full_like(x, cfg.norm_bound).requires_grad_(True)  # init "max"
    b = x.shape[0]
    for _ in range(cfg.adv_steps):
        logits, logits0 = model(x + eps), ref(x + eps)  # [B,K]
        pred, pred0 = logits.argmax(1), logits0.argmax(1)
        ok, ok0 = pred == own, pred0 == own0  # attack not yet successful
        is_shared = ~ok & ~ok0 & (pred == pred0)
        adv = -(F.cross_entropy(logits, y, reduction="none")[ok].sum()
                + F.cross_entropy(logits0, y, reduction="none")[ok0].sum()) / 2 / b
        p, p0 = logits.softmax(1).clamp(min=1e-8), logits0.softmax(1).clamp(min=1e-8)
        mix = 0.5 * (p + p0)
        js = 0.5 * (p * p.log() + p0 * p0.log()) - 0.5 * (p * mix.log() + p0 * mix.log())  # [B,K]
        share = js[~is_shared].sum() / b
        (grad,) = torch.autograd.grad(cfg.beta_1 * adv + cfg.beta_2 * share, [eps])
        with torch.no_grad():
            eps -= cfg.adv_lr * grad.sign()
            eps.clamp_(-cfg.norm_bound, cfg.norm_bound)
        if bool(is_shared.all()):
            break
    return eps.detach()


class SAUObjective(Hook):
    def __init__(self, ref: nn.Module, cfg: SAUConfig, num_classes: int):
        self.ref, self.cfg, self.k = ref, cfg, num_classes
        self.model: nn.Module | None = None
        self.eps: torch.Tensor | None = None
        self.shared_fraction: list[float] = []

    def on_fit_start(self, model: nn.Module, task: Task) -> None:
        self.model = model
        model.eval()  # BatchNorm frozen during unlearning (BackdoorBench's default, train_mode False)

    def on_batch(self, batch: Batch, step: int) -> Batch:
        assert self.model is not None
        self.eps = shared_pgd(self.model, self.ref, batch["x"], batch["y"], self.cfg)
        return batch

    def on_loss(self, model: nn.Module, batch: Batch, loss: torch.Tensor, step: int) -> torch.Tensor:
        cfg = self.cfg
        x, y = batch["x"], batch["y"]
        x_adv = x + self.eps
        logits_adv = model(x_adv)  # [B,K]
        with torch.no_grad():
            own0 = self.ref(x).argmax(1)
            pred0 = self.ref(x_adv).argmax(1)
            pred = logits_adv.argmax(1)
        self.shared_fraction.append(float(((pred != y) & (pred0 != y) & (pred == pred0)).float().mean()))
        total = cfg.lmd_1 * loss
        if cfg.lmd_2:
            total = total + cfg.lmd_2 * F.cross_entropy(logits_adv, y)
        poison = (pred0 != y) & (pred0 != own0)  # the reference's adversarial label, potential backdoor
        if cfg.lmd_3 and bool(poison.any()):
            prob = logits_adv.softmax(1)
            hit = F.one_hot(pred0, self.k).to(prob.dtype)
            pos = (prob * hit).sum(1)[poison]
            neg = (prob * (1 - hit)).sum(1)[poison]
            sar = (-torch.log(1e-6 + neg.clamp(max=0.999)).sum()
                   - torch.log(1 + 1e-6 - pos.clamp(min=0.001)).sum()) / 2 / x.shape[0]
            total = total + cfg.lmd_3 * sar
        return total


@DEFENSES.register("sau")
class SAU(Defense):
    Config = SAUConfig
    version = 1
    modalities = frozenset({"image"})
    clean_data = "the clean holdout (paper / BackdoorBench: 5 % of the training set)"
    paper = ("Wei, Zhang, Zha, Wu, Shared Adversarial Unlearning: Backdoor Mitigation by Unlearning Shared "
             "Adversarial Examples, NeurIPS 2023")
    smoke_overrides = {"n_rounds": 2, "adv_steps": 2, "fit": {"batch_size": 32}}

    def purify(self, model: nn.Module, clean: Sequence[Sample], task: Task, *, rng: torch.Generator) -> nn.Module:
        cfg: SAUConfig = self.cfg  # type: ignore[assignment]
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        per_round = max(1, len(clean) // cfg.fit.batch_size)
        fit_cfg = cfg.fit.replace(steps=cfg.n_rounds * per_round)
        hook = SAUObjective(ref, cfg, task.num_classes)  # type: ignore[attr-defined]
        params = [p for p in model.parameters() if p.requires_grad]
        result = task.fit(model, clean, fit_cfg, hooks=[hook], generator=child(rng, "fit"), params=params,
                          desc="sau")
        model.eval()
        sf = hook.shared_fraction
        self.report = {"tuned_params": count_tuned(params), "steps": result.steps, "fit_seconds": result.seconds,
                       "shared_fraction_first": sf[0] if sf else None, "shared_fraction_last": sf[-1] if sf else None}
        return model
