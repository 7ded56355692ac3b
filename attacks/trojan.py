"""TrojanNN (Liu, Ma, Aafer, Lee, Zhai, Wang, Zhang, NDSS 2018, "Trojaning Attack on Neural Networks").

The trigger is a square patch stamped like BadNets, but its pixel values are not fixed: they are optimised to
drive a few selected internal neurons of a model to a high value, so that the trigger rides on features the
network already has.  Steps (in `prepare`):

1. The attacker owns no pre-trained victim, so a clean surrogate is trained on the clean training split
   (`attacks._surrogate.train_surrogate`, same architecture family as the victim by default: small_cnn).
2. Neuron selection as in TrojanZoo's TrojanNN (the reference implementation BackdoorBench builds on): the
   layer is the input of the model's first fully-connected layer (the flattened feature vector, TrojanZoo's
   `preprocess_layer='flatten'`, `preprocess_next_layer='classifier.fc'`); the `neuron_num` = 2 neurons chosen
   are those with the largest summed absolute weight into that next layer (the paper: "the neurons most strongly
   connected", i.e. the largest connection weights).
3. Trigger generation: the masked pattern p = (tanh(w)+1)/2 (valid pixels by construction) is stamped on a
   blank (all-zero) image, and w is optimised with Adam (lr 0.1, cosine schedule, 1000 steps) to minimise
   sum_k (|a_k(x_p)| - 100)^2 over the selected neurons a_k (TrojanZoo: target_value 100, neuron_lr 0.1,
   neuron_epoch 1000); w starts from a standard normal draw.

Poisoning: a square of `area` = 7 % of the image (the paper's middle trigger size of 4 / 7 / 10 %; side
round(sqrt(0.07) * H): 7 px on 28, 8 px on 32, 4 px on 16) in the bottom-right corner, alpha 1; poison rate
10 %, target 0, all2one or all2all (y -> y+1) as in the FIP paper's two Trojan settings.

Measured on mnist5k (small_cnn, 10 epochs, seed 0; clean model 95.5 %; `fipbench run image_attacks`),
acc / ASR: all-to-one 95.1 / 100 %;
all-to-all 95.3 / 55.0 % (one patch must map every class to the next, which 10 epochs do not learn); trained
for 30 epochs (image_attacks' second group) all-to-all reaches 98.2 / 94.5 % (seed 1: 97.9 / 93.7 %).

Deviations: the paper retrains the victim with reverse-engineered inputs; fipbench (like BackdoorBench and
TrojanZoo) poisons the training data with the optimised trigger instead and trains from scratch.  The square
mask instead of a watermark-shaped one (the paper shows both; TrojanZoo defaults to a square).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attacks._image import CompositeTrigger
from attacks._surrogate import train_surrogate
from attacks.base import Attack, AttackConfig, Trigger
from benchmark.errors import FipbenchError
from benchmark.progress import progress_bar
from benchmark.registries import ATTACKS
from benchmark.rng import child
from tasks.base import FitConfig, Sample, Task


@dataclasses.dataclass(frozen=True)
class TrojanConfig(AttackConfig):
    area: float = 0.07  # trigger square's share of the image area (side = round(sqrt(area) * H), >= 1 px)
    corner: Literal["bottom_right", "bottom_left", "top_right", "top_left"] = "bottom_right"
    neuron_num: int = 2  # neurons the trigger is optimised to excite (TrojanZoo default)
    target_value: float = 100.0  # activation the selected neurons are pushed towards (TrojanZoo default)
    neuron_lr: float = 0.1  # Adam learning rate on the pattern's tanh-parameters
    neuron_steps: int = 1000  # optimisation steps (TrojanZoo's neuron_epoch)
    surrogate: str = "small_cnn"  # architecture of the attacker's clean surrogate
    surrogate_epochs: int = 5

    def check(self) -> None:
        super().check()
        if not 0 < self.area <= 1:
            raise self.bad("area", "must lie in (0, 1]")
        for key in ("neuron_num", "neuron_steps", "surrogate_epochs"):
            if getattr(self, key) < 1:
                raise self.bad(key, "must be >= 1")
        if not self.neuron_lr > 0:
            raise self.bad("neuron_lr", "must be > 0")


def first_linear(model: nn.Module) -> nn.Linear:
    """The first fully-connected layer: its input is the flattened feature vector whose neurons are excited."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return m
    raise FipbenchError("trojan: the surrogate has no nn.Linear layer whose input features could be excited")


def select_neurons(layer: nn.Linear, k: int) -> torch.Tensor:
    """Indices [k] of the input features with the largest summed |weight| into `layer` (most connected)."""
    return layer.weight.detach().abs().sum(dim=0).argsort(descending=True)[:k]


class FeatureProbe:
    """Captures the input of `layer` on every forward ([B, D]) through a forward pre-hook."""

    def __init__(self, layer: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = layer.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.value = args[0]

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        model(x)
        assert self.value is not None
        return self.value

    def close(self) -> None:
        self.handle.remove()


def patch_slices(h: int, w: int, side: int, corner: str) -> tuple[slice, slice]:
    rows = slice(h - side, h) if corner.startswith("bottom") else slice(0, side)
    cols = slice(w - side, w) if corner.endswith("right") else slice(0, side)
    return rows, cols


@ATTACKS.register("trojan")
class Trojan(Attack):
    Config = TrojanConfig
    version = 1
    modalities = frozenset({"image"})
    paper = "Liu et al., Trojaning Attack on Neural Networks, NDSS 2018"
    smoke_overrides = {"neuron_steps": 20, "surrogate_epochs": 1}

    def __init__(self, cfg: AttackConfig | None = None, *, seed: int = 0):
        super().__init__(cfg, seed=seed)
        self.patch: torch.Tensor | None = None  # [C, side, side] optimised pixel values in [0,1]
        self.neurons: torch.Tensor | None = None  # [neuron_num] excited feature indices (for the record)

    def side(self, task: Task) -> int:
        _, h, w = task.input_shape  # type: ignore[attr-defined]
        return max(1, min(h, w, round(math.sqrt(self.cfg.area) * h)))  # type: ignore[attr-defined]

    def mask(self, task: Task) -> torch.Tensor:
        """[1,H,W] binary mask of the trigger square."""
        cfg: TrojanConfig = self.cfg  # type: ignore[assignment]
        _, h, w = task.input_shape  # type: ignore[attr-defined]
        m = torch.zeros(1, h, w)
        rows, cols = patch_slices(h, w, self.side(task), cfg.corner)
        m[:, rows, cols] = 1.0
        return m

    def stamp(self, task: Task, patch: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        """`background` [B,C,H,W] with `patch` [C,s,s] written into the trigger square (differentiable)."""
        cfg: TrojanConfig = self.cfg  # type: ignore[assignment]
        _, h, w = task.input_shape  # type: ignore[attr-defined]
        s = self.side(task)
        rows, cols = patch_slices(h, w, s, cfg.corner)
        # Pad the patch to full size so the stamp stays one differentiable expression.
        full = F.pad(patch, (cols.start, w - cols.stop, rows.start, h - rows.stop))  # [C,H,W]
        m = self.mask(task).to(background)
        return background * (1 - m) + full.to(background) * m

    def neuron_activation(self, task: Task, model: nn.Module, patch: torch.Tensor) -> torch.Tensor:
        """|a_k| [neuron_num] of the selected neurons for the patch stamped on a blank image."""
        assert self.neurons is not None
        c, h, w = task.input_shape  # type: ignore[attr-defined]
        probe = FeatureProbe(first_linear(model))
        try:
            x = self.stamp(task, patch, torch.zeros(1, c, h, w, device=task.device))  # [1,C,H,W]
            return probe(model, x)[0, self.neurons.to(task.device)].abs()
        finally:
            probe.close()

    def prepare(self, task: Task, train: Sequence[Sample], *, generator: torch.Generator) -> None:
        self.check_task(task)
        cfg: TrojanConfig = self.cfg  # type: ignore[assignment]
        model = train_surrogate(task, train, generator=child(generator, "surrogate"), arch=cfg.surrogate,
                                fit=FitConfig(epochs=cfg.surrogate_epochs, batch_size=64, lr=0.05))
        self.neurons = select_neurons(first_linear(model), cfg.neuron_num).cpu()
        c = task.input_shape[0]  # type: ignore[attr-defined]
        s = self.side(task)
        w = torch.randn(c, s, s, generator=child(generator, "trojan-mark-init")).to(task.device).requires_grad_()
        # A dedicated loop: the update is a gradient step on the trigger pixels for one synthetic input, not a
        # step on a loss over the task's data, so Task.fit does not apply.
        opt = torch.optim.Adam([w], lr=cfg.neuron_lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.neuron_steps)
        with progress_bar("trojan trigger", cfg.neuron_steps) as tick:
            for _ in range(cfg.neuron_steps):
                act = self.neuron_activation(task, model, (torch.tanh(w) + 1) / 2)  # [neuron_num]
                loss = F.mse_loss(act, torch.full_like(act, cfg.target_value), reduction="sum")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                tick(float(loss.detach()))
        self.patch = ((torch.tanh(w.detach()) + 1) / 2).cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.patch is None or self.neurons is None:
            return {}
        return {"patch": self.patch, "neurons": self.neurons}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {"patch", "neurons"}:
            raise FipbenchError(f"trojan: expected learned state 'patch' and 'neurons', got {sorted(state)}; "
                                f"delete the artifact so it is rebuilt")
        self.patch, self.neurons = state["patch"].float().cpu(), state["neurons"].long().cpu()

    def trigger(self, task: Task) -> Trigger:
        if self.patch is None:
            raise FipbenchError("trojan: the trigger is optimised in prepare(); call prepare() (or load the "
                                "artifact's attack state) before poisoning")
        c, h, w = task.input_shape  # type: ignore[attr-defined]
        if tuple(self.patch.shape) != (c, self.side(task), self.side(task)):
            raise FipbenchError(f"trojan: learned patch {tuple(self.patch.shape)} does not fit input {(c, h, w)}")
        pattern = self.stamp(task, self.patch, torch.zeros(1, c, h, w))[0]  # [C,H,W], zero outside the square
        return CompositeTrigger(pattern, self.mask(task), alpha=1.0)
