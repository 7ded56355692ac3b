"""BppAttack (Wang, Zhai, Ma, CVPR 2022, "BppAttack: Stealthy and Efficient Trojan Attacks against Deep Neural
Networks via Image Quantization and Contrastive Adversarial Learning").

Trigger: colour-depth squeezing of every channel to `squeeze_num` levels, {0, 1/(q-1), ..., 1} with
q = squeeze_num, by rounding or, with `dithering`, by Floyd-Steinberg error diffusion (the rounding error goes
7/16 right, 3/16 down-left, 5/16 down, 1/16 down-right) so that the squeezed image keeps its look.  Contrastive adversarial
training: per batch, int(neg_ratio * B) unpoisoned samples are replaced by negative examples that keep their
clean label: the image plus the quantisation residual squeeze(x') - x' of another training image x', clamped
to [0,1], as in the authors' code (their "residual_list_train"), so the model learns that the *exact*
squeezing of an image, not any quantisation-like noise, is the trigger.  A train hook (`on_batch`) does it.

Hyper-parameter reference: the authors' code (github.com/RU-System-Software-and-Security/BppAttack,
`config.py`, `bppattack.py`): squeeze_num 8, dithering off by default (`--dithering` is an opt-in flag there and
in BackdoorBench's `config/attack/bpp/*.yaml`), neg_ratio 0.2 (authors; BackdoorBench 0.1), target 0,
all-to-one (all-to-all: y -> y + 1 mod K).  Poison rate 10 % (BackdoorBench; the authors' default injection
rate is 0.2).  `dithering: true` gives the paper's Floyd-Steinberg variant.

Measured on mnist5k (small_cnn, 10 epochs, seed 0; clean model 95.5 %; `fipbench run image_attacks`),
acc / ASR: 93.5 / 2.7 %, NOT met:
8-level squeezing of near-binary MNIST digits changes few pixels (dithering on: 94.2 / 3.2 %).  Trained for 60
epochs (the authors train far longer): 93.6 / 11.0 %, still NOT met.  Probes at the authors' injection rate
(`poison_rate: 0.2`, seed 0, processes executor, `--no-sharpness`): 10 epochs 90.4 / 7.1 %, 60 epochs 91.3 /
76.6 % (clean 60-epoch model 98.7 %).  ASR grows with the poison rate and the training length, but so does the
clean cost: a squeezed digit looks like its clean self, so every relabelled one is a near-duplicate of a clean
training image with another label, which the model can only memorise.  Not met on this data at any setting
tried.

Deviations:
- Poisoned samples are fixed indices (`PoisonedDataset`: round(rate * N) non-target samples), not the first
  int(rate * B) samples of every batch.  Negatives are still drawn per batch (generator from (seed, step)).
- The residual of a negative comes from another (unpoisoned) image of the same batch, not from a bank of
  residuals precomputed over five passes of the training set: the same distribution (quantisation residuals
  of random training images, after the same augmentation) without storing a copy of the dataset.
- Dithering is computed in [0,1] space on exact levels k/(q-1) and the level index is clamped to [0, q-1]
  (the authors work in 0..255 and round the result to integers, a sub-grey-level difference).  Pixels on one
  anti-diagonal wavefront (2y + x constant) are processed together: the same dependencies as the row-by-row
  loop, so the same output up to floating-point summation order, and batched on the device.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import torch

from attacks._b_nets import clean_positions
from attacks.base import Attack, AttackConfig, Params, PoisonedDataset, Trigger
from benchmark.registries import ATTACKS
from benchmark.rng import generator
from tasks.base import Batch, Hook, Sample, Task


@dataclasses.dataclass(frozen=True)
class BppConfig(AttackConfig):
    squeeze_num: int = 8  # colour levels per channel
    dithering: bool = False  # Floyd-Steinberg error diffusion (the authors' opt-in flag)
    neg_ratio: float = 0.2  # share of each batch replaced by negative (contrastive) examples

    def check(self) -> None:
        super().check()
        if not 2 <= self.squeeze_num <= 256:
            raise self.bad("squeeze_num", "must lie in [2, 256]")
        if not 0 <= self.neg_ratio < 1:
            raise self.bad("neg_ratio", "must lie in [0, 1)")


_WEIGHTS = torch.tensor([7 / 16, 3 / 16, 5 / 16, 1 / 16])  # right, down-left, down, down-right


@functools.cache
def _wavefronts(h: int, w: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per anti-diagonal t = 2y + x, in processing order: flat positions of its pixels in the output [n], in
    the padded buffer [n], and of their four error receivers in the buffer [n*4] (right, down-left, down,
    down-right per pixel).  The buffer has one spare row below and one spare column on each side."""
    fronts, stride = [], w + 2
    for t in range(2 * (h - 1) + w):
        ys = torch.arange(max(0, (t - w + 2) // 2), min(h - 1, t // 2) + 1)
        xs = t - 2 * ys
        at = ys * stride + xs + 1
        receivers = torch.stack([at + 1, at + stride - 1, at + stride, at + stride + 1], dim=1).flatten()
        fronts.append((ys * w + xs, at, receivers))
    return fronts


def squeeze(x: torch.Tensor, levels: int, dithering: bool) -> torch.Tensor:
    """x [B,C,H,W] in [0,1] -> the same with every value in {k / (levels - 1)}."""
    q = levels - 1
    if not dithering:
        return (x * q).round().clamp(0, q) / q
    b, c, h, w = x.shape
    buf = torch.zeros(b, c, h + 1, w + 2, dtype=x.dtype, device=x.device)
    buf[:, :, :h, 1:w + 1] = x  # spill-over past the borders lands in the spare margins and is dropped
    buf = buf.view(b, c, -1)
    out = torch.empty(b, c, h * w, dtype=x.dtype, device=x.device)
    weights = _WEIGHTS.to(x)
    for pos, at, receivers in _wavefronts(h, w):
        pos, at, receivers = pos.to(x.device), at.to(x.device), receivers.to(x.device)
        old = buf[:, :, at]  # [B,C,n] value plus the error diffused into it so far
        new = (old * q).round().clamp(0, q) / q
        out[:, :, pos] = new
        # index_add_ accumulates repeated receivers (a pixel's right neighbour is the next row's pixel's
        # down-left one on the same wavefront).
        buf.index_add_(2, receivers, ((old - new)[..., None] * weights).flatten(2))
    return out.view(b, c, h, w)


class SqueezeTrigger(Trigger):
    modalities = frozenset({"image"})

    def __init__(self, levels: int, dithering: bool):
        self.levels, self.dithering = levels, dithering

    def apply(self, sample: Sample, params: Params) -> Sample:
        return dataclasses.replace(sample, x=squeeze(sample.x[None], self.levels, self.dithering)[0])  # [C,H,W]


class NegativesHook(Hook):
    """Replaces int(neg_ratio * B) unpoisoned samples by image + another image's squeezing residual."""

    def __init__(self, attack: Bpp, poisoned: frozenset[int]):
        self.attack, self.poisoned = attack, poisoned

    def on_batch(self, batch: Batch, step: int) -> Batch:
        cfg: BppConfig = self.attack.cfg  # type: ignore[assignment]
        x = batch["x"]  # [B,C,H,W]
        pool = clean_positions(batch, self.poisoned)
        n = min(int(x.shape[0] * cfg.neg_ratio), len(pool) - 1)
        if n <= 0:
            return batch
        gen = generator(self.attack.seed, "bpp", "negatives", step)
        order = pool[torch.randperm(len(pool), generator=gen)]
        pick, source = order[:n], order.roll(-1)[:n]  # each negative borrows the next image's residual
        pick, source = pick.to(x.device), source.to(x.device)
        residual = squeeze(x[source], cfg.squeeze_num, cfg.dithering) - x[source]  # [n,C,H,W]
        x = x.clone()
        x[pick] = (x[pick] + residual).clamp(0, 1)
        return {**batch, "x": x}  # labels untouched: negatives keep the clean label


@ATTACKS.register("bpp")
class Bpp(Attack):
    Config = BppConfig
    version = 1
    modalities = frozenset({"image"})
    paper = ("Wang, Zhai & Ma, BppAttack: Stealthy and Efficient Trojan Attacks against Deep Neural Networks via "
             "Image Quantization and Contrastive Adversarial Learning, CVPR 2022 (arXiv:2205.13383)")
    smoke_overrides = {}

    def __init__(self, cfg: BppConfig | None = None, *, seed: int = 0):
        super().__init__(cfg, seed=seed)
        self._poisoned: frozenset[int] = frozenset()

    def trigger(self, task: Task) -> Trigger:
        cfg: BppConfig = self.cfg  # type: ignore[assignment]
        return SqueezeTrigger(cfg.squeeze_num, cfg.dithering)

    def poison(self, task: Task, data: Sequence[Sample], indices: Sequence[int] | None = None,
               split: str = "train") -> PoisonedDataset:
        out = super().poison(task, data, indices, split)
        if split == "train":  # negatives are drawn from the unpoisoned samples only
            self._poisoned = frozenset(out.indices)
        return out

    def train_hooks(self, task: Task) -> list[Hook]:
        return [NegativesHook(self, self._poisoned)]
