"""AWM, Adversarial Weight Masking (Chai & Chen, "One-shot Neural Backdoor Erasing via Adversarial Weight
Masking", NeurIPS 2022).

A soft mask m ∈ [0,1] multiplies every convolution weight (W ⊙ m, m initialised to 1; the weights themselves are
frozen).  Each of `outer` rounds:
  inner max: a universal additive perturbation Δ (one per input shape, initialised to 0) is trained for
     `inner_iters` batches by gradient *ascent* (SGD, lr 10) of CE(f(x + Δ), f(x)'s own prediction), then scaled
     into the L1 ball ‖Δ‖₁ ≤ τ;
  outer min: the mask is trained for `inner_iters` batches with Adam on
     α · CE(f(x), y) + (1 − α) · CE(f(clamp(x + Δ, 0, 1)), y) + γ · ‖m‖₁,
     then clipped to [0,1] after every step;
the mask lr decays by 0.9 per round.  Finally the mask is folded into the weights (W ← W ⊙ m).
BatchNorm stays in eval mode throughout (the authors call model.eval()).

Reference for hyper-parameters and behaviour: the authors' code (github.com/jinghuichen/AWM, main.py,
models/maskedconv.py): α = 0.9, γ = 1e-8, τ = 1000 (CIFAR, 3·32·32 inputs), outer = 20, inner = 5 (epochs of the
clean set: inner_iters = ⌊|D| / batch⌋ · inner), batch 128, Δ by SGD lr 10, mask by Adam lr 1e-2 with
ExponentialLR(0.9), masks on every Conv weight, no shrink steps (the code's default shrink_steps = 0).

Both phases run inside `Task.fit` (hooks: `on_batch` adds Δ and swaps in the model's own predictions for the
ascent, `on_loss` negates it / adds the robust and L1 terms, `on_step_end` clips the mask), one `fit` per phase
and round, so the per-round lr decay is exact.

Deviations:
- τ is given per input element (1000 / 3072 ≈ 0.33), so that the L1 budget scales with the input size (28x28
  digits, 224x224 ImageNet); on CIFAR-sized inputs it equals the authors' 1000.
- A fresh Adam state each round (one `fit` per round); the authors keep one Adam across rounds.
- `fit` applies the task's training augmentation (random crop) to the batches; the authors' loader does not.
- Clean batches are drawn by shuffling, not by sampling with replacement.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from benchmark.registries import DEFENSES
from benchmark.rng import child
from defenses import _d_layers
from defenses.base import Defense, DefenseConfig
from tasks.base import Batch, FitConfig, Hook, Sample, Task


@dataclasses.dataclass(frozen=True)
class AWMConfig(DefenseConfig):
    alpha: float = 0.9  # weight of the clean loss; 1 − α on the perturbed loss
    gamma: float = 1e-8  # L1 weight on the mask
    trigger_norm_per_element: float = 1000.0 / 3072  # τ / input size (authors: τ = 1000 on 3x32x32)
    outer: int = 20
    inner: int = 5  # epochs of the holdout per phase: inner_iters = max(1, ⌊|D| / batch⌋) · inner
    batch_size: int = 128
    trigger_lr: float = 10.0  # SGD on Δ
    mask_lr: float = 1e-2  # Adam on the mask
    lr_decay: float = 0.9  # per outer round

    def check(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise self.bad("alpha", "must lie in [0, 1]")
        if self.gamma < 0 or self.trigger_norm_per_element < 0:
            raise self.bad("gamma" if self.gamma < 0 else "trigger_norm_per_element", "must be >= 0")
        for key in ("outer", "inner", "batch_size"):
            if getattr(self, key) < 1:
                raise self.bad(key, "must be >= 1")
        if self.trigger_lr <= 0 or self.mask_lr <= 0 or not 0 < self.lr_decay <= 1:
            raise self.bad("mask_lr", "learning rates must be > 0 and lr_decay in (0, 1]")


class WeightMask(nn.Module):
    """Parametrisation W -> W ⊙ m, m a trainable mask of W's shape initialised to ones."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.mask = nn.Parameter(torch.ones_like(weight))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


class TriggerAscent(Hook):
    """Inner max: the batch becomes (x + Δ, f(x)'s prediction) and the loss is negated (ascent on CE)."""

    def __init__(self, delta: nn.Parameter):
        self.delta = delta

    def on_fit_start(self, model: nn.Module, task: Task) -> None:
        model.eval()  # the authors' model.eval(): BN statistics stay fixed

    def on_batch(self, batch: Batch, step: int) -> Batch:
        return {**batch, "x": batch["x"] + self.delta, "y": self.predict(batch["x"])}

    def on_loss(self, model: nn.Module, batch: Batch, loss: torch.Tensor, step: int) -> torch.Tensor:
        return -loss

    def bind(self, model: nn.Module) -> TriggerAscent:
        self.model = model
        return self

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).argmax(dim=1)  # classification logits [B, K] -> [B]


class MaskObjective(Hook):
    """Outer min: α·CE(clean) + (1 − α)·CE(clamp(x + Δ)) + γ·‖m‖₁, mask clipped to [0,1] after each step."""

    def __init__(self, task: Task, masks: Sequence[nn.Parameter], pert: torch.Tensor, alpha: float, gamma: float):
        self.task, self.masks, self.pert, self.alpha, self.gamma = task, list(masks), pert, alpha, gamma

    def on_fit_start(self, model: nn.Module, task: Task) -> None:
        model.eval()

    def on_loss(self, model: nn.Module, batch: Batch, loss: torch.Tensor, step: int) -> torch.Tensor:
        robust = self.task.loss(model, {**batch, "x": (batch["x"] + self.pert).clamp(0, 1)})
        l1 = sum(m.abs().sum() for m in self.masks)
        return self.alpha * loss + (1 - self.alpha) * robust + self.gamma * l1

    def on_step_end(self, model: nn.Module, step: int) -> None:
        with torch.no_grad():
            for m in self.masks:
                m.clamp_(0, 1)


@DEFENSES.register("awm")
class AWM(Defense):
    Config = AWMConfig
    version = 1
    modalities = frozenset({"image", "video"})  # additive input perturbation in [0,1] space, class logits
    clean_data = "the clean holdout (the method is designed for very few samples, down to one per class)"
    paper = ("Chai, Chen, One-shot Neural Backdoor Erasing via Adversarial Weight Masking, NeurIPS 2022")
    smoke_overrides = {"outer": 2, "inner": 1, "batch_size": 32}

    def purify(self, model: nn.Module, clean: Sequence[Sample], task: Task, *, rng: torch.Generator) -> nn.Module:
        cfg: AWMConfig = self.cfg  # type: ignore[assignment]
        convs = [m for m in model.modules() if isinstance(m, _d_layers.CONV_TYPES)]
        orders = [list(m._parameters) for m in convs]
        trainable = {n: p.requires_grad for n, p in model.named_parameters()}
        model.requires_grad_(False)
        for conv in convs:
            parametrize.register_parametrization(conv, "weight", WeightMask(conv.weight))
        masks = [conv.parametrizations.weight[0].mask for conv in convs]  # type: ignore[union-attr]

        x0 = _d_layers.example_input(clean, task, n=1)
        delta = nn.Parameter(torch.zeros_like(x0))  # [1, *input shape], broadcast over the batch
        budget = cfg.trigger_norm_per_element * x0.numel()
        inner_iters = max(1, len(clean) // cfg.batch_size) * cfg.inner
        ascent_hook = TriggerAscent(delta).bind(model)
        seconds, steps = 0.0, 0
        for r in range(cfg.outer):
            # inner max: Δ from zero each round (as the authors), masks frozen
            with torch.no_grad():
                delta.zero_()
            for m in masks:
                m.requires_grad_(False)
            res = task.fit(model, clean, FitConfig(epochs=1, steps=inner_iters, batch_size=cfg.batch_size,
                                                   lr=cfg.trigger_lr, momentum=0.0, weight_decay=0.0,
                                                   schedule="constant"),
                           hooks=[ascent_hook], generator=child(rng, "trigger", r), params=[delta],
                           desc="awm-trigger")
            seconds += res.seconds
            with torch.no_grad():
                pert = delta.detach() * min(1.0, budget / max(float(delta.abs().sum()), 1e-12))
            # outer min: the mask
            for m in masks:
                m.requires_grad_(True)
            res = task.fit(model, clean, FitConfig(epochs=1, steps=inner_iters, batch_size=cfg.batch_size,
                                                   lr=cfg.mask_lr * cfg.lr_decay ** r, optimizer="adam",
                                                   weight_decay=0.0, schedule="constant"),
                           hooks=[MaskObjective(task, masks, pert, cfg.alpha, cfg.gamma)],
                           generator=child(rng, "mask", r), params=masks, desc="awm-mask")
            seconds += res.seconds
            steps += res.steps

        flat = torch.cat([m.detach().flatten() for m in masks])
        stats = {"mask_mean": float(flat.mean()), "mask_below_half": float((flat < 0.5).float().mean()),
                 "mask_zero": float((flat == 0).float().mean()), "mask_elements": int(flat.numel())}
        for conv, order in zip(convs, orders):
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)  # W <- W ⊙ m
            _d_layers.restore_param_order(conv, order)
        for n, p in model.named_parameters():
            p.requires_grad_(trainable.get(n, True))
        model.eval()
        self.report = {"masked_convs": len(convs), "tuned_params": int(flat.numel()), "steps": steps,
                       "inner_iters": inner_iters, "fit_seconds": seconds,
                       "trigger_l1_budget": budget, "last_trigger_l1": float(pert.abs().sum()), **stats}
        return model
