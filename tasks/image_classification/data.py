"""Image-classification datasets.

A dataset loader is registered in DATASETS and returns `ImageData`; `digits` is the embedded default: the
UCI optical-recognition handwritten digits that ship inside scikit-learn (1,797 real 8x8 grey-scale scans of
43 writers, 10 classes), read from the installed package with no network access.  They are upsampled once to
16x16 (bilinear) so that triggers of standard relative size (a 3x3 patch is 3.5 % of the image, vs 0.9 % of a
CIFAR image) fit; this is a presentation choice, not new information.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmark.registries import DATASETS
from benchmark.rng import generator
from tasks.base import Sample


@dataclasses.dataclass(frozen=True)
class ImageData:
    """A dataset's official train/test split as tensors: x [N,C,H,W] float in [0,1], y [N] int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per-channel, used by the model's first (normalisation) layer
    std: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def as_samples(x: torch.Tensor, y: torch.Tensor) -> list[Sample]:
    return [Sample(x=x[i], y=int(y[i]), index=i) for i in range(len(y))]


@DATASETS.register("digits")
def load_digits(root: Path | None = None, split_seed: int = 0) -> ImageData:
    """scikit-learn's bundled digits, 70/30 stratified train/test split fixed by `split_seed`."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797,1,8,8], 0..16 -> [0,1]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1)  # [1797,1,16,16]
    y = torch.tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = stratified_split(y, 0.3, generator(split_seed, "digits-test-split"))
    xtr = x[train_idx]
    return ImageData(x_train=xtr, y_train=y[train_idx], x_test=x[test_idx], y_test=y[test_idx], num_classes=10,
                     mean=tuple(xtr.mean(dim=(0, 2, 3)).tolist()), std=tuple(xtr.std(dim=(0, 2, 3)).tolist()))


def stratified_split(y: torch.Tensor, fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (rest, part) where `part` holds round(fraction * n_c) of every class c; both sorted."""
    part = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        part.append(idx[: max(1, round(fraction * len(idx)))])
    part_idx = torch.cat(part).sort().values
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[part_idx] = False
    return torch.nonzero(mask).flatten(), part_idx
