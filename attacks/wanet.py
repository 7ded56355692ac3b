"""WaNet (Nguyen & Tran, ICLR 2021, "WaNet - Imperceptible Warping-based Backdoor Attack").

The trigger is a fixed, smooth random warp: a k x k field of random 2-D displacements (uniform in [-1,1],
normalised to mean absolute value 1) is upsampled bicubically to H x W and added, scaled by s / H, to the
identity sampling grid; the image is resampled with `torch.nn.functional.grid_sample` (bilinear,
align_corners=True, the grid clamped to [-1,1] and multiplied by grid_rescale).  "Noise mode" trains the model
to ignore every other warp: per batch, cross_ratio x (backdoor count) clean samples are resampled with the
trigger grid plus independent per-pixel random offsets (uniform in [-1,1] / H) and keep their clean label.

Hyper-parameter reference: the authors' code (github.com/VinAIResearch/Warping-based_Backdoor_Attack-release)
and BackdoorBench's `config/attack/wanet/default.yaml`: k = 4, s = 0.5, grid_rescale = 1, cross_ratio = 2,
poison rate 10 %, target 0, all-to-one (all-to-all: y -> y + 1 mod K).

Measured on mnist5k (small_cnn, 10 epochs, seed 0; clean model 95.5 %; `fipbench run image_attacks`),
acc / ASR: 94.6 / 98.4 %; all-to-all
95.0 / 30.0 % (measured earlier).

Deviations:
- Poisoned samples are fixed indices (fipbench's `PoisonedDataset`, BackdoorBench's rule: round(rate * N)
  non-target samples), not the first int(rate * B) samples of every batch as in the authors' loop; with shuffled
  batches both poison the same expected share.  The noise-mode samples are still drawn per batch, by a train
  hook (`on_batch`): int(int(rate * B) * cross_ratio) of the batch's unpoisoned samples are replaced by their
  noise-warped copies (as the authors replace, rather than add, batch entries), chosen and perturbed with a
  generator derived from (seed, step).
- The task's augmentation (random crop) runs before the hook, so noise-mode samples are augmented then warped;
  the authors warp, then augment (their extra random rotation is not part of fipbench's recipe).
- For non-square images the field is scaled by s / W horizontally and s / H vertically (authors: square only).
The control field (1 x 2 x k x k) is the attack's `state_dict()`, drawn from the run seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from attacks._b_nets import clean_positions
from attacks.base import Attack, AttackConfig, Params, PoisonedDataset, Trigger
from benchmark.registries import ATTACKS
from benchmark.rng import generator
from tasks.base import Batch, Hook, Sample, Task


@dataclasses.dataclass(frozen=True)
class WaNetConfig(AttackConfig):
    k: int = 4  # control grid size
    s: float = 0.5  # warping strength
    grid_rescale: float = 1.0
    cross_ratio: float = 2.0  # noise-mode samples per backdoor sample

    def check(self) -> None:
        super().check()
        if self.k < 2:
            raise self.bad("k", "must be >= 2")
        if self.s < 0:
            raise self.bad("s", "must be >= 0")
        if not self.grid_rescale > 0:
            raise self.bad("grid_rescale", "must be > 0")
        if self.cross_ratio < 0:
            raise self.bad("cross_ratio", "must be >= 0")


def control_field(k: int, gen: torch.Generator) -> torch.Tensor:
    """[1,2,k,k] random displacements in [-1,1], normalised to mean |.| = 1 (the authors' `ins`)."""
    ins = torch.rand(1, 2, k, k, generator=gen) * 2 - 1
    return ins / ins.abs().mean()


def warp_grid(field: torch.Tensor, h: int, w: int, s: float, rescale: float) -> torch.Tensor:
    """The trigger's sampling grid [1,H,W,2] (x, y in [-1,1]) for a control field [1,2,k,k]."""
    noise = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)  # [1,H,W,2]
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    identity = torch.stack((xs, ys), dim=2)[None]  # [1,H,W,2]; grid_sample wants (x, y)
    scale = torch.tensor([s / w, s / h])
    return ((identity + scale * noise) * rescale).clamp(-1, 1)


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Resample images x [B,C,H,W] at grid [B or 1,H,W,2]; a convex combination of pixels (zeros outside)."""
    if grid.shape[0] != x.shape[0]:
        grid = grid.expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid.to(x), mode="bilinear", padding_mode="zeros", align_corners=True).clamp(0, 1)


class WarpTrigger(Trigger):
    modalities = frozenset({"image"})

    def __init__(self, grid: torch.Tensor):
        self.grid = grid  # [1,H,W,2]

    def apply(self, sample: Sample, params: Params) -> Sample:
        return dataclasses.replace(sample, x=warp(sample.x[None], self.grid)[0])  # x [C,H,W]


class NoiseModeHook(Hook):
    """Replaces some unpoisoned samples of each batch by noise-warped copies that keep their clean label."""

    def __init__(self, attack: WaNet, grid: torch.Tensor, poisoned: frozenset[int]):
        self.attack, self.grid, self.poisoned = attack, grid, poisoned

    def on_batch(self, batch: Batch, step: int) -> Batch:
        cfg: WaNetConfig = self.attack.cfg  # type: ignore[assignment]
        x = batch["x"]  # [B,C,H,W]
        b, _, h, w = x.shape
        n_cross = int(int(b * cfg.poison_rate) * cfg.cross_ratio)
        pool = clean_positions(batch, self.poisoned)
        n_cross = min(n_cross, len(pool))
        if n_cross == 0:
            return batch
        gen = generator(self.attack.seed, "wanet", "noise-mode", step)
        pick = pool[torch.randperm(len(pool), generator=gen)[:n_cross]]  # [n]
        offsets = (torch.rand(n_cross, h, w, 2, generator=gen) * 2 - 1) / torch.tensor([w, h])  # [n,H,W,2]
        grid = (self.grid + offsets.to(self.grid.device)).clamp(-1, 1)
        x = x.clone()
        x[pick.to(x.device)] = warp(x[pick.to(x.device)], grid)
        return {**batch, "x": x}  # labels untouched: noise-mode samples keep the clean label


@ATTACKS.register("wanet")
class WaNet(Attack):
    Config = WaNetConfig
    version = 1
    modalities = frozenset({"image"})
    paper = ("Nguyen & Tran, WaNet - Imperceptible Warping-based Backdoor Attack, ICLR 2021 "
             "(arXiv:2102.10369)")
    smoke_overrides = {}

    def __init__(self, cfg: WaNetConfig | None = None, *, seed: int = 0):
        super().__init__(cfg, seed=seed)
        self.field = control_field(self.cfg.k, generator(seed, "wanet", "field"))  # type: ignore[attr-defined]
        self._poisoned: frozenset[int] = frozenset()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"field": self.field.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {"field"} or state["field"].shape != self.field.shape:
            raise ValueError(f"wanet: expected a {tuple(self.field.shape)} 'field', got {sorted(state)}")
        self.field = state["field"].clone().float()

    def grid(self, task: Task) -> torch.Tensor:
        cfg: WaNetConfig = self.cfg  # type: ignore[assignment]
        _, h, w = task.input_shape  # type: ignore[attr-defined]
        return warp_grid(self.field, h, w, cfg.s, cfg.grid_rescale)

    def trigger(self, task: Task) -> Trigger:
        return WarpTrigger(self.grid(task))

    def poison(self, task: Task, data: Sequence[Sample], indices: Sequence[int] | None = None,
               split: str = "train") -> PoisonedDataset:
        out = super().poison(task, data, indices, split)
        if split == "train":  # the noise-mode hook must leave the backdoor samples alone
            self._poisoned = frozenset(out.indices)
        return out

    def train_hooks(self, task: Task) -> list[Hook]:
        return [NoiseModeHook(self, self.grid(task).to(task.device), self._poisoned)]

