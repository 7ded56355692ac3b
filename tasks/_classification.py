"""What every classification task shares (images, video clips, point clouds): cross-entropy, top-1 accuracy,
ASR / RA, all-to-one and all-to-all backdoor labels, the true-Fisher label sampling, and the random-crop /
flip augmentation over the last two axes (an image [C,H,W] or every frame of a clip [T,C,H,W] alike).

A subclass provides the data (`data` with `num_classes`), `splits`, `build_model` and its config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import FipbenchError
from tasks.base import Batch, Sample, Task, labels_of


class ClassificationTask(Task):
    metric_name = "acc"
    data: Any  # the dataset (an object with `num_classes`), built lazily by the subclass

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def collate(self, samples: Sequence[Sample]) -> Batch:
        return {"x": torch.stack([s.x for s in samples]),  # [B,C,H,W] images, [B,T,C,H,W] clips, [B,N,3] points
                "y": torch.tensor([s.y for s in samples], dtype=torch.int64),  # [B]
                "index": torch.tensor([s.index for s in samples])}

    def crop_flip(self, batch: Batch, generator: torch.Generator, pad: int, hflip: bool) -> Batch:
        """Random crop after zero padding by `pad`, then a random horizontal flip, on the last two axes.  One
        offset and one flip per sample, so every frame of a clip moves together."""
        x = batch["x"]  # [B,...,H,W]
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        p = pad
        padded = F.pad(x, (p, p, p, p))  # zero padding of the last two axes, [B,...,H+2p,W+2p]
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).tolist()
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).tolist()
        out = torch.stack([padded[i, ..., dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
        if hflip:
            flip = torch.rand(b, generator=generator) < 0.5
            out[flip] = out[flip].flip(-1)
        return {**batch, "x": out}

    def loss(self, model: nn.Module, batch: Batch, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction=reduction)

    def sample_model_labels(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Batch:
        with torch.no_grad():
            probs = model(batch["x"]).softmax(dim=1).cpu()  # [B,K]
        y = torch.multinomial(probs, 1, generator=generator).flatten().to(batch["y"].device)
        return {**batch, "y": y}

    @torch.no_grad()
    def logits(self, model: nn.Module, data: Sequence[Sample], batch_size: int = 512) -> torch.Tensor:
        """Model outputs [N,K] for every sample, in order (eval mode)."""
        model.eval()
        out = []
        for start in range(0, len(data), batch_size):
            batch = self.to_device(self.collate([data[i] for i in range(start, min(len(data), start + batch_size))]))
            out.append(model(batch["x"]).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.num_classes)

    def predict(self, model: nn.Module, data: Sequence[Sample], batch_size: int = 512) -> torch.Tensor:
        return self.logits(model, data, batch_size).argmax(dim=1) if len(data) else torch.empty(0, dtype=torch.int64)

    def metrics(self, model: nn.Module, data: Sequence[Sample]) -> dict[str, float]:
        y = torch.tensor(labels_of(data))  # from the view's label list: no second decode of every input
        return {"acc": float((self.predict(model, data) == y).float().mean())}

    def backdoor_metrics(self, model: nn.Module, triggered: Sequence[Sample],
                         clean: Sequence[Sample]) -> dict[str, float]:
        pred = self.predict(model, triggered)
        target = torch.tensor(labels_of(triggered))
        true = torch.tensor(labels_of(clean))
        return {"asr": float((pred == target).float().mean()), "ra": float((pred == true).float().mean())}

    def backdoor_label(self, y: int, mode: str, target: int) -> int:
        if mode == "all2one":
            return target
        if mode == "all2all":
            return (y + 1) % self.num_classes
        raise FipbenchError(f"{type(self).registry_name} has no label mode {mode!r}; "  # type: ignore[attr-defined]
                            f"use 'all2one' or 'all2all'")
