"""Image classification: top-1 accuracy, cross-entropy, all-to-one / all-to-all backdoor labels."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import FipbenchError
from benchmark.registries import DATASETS, MODELS, TASKS
from benchmark.rng import generator
from tasks.base import Batch, Sample, Splits, Task, TaskConfig, labels_of, seeded_init
from tasks.image_classification.data import ImageData, as_samples, stratified_split


@dataclasses.dataclass(frozen=True)
class ImageClassificationConfig(TaskConfig):
    # The standard training augmentation (random crop after zero padding, optional horizontal flip), used by
    # every training run: backdoor training and every tuning defense (the FIP authors' code and
    # BackdoorBench both fine-tune with it).  CIFAR recipe: pad 4 at 32 px, flip on; digits: pad 2, no flip.
    augment: bool = True
    pad: int = 2
    hflip: bool = False
    # Optional local weight file loaded into every freshly built model before backdoor training (e.g. an
    # ImageNet-pretrained ResNet-50 state_dict converted to safetensors, keys prefixed "1." for the model after
    # Normalize).  Nothing is ever downloaded.
    init_weights: str | None = None

    def check(self) -> None:
        super().check()
        if self.pad < 0:
            raise self.bad("pad", "must be >= 0")


@TASKS.register("image_classification")
class ImageClassificationTask(Task):
    modality = "image"
    version = 1
    Config = ImageClassificationConfig
    metric_name = "acc"

    @functools.cached_property
    def data(self) -> ImageData:
        loader = self.lookup(DATASETS, self.dataset, "dataset")
        return loader(self.data_root, split_seed=self.cfg.split_seed)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image; triggers are built for it."""
        return self.data.shape

    @functools.cache
    def splits(self) -> Splits:
        d = self.data
        # The holdout is carved out of the training pool (stratified, fixed by split_seed) and never poisoned.
        train_idx, hold_idx = stratified_split(d.y_train, self.cfg.holdout_fraction,
                                               generator(self.cfg.split_seed, self.dataset, "holdout"))
        # In-memory float images give lists of Samples; uint8 images and lazy (file-backed) sources give views
        # that build each Sample on access (see data.as_samples).
        return Splits(train=as_samples(d.x_train, d.y_train, train_idx),
                      test=as_samples(d.x_test, d.y_test),
                      holdout=as_samples(d.x_train, d.y_train, hold_idx))

    def build_model(self, arch: str, generator: torch.Generator | None = None) -> nn.Module:
        builder = self.lookup(MODELS, arch, "model")
        d = self.data
        with seeded_init(generator):
            model = builder(in_channels=d.shape[0], num_classes=d.num_classes, mean=d.mean, std=d.std,
                            image_size=d.shape[1])
        if self.cfg.init_weights:  # type: ignore[attr-defined]
            from benchmark.cache import load_weights  # safetensors or weights-only: never a pickle

            path = Path(self.cfg.init_weights).expanduser()  # type: ignore[attr-defined]
            if not path.is_file():
                raise FipbenchError(f"init_weights {str(path)!r} does not exist; give the path of a local "
                                    f".safetensors (or weights-only .pt) file for model {arch!r}")
            load_weights(model, path)
        return model.to(self.device)

    def collate(self, samples: Sequence[Sample]) -> Batch:
        return {"x": torch.stack([s.x for s in samples]),  # [B,C,H,W]
                "y": torch.tensor([s.y for s in samples], dtype=torch.int64),  # [B]
                "index": torch.tensor([s.index for s in samples])}

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        cfg: ImageClassificationConfig = self.cfg  # type: ignore[assignment]
        if not cfg.augment or (cfg.pad == 0 and not cfg.hflip):
            return batch
        x = batch["x"]  # [B,C,H,W]
        b, _, h, w = x.shape
        p = cfg.pad
        padded = F.pad(x, (p, p, p, p))  # zero padding, [B,C,H+2p,W+2p]
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).tolist()
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).tolist()
        out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
        if cfg.hflip:
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
    def predict(self, model: nn.Module, data: Sequence[Sample], batch_size: int = 512) -> torch.Tensor:
        model.eval()
        preds = []
        for start in range(0, len(data), batch_size):
            batch = self.to_device(self.collate([data[i] for i in range(start, min(len(data), start + batch_size))]))
            preds.append(model(batch["x"]).argmax(dim=1).cpu())
        return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)

    def metrics(self, model: nn.Module, data: Sequence[Sample]) -> dict[str, float]:
        y = torch.tensor(labels_of(data))  # from the view's label list: no second decode of every image
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
        raise FipbenchError(f"image_classification has no label mode {mode!r}; use 'all2one' or 'all2all'")
