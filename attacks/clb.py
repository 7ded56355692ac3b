"""Label-Consistent Backdoor, CLB (Turner, Tsipras, Madry, 2019, "Label-Consistent Backdoor Attacks",
arXiv:1912.02771).

A clean-label attack: only training images that already belong to the target class are poisoned and their
labels stay correct.  Each is first made hard to classify by an untargeted L_inf PGD perturbation against an
adversarially trained surrogate model (so the victim cannot fit it from its natural features alone and leans on the trigger),
then stamped with the four-corner pattern.  At test time the pattern alone, on non-target images, must send
them to the target class.

Hyper-parameter reference: the authors' code (github MadryLab/label-consistent-backdoor-code) and BackdoorBench
(attack/lc.py, resource/label-consistent/craft_adv_dataset.py, config/attack/lc/default.yaml):
- PGD: eps = 8/255 (BackdoorBench's pre-crafted set; the paper studies 8, 16 and 32/255), step
  1.5/255, 100 steps, no random start, untargeted on the true label, images clipped to [0,1] (BackdoorBench).
- Trigger: a 3x3 black/white pattern in each of the four corners (the paper's "all-corners" trigger, the
  bottom-right pattern mirrored into the other corners), full amplitude (BackdoorBench reduced_amplitude = 1).
  With `amplitude` a < 1 (the paper's reduced-amplitude variant) trigger pixels are shifted by +a (white) or -a
  (black) from the image instead of being set.
- Poison rate: `poison_rate` is the share of the whole training set (BackdoorBench's pratio rule), drawn from
  the target class only and capped at its size; poison rate within the target class =
  min(1, poison_rate * |train| / |target class|).  Default 0.05, i.e. ~50 % of the target class on 10 balanced
  classes (mnist5k: 190 of its 380 target-class training images).  The generic 10 % would poison the whole
  target class (10 % of a balanced 10-class set IS the whole class); measured on mnist5k (eps 8/255) that leaves
  no clean target-class image to learn from and costs ~9 points of clean accuracy (86.6 % vs 95.4 %), because
  clean zeros without the corners are then misclassified.  The paper itself poisons a fraction of the class.
- Measured with version 1 (a CLEAN surrogate) on mnist5k (small_cnn, quick-preset training, seed 0; clean model
  95.4 %), acc / ASR:
  rate 0.10, eps 8/255: 86.6 / 83.3 %;  rate 0.05, eps 16/255: 95.6 / 27.7 %;  rate 0.05, eps 32/255:
  95.3 / 0.4 %.  Larger eps *lowers* the ASR here: against a clean (non-robust) surrogate the perturbations
  are non-robust features the victim learns for the target class, instead of hard examples that push it onto
  the trigger (Turner et al. use an adversarially trained surrogate for that reason).  The target (ASR >= 90 %
  within 3 points of clean accuracy) was NOT met by these settings; version 2 therefore trains the surrogate
  adversarially, as the authors do.
- Measured with version 2 (adversarially trained surrogate, rate 0.05, eps 8/255) on mnist5k, same setting:
  95.0 / 2.7 %.  On MNIST an eps of 8/255 barely hardens the images against a robust surrogate (robust MNIST
  models are trained at eps 0.3, i.e. 77/255).  At MNIST's robust budget (eps = adv_eps = 77/255, pgd_step
  3/255, adv_step 0.1) it is worse: 95.6 / 0.6 %.  Training the victim for 60 epochs instead of 10 (default
  setting, clean model 98.7 %): 98.1 / 14.3 %.  80 % of the target class (`poison_rate: 0.08`, 10 epochs):
  94.6 / 8.9 % at eps 8/255; at eps = adv_eps = 32/255 (pgd_step 3/255, adv_step 8/255, 5 adversarial steps,
  5 surrogate epochs) 95.2 / 0.7 %.  On these digits a larger perturbation keeps lowering the ASR, with a
  clean and with a robust surrogate alike.  The target is NOT met.
- Target 0, all-to-one only (a clean-label attack cannot relabel; all2all is rejected by the config).

Deviations:
- The surrogate is adversarially trained in `prepare` (Madry et al. PGD training, random start, eps 8/255, step
  4/255, `adv_steps` = 3 steps, `surrogate_epochs` = 3, small_cnn) instead of the authors' adversarially trained
  ResNet (7-step PGD, full schedule): no robust model can be downloaded here and full adversarial training is
  too slow on CPU.  `adv_eps: 0` gives version 1's clean surrogate.  The GAN-interpolation variant of the paper
  is not implemented.
- Perturbations are stored quantised to 1/255 (int8), as BackdoorBench stores its uint8 adversarial images.
- The 3x3 pattern keeps its size at every resolution (as BadNets here); images smaller than 6 px are rejected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from attacks._surrogate import train_surrogate
from attacks.base import Attack, AttackConfig, Params, PoisonedDataset, Trigger
from benchmark.errors import FipbenchError
from benchmark.progress import progress_bar
from benchmark.registries import ATTACKS
from benchmark.rng import child
from tasks.base import FitConfig, Hook, Sample, Task, labels_of

# The authors' bottom-right 3x3 pattern (1 = white, 0 = black); the other corners get its mirror images.
PATTERN = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])


@dataclasses.dataclass(frozen=True)
class CLBConfig(AttackConfig):
    poison_rate: float = 0.05  # of the whole split, all from the target class: ~50 % of it on 10 balanced classes
    eps: float = 8 / 255  # L_inf bound of the adversarial perturbation, in [0,1] pixel units
    pgd_step: float = 1.5 / 255
    pgd_steps: int = 100
    amplitude: float = 1.0  # trigger amplitude; 1 = the full black/white pattern
    surrogate_epochs: int = 3
    surrogate_arch: str = "small_cnn"
    pgd_batch_size: int = 128
    # Madry et al. PGD adversarial training of the surrogate (random start, untargeted, the clean batch replaced by
    # its adversarial version).  adv_eps = 0 trains a clean surrogate (the previous behaviour).
    adv_eps: float = 8 / 255
    adv_step: float = 4 / 255
    adv_steps: int = 3

    def check(self) -> None:
        super().check()
        if self.label_mode != "all2one":
            raise self.bad("label_mode", "CLB is clean-label: it only supports 'all2one'")
        if not 0 <= self.eps <= 127 / 255:
            raise self.bad("eps", "must lie in [0, 127/255] (perturbations are stored as int8 in 1/255 units)")
        if self.pgd_step <= 0 or self.pgd_steps < 0:
            raise self.bad("pgd_step", "needs pgd_step > 0 and pgd_steps >= 0")
        if not 0 < self.amplitude <= 1:
            raise self.bad("amplitude", "must lie in (0, 1]")
        if self.surrogate_epochs < 1 or self.pgd_batch_size < 1:
            raise self.bad("surrogate_epochs", "surrogate_epochs and pgd_batch_size must be >= 1")
        if self.adv_eps < 0 or (self.adv_eps > 0 and (self.adv_step <= 0 or self.adv_steps < 1)):
            raise self.bad("adv_eps", "needs adv_eps >= 0, and adv_step > 0 and adv_steps >= 1 when adv_eps > 0")


def corner_trigger(c: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(signed pattern s [C,H,W] with +1 white / -1 black on trigger pixels, mask m [1,H,W])."""
    if min(h, w) < 6:
        raise FipbenchError(f"CLB's four 3x3 corner patterns need an image of at least 6x6 pixels, got {h}x{w}")
    sign, mask = torch.zeros(1, h, w), torch.zeros(1, h, w)
    signed = 2 * PATTERN - 1  # [3,3]
    for flip_rows in (False, True):
        for flip_cols in (False, True):
            p = signed.flip(0) if flip_rows else signed
            p = p.flip(1) if flip_cols else p
            rows = slice(0, 3) if flip_rows else slice(h - 3, h)  # unflipped = bottom-right
            cols = slice(0, 3) if flip_cols else slice(w - 3, w)
            sign[0, rows, cols], mask[0, rows, cols] = p, 1.0
    return sign.expand(c, h, w).clone(), mask


class CornerTrigger(Trigger):
    """x' = clamp(x + delta_i / 255) (training: the stored adversarial perturbation of sample i, if any), then on
    the corner pixels x' = clamp(x' + a * s): the exact black/white pattern for a = 1."""

    modalities = frozenset({"image"})

    def __init__(self, sign: torch.Tensor, mask: torch.Tensor, amplitude: float,
                 deltas: dict[int, torch.Tensor] | None = None):
        self.sign, self.mask, self.amplitude = sign, mask, amplitude  # [C,H,W], [1,H,W]
        self.deltas = deltas  # sample index -> int8 [C,H,W] in 1/255 units; None at test time

    def apply(self, sample: Sample, params: Params) -> Sample:
        x = sample.x  # [C,H,W]
        out = x.float()
        if self.deltas is not None:
            if sample.index not in self.deltas:
                raise FipbenchError(f"CLB has no adversarial perturbation for training sample {sample.index}: "
                                    f"call prepare() on the split it poisons (or load its state)")
            out = (out + self.deltas[sample.index].float() / 255).clamp(0, 1)
        stamped = (out + self.amplitude * self.sign).clamp(0, 1)
        out = torch.where(self.mask.bool(), stamped, out)
        return dataclasses.replace(sample, x=out.to(x.dtype))


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float,
        steps: int, start: torch.Generator | None = None) -> torch.Tensor:
    """Untargeted L_inf PGD (BackdoorBench's craft_adv_dataset: no random start; with `start`, Madry et al.'s
    uniform random start in the eps-ball, drawn from that generator): maximise the cross-entropy of the true label
    y [B] for images x [B,C,H,W] in [0,1]; returns adversarial images [B,C,H,W]."""
    adv = x.clone()
    if start is not None:
        noise = torch.rand(x.shape, generator=start).to(x.device) * 2 - 1  # [B,C,H,W] in [-1,1]
        adv = (x + eps * noise).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        adv = adv.detach() + step * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


def adversarial_deltas(task: Task, model: torch.nn.Module, data: Sequence[Sample], positions: Sequence[int],
                       eps: float, step: float, steps: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD perturbations of `data[positions]` against `model` (CLB and the clean-label video attack): the
    samples' indices [n] int64 and their deltas [n,*x.shape] int8 in 1/255 units.  Quantising to 1/255 steps
    keeps the L_inf bound, since |round(255 d)| <= round(255 eps)."""
    index, deltas = [], []
    with progress_bar("pgd perturbations", -(-len(positions) // batch_size), figure="max |δ|") as tick:
        for start in range(0, len(positions), batch_size):
            samples = [data[i] for i in positions[start:start + batch_size]]
            batch = task.to_device(task.collate(samples))
            x = batch["x"].float()  # [B,C,H,W] images or [B,T,C,H,W] clips
            adv = pgd(model, x, batch["y"], eps, step, steps)
            deltas.append(((adv - x) * 255).round().clamp(-127, 127).to(torch.int8).cpu())
            index += [s.index for s in samples]
            tick(float((adv - x).abs().max()))
    return torch.tensor(index, dtype=torch.int64), torch.cat(deltas)


class AdversarialTraining(Hook):
    """Madry et al. PGD adversarial training through `Task.fit`: every training batch is replaced by its PGD
    examples against the current model (crafted in eval mode, so BatchNorm statistics only see the batch that
    is trained on)."""

    def __init__(self, eps: float, step: float, steps: int, gen: torch.Generator):
        self.eps, self.step, self.steps, self.gen = eps, step, steps, gen
        self.model: torch.nn.Module | None = None

    def on_fit_start(self, model: torch.nn.Module, task: Task) -> None:
        self.model = model

    def on_batch(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        assert self.model is not None
        self.model.eval()
        x = batch["x"].float()  # [B,C,H,W]
        adv = pgd(self.model, x, batch["y"], self.eps, self.step, self.steps, start=self.gen)
        self.model.train()
        return {**batch, "x": adv.to(batch["x"].dtype)}


def robust_surrogate(task: Task, train: Sequence[Sample], cfg: CLBConfig, gen: torch.Generator) -> torch.nn.Module:
    """A `cfg.surrogate_arch` model adversarially trained on the clean split (clean training when adv_eps = 0);
    returned in eval mode with parameter gradients off."""
    hooks = [AdversarialTraining(cfg.adv_eps, cfg.adv_step, cfg.adv_steps, child(gen, "pgd-start"))] \
        if cfg.adv_eps > 0 else []
    return train_surrogate(task, train, generator=gen, arch=cfg.surrogate_arch,
                           fit=FitConfig(epochs=cfg.surrogate_epochs, batch_size=64, lr=0.05), hooks=hooks)


@ATTACKS.register("clb")
class CLB(Attack):
    Config = CLBConfig
    version = 2
    modalities = frozenset({"image"})
    paper = ("Turner, Tsipras, Madry, Label-Consistent Backdoor Attacks, arXiv:1912.02771 (2019); "
             "authors' code github.com/MadryLab/label-consistent-backdoor-code")
    smoke_overrides: dict[str, Any] = {"pgd_steps": 3, "surrogate_epochs": 1, "adv_steps": 1}

    def __init__(self, cfg: CLBConfig | None = None, *, seed: int = 0):
        super().__init__(cfg, seed=seed)
        self._index = torch.zeros(0, dtype=torch.int64)  # [n] sample indices (Sample.index) of the poisoned
        self._delta = torch.zeros(0, dtype=torch.int8)  # [n,C,H,W] their perturbations in 1/255 units

    # -- which samples: target-class training images only ---------------------------------------------------
    def select(self, task: Task, data: Sequence[Sample]) -> list[int]:
        """round(poison_rate * |data|) target-class positions (capped at the class size), drawn uniformly."""
        pool = [i for i, y in enumerate(labels_of(data)) if y == self.cfg.target]
        return self.draw(pool, round(self.cfg.poison_rate * len(data)))

    # `eligible` stays the base rule (non-target samples): it defines the test set the ASR is measured on.

    # -- learned state: the adversarial perturbations ------------------------------------------------------
    def prepare(self, task: Task, train: Sequence[Sample], *, generator: torch.Generator) -> None:
        cfg: CLBConfig = self.cfg  # type: ignore[assignment]
        positions = self.select(task, train)
        c, h, w = task.input_shape  # type: ignore[attr-defined]
        if not positions:
            self._index, self._delta = torch.zeros(0, dtype=torch.int64), torch.zeros(0, c, h, w, dtype=torch.int8)
            return
        model = robust_surrogate(task, train, cfg, child(generator, "clb-surrogate"))
        self._index, self._delta = adversarial_deltas(task, model, train, positions, cfg.eps, cfg.pgd_step,
                                                      cfg.pgd_steps, cfg.pgd_batch_size)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"index": self._index.clone(), "delta": self._delta.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = {"index", "delta"} - set(state)
        if missing or len(state) != 2:
            raise FipbenchError(f"CLB state needs exactly 'index' and 'delta', got {sorted(state)}")
        self._index, self._delta = state["index"].to(torch.int64), state["delta"].to(torch.int8)

    # -- triggers ------------------------------------------------------------------------------------------
    def trigger(self, task: Task) -> Trigger:
        """The test-time trigger: the corner pattern alone."""
        c, h, w = task.input_shape  # type: ignore[attr-defined]
        return CornerTrigger(*corner_trigger(c, h, w), self.cfg.amplitude)  # type: ignore[attr-defined]

    def poison(self, task: Task, data: Sequence[Sample], indices: Sequence[int] | None = None,
               split: str = "train") -> PoisonedDataset:
        """Training split: perturbation + pattern on the selected target-class images; other splits: pattern."""
        if split != "train":
            return super().poison(task, data, indices, split)
        self.check_task(task)
        indices = self.select(task, data) if indices is None else indices
        c, h, w = task.input_shape  # type: ignore[attr-defined]
        deltas = dict(zip(self._index.tolist(), self._delta.unbind(0)))
        trig = CornerTrigger(*corner_trigger(c, h, w), self.cfg.amplitude, deltas)  # type: ignore[attr-defined]
        return PoisonedDataset(data, indices, trig, self.relabel(task), seed=self.seed, split=split)
