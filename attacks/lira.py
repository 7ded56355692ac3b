"""LIRA (Doan, Lao, Zhao, Li, ICCV 2021, "LIRA: Learnable, Imperceptible and Robust Backdoor Attacks").

A trigger generator T (an encoder-decoder with tanh output, attacks/_b_nets.py) adds an input-specific
perturbation bounded by eps: x' = clamp(x + eps * T(x), 0, 1), so ||x' - x||_inf <= eps.
Stage I (the first `stage1_fraction` of the classifier's training steps), every step:
  1. T is updated (its own Adam) to minimise CE(f(x'), backdoor label) through the current classifier f;
  2. the classifier takes `Task.fit`'s step on alpha * CE(f(x), y) + (1 - alpha) * CE(f(x'), backdoor label)
     with x' from a copy of T that is refreshed from the updated T once per epoch (the authors' `atkmodel` /
     `tgtmodel` pair).
Stage II (the rest of the training): T is fixed and the classifier is fine-tuned on the same objective.
Both stages run in train hooks: `on_batch` makes T's update and appends the triggered copies of the batch;
`Task.fit` does the classifier's step.  The final T is the attack's `state_dict()` (the test-time trigger).

Hyper-parameter reference: the authors' code (github.com/sunbelbd/invisible_backdoor_attacks) and BackdoorBench
(`attack/lira.py`, `config/attack/lira/default.yaml`): eps = test_eps = 0.01, alpha = 0.5, T's Adam lr 1e-4,
stage I = half of the training (both_train_epochs 50 of 100), the classifier not re-initialised between stage-I
epochs (avoid_clsmodel_reinitialization), target 0, all-to-one or all-to-all (y -> y + 1 mod K).

Measured on mnist5k (small_cnn, 10 epochs, seed 0; clean model 95.5 %; `fipbench run image_attacks`),
acc / ASR: 92.5 / 100 % (clean drop 3.0 points,
at the target's limit; 3.2 against the clean model re-trained on a later host, 95.7 %, which results/targets.md
uses: NOT met there, by less than the drift between hosts); seed 1: 91.1 / 100 %, 4.4 points down, NOT met.
Trained for 60 epochs (configs/image_attacks_long.yaml, seeds 0 | 1; the authors train 100, stage I the first
half as here): 97.7 / 100 | 97.8 / 100 %, 1.0 | 0.3 points under the 60-epoch clean models (98.7 | 98.1 %): met
on both seeds, so the 10-epoch miss is the joint training's cost of a short schedule.

Deviations:
- eps is in [0,1] pixel space.  The authors' 0.01 is in their normalised space (MNIST scaled to [-1,1]: 0.005
  in pixel space; CIFAR-10 with std ~0.25: ~0.0025).  fipbench's default is eps = 0.01 in pixel space (2.55
  grey levels), the paper's number on fipbench's scale; set `eps: 0.005` for the MNIST-equivalent bound.
- Stage I's length is a fraction of the run, `stage1_fraction` = 0.5 of `Task.fit`'s total steps (BackdoorBench's
  split: both_train_epochs 50 of epochs 100), so it scales with the run length.  The lagged copy's once-per-epoch
  refresh takes the epoch length from the poisoned split's size and the first batch's size.
- Stage II continues `Task.fit`'s single optimiser and schedule (BackdoorBench restarts SGD at finetune_lr 0.01).
- The loss weighting alpha * clean + (1 - alpha) * poisoned is realised by appending round(B (1 - alpha) /
  alpha) triggered copies (at most B) of the batch's samples to the batch; for alpha = 0.5 this is exactly the
  authors' objective (mean over B clean and B triggered samples).
- T is the Input-aware-style encoder-decoder (width 16, 2 levels up to 28 px; 32, 3 above) rather than the
  authors' strided autoencoder (MNIST) / U-Net (CIFAR); like them it ends in tanh.
- `select` returns no fixed indices: every batch is poisoned in the hook (LIRA has no poison rate; the
  configured `poison_rate` is unused).  The classifier's optimiser and schedule are `Task.fit`'s own.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from attacks._b_nets import backdoor_labels, build_net, evaluating, net_device, prefixed, unprefixed
from attacks.base import Attack, AttackConfig, Params, PoisonedDataset, Trigger
from benchmark.registries import ATTACKS
from tasks.base import Batch, Hook, Sample, Task


@dataclasses.dataclass(frozen=True)
class LiraConfig(AttackConfig):
    eps: float = 0.01  # L_inf bound of the perturbation in [0,1] pixel space
    alpha: float = 0.5  # weight of the clean loss; 1 - alpha on the triggered copies
    lr_atk: float = 1e-4  # T's Adam learning rate
    stage1_fraction: float = 0.5  # share of the training steps with joint training; the rest fine-tunes, T fixed

    def check(self) -> None:
        super().check()
        if not 0 < self.eps <= 1:
            raise self.bad("eps", "must lie in (0, 1]")
        if not 0.5 <= self.alpha < 1:
            raise self.bad("alpha", "must lie in [0.5, 1) (at most one triggered copy per sample)")
        if not self.lr_atk > 0:
            raise self.bad("lr_atk", "must be > 0")
        if not 0 <= self.stage1_fraction <= 1:
            raise self.bad("stage1_fraction", "must lie in [0, 1]")


def perturb(t: nn.Module, x: torch.Tensor, eps: float) -> torch.Tensor:
    return (x + eps * torch.tanh(t(x))).clamp(0, 1)  # [B,C,H,W], |x' - x| <= eps


class LiraTrigger(Trigger):
    modalities = frozenset({"image"})

    def __init__(self, attack: Lira):
        self.attack = attack

    def apply(self, sample: Sample, params: Params) -> Sample:
        t = self.attack.net
        with evaluating(t):
            out = perturb(t, sample.x[None].to(net_device(t)), self.attack.cfg.eps)[0]  # type: ignore[attr-defined]
        return dataclasses.replace(sample, x=out.to(sample.x))


class LiraHook(Hook):
    def __init__(self, attack: Lira, task: Task):
        self.attack, self.task = attack, task
        self.stage1_steps: int | None = None
        self.last_step = -1

    def on_fit_start(self, model: nn.Module, task: Task) -> None:
        cfg: LiraConfig = self.attack.cfg  # type: ignore[assignment]
        self.model = model
        self.tgt = self.attack.net.to(task.device).train()  # the T being trained (authors' tgtmodel)
        self.atk = copy.deepcopy(self.tgt).eval().requires_grad_(False)  # lagged copy for the classifier
        self.opt = torch.optim.Adam(self.tgt.parameters(), lr=cfg.lr_atk)

    def in_stage1(self, step: int) -> bool:
        return self.stage1_steps is not None and step < self.stage1_steps

    def on_batch(self, batch: Batch, step: int) -> Batch:
        cfg: LiraConfig = self.attack.cfg  # type: ignore[assignment]
        x, y = batch["x"], batch["y"]  # [B,C,H,W], [B]
        b = x.shape[0]
        if self.stage1_steps is None:  # epoch length = the loader's batches per epoch (drop_last)
            self.epoch_steps = max(1, self.attack.n_train // b)
            total = self.total_steps if self.total_steps is not None else self.epoch_steps  # set by `Task.fit`
            self.stage1_steps = round(cfg.stage1_fraction * total)
        self.last_step = step
        y_bd = backdoor_labels(self.task, y, cfg.label_mode, cfg.target)
        if self.in_stage1(step):
            # 1. T's step against the current classifier (only T's parameters receive gradients).
            loss = self.task.loss(self.model, {**batch, "x": perturb(self.tgt, x, cfg.eps), "y": y_bd})
            params = list(self.tgt.parameters())
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                p.grad = g
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if (step + 1) % self.epoch_steps == 0 or step + 1 == self.stage1_steps:
                self.atk.load_state_dict(self.tgt.state_dict())  # refresh the lagged copy once per epoch
        # 2. The classifier's batch: clean samples plus triggered copies with the backdoor label.
        n = min(b, round(b * (1 - cfg.alpha) / cfg.alpha))
        with torch.no_grad():
            x_bd = perturb(self.atk, x[:n], cfg.eps)
        out = {**batch, "x": torch.cat([x, x_bd]), "y": torch.cat([y, y_bd[:n]])}
        if "index" in batch:
            out["index"] = torch.cat([batch["index"], batch["index"][:n]])
        return out

    def on_fit_end(self, model: nn.Module) -> None:
        if self.in_stage1(self.last_step + 1):  # the run ended within stage I: T's latest weights are the trigger
            self.atk.load_state_dict(self.tgt.state_dict())
        self.attack.net.load_state_dict(self.atk.state_dict())
        self.attack.net.eval()


@ATTACKS.register("lira")
class Lira(Attack):
    Config = LiraConfig
    version = 2  # 2: stage I as a fraction of the run's steps (was 5 epochs)
    modalities = frozenset({"image"})
    paper = "Doan, Lao, Zhao & Li, LIRA: Learnable, Imperceptible and Robust Backdoor Attacks, ICCV 2021"
    smoke_overrides = {"stage1_fraction": 1.0}  # the smoke fit's few steps all train T

    def __init__(self, cfg: LiraConfig | None = None, *, seed: int = 0):
        super().__init__(cfg, seed=seed)
        self._net: nn.Module | None = None
        self._shape: tuple[int, ...] | None = None
        self.n_train = 0

    def build(self, shape: Sequence[int]) -> None:
        self._shape = tuple(int(v) for v in shape)
        self._net = build_net(shape, shape[0], self.seed, "lira", "T")

    @property
    def net(self) -> nn.Module:
        if self._net is None:
            raise RuntimeError("lira: no generator yet; call prepare() or load_state_dict() first")
        return self._net

    def ensure(self, task: Task) -> None:
        if self._net is None or self._shape != tuple(task.input_shape):  # type: ignore[attr-defined]
            self.build(task.input_shape)  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"shape": torch.tensor(self._shape), **prefixed("T", self.net)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.build(state["shape"].tolist())
        self.net.load_state_dict(unprefixed("T", state))
        self.net.eval()

    def prepare(self, task: Task, train: Sequence[Sample], *, generator: torch.Generator) -> None:
        self.build(task.input_shape)  # type: ignore[attr-defined]  # T is learned jointly, in the hooks

    def select(self, task: Task, data: Sequence[Sample]) -> list[int]:
        return []  # every batch is poisoned in the train hook (see the module docstring)

    def poison(self, task: Task, data: Sequence[Sample], indices: Sequence[int] | None = None,
               split: str = "train") -> PoisonedDataset:
        if split == "train":
            self.n_train = len(data)
        return super().poison(task, data, indices, split)

    def trigger(self, task: Task) -> Trigger:
        self.ensure(task)
        return LiraTrigger(self)

    def train_hooks(self, task: Task) -> list[Hook]:
        self.ensure(task)
        return [LiraHook(self, task)]
