"""Split building shared by the classification tasks (images, clips, point clouds): a stratified holdout and
the `Sample`s of a split, held in memory or built on access.

Inputs reach a split in one of three forms: a float tensor [N,...] (a list of Samples holding views of it),
a uint8 tensor [N,...] (a quarter of the memory; scaled to [0,1] on access) or a lazy source that decodes one
file per access (`src[i]` -> float tensor); the latter two give a `SampleView`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tasks.base import Sample


class SampleView(Sequence[Sample]):
    """The samples of a split, built on access: `view[i]` is input `rows[i]` of `images` (an image [C,H,W], a
    clip [T,C,H,W], ...) as float in [0,1] with its label, and `index=i` (the position within the split).  Used for uint8 tensors and lazy
    sources, where a list of float Samples would cost 4x the memory or a decode of every file up front."""

    def __init__(self, images: Any, labels: torch.Tensor, rows: torch.Tensor | None = None):
        self.images = images
        self.rows = list(range(len(labels))) if rows is None else rows.tolist()  # split position -> image row
        self.labels: list[int] = labels[self.rows].tolist() if len(self.rows) else []  # split order; no decode

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):  # like slicing a list of Samples: indices stay positions in the split
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self.rows)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for a split of {n}")
        i = i % n
        x = self.images[self.rows[i]]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)  # 0..255 -> [0,1]
        return Sample(x=x, y=self.labels[i], index=i)


def as_samples(x: Any, y: torch.Tensor, rows: torch.Tensor | None = None) -> Sequence[Sample]:
    """The split made of inputs `rows` (default: all) of `x`; `Sample.index` is the position in the split.

    Float tensors give a list of Samples holding views of the tensor (as before the lazy path existed, so the
    embedded sets are unchanged); uint8 tensors and lazy sources give a `SampleView`.
    """
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        if rows is not None:
            x, y = x[rows], y[rows]
        return [Sample(x=x[i], y=int(y[i]), index=i) for i in range(len(y))]
    return SampleView(x, y, rows)




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
