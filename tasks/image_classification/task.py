"""Image classification: top-1 accuracy, cross-entropy, all-to-one / all-to-all backdoor labels."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch
from torch import nn

from benchmark.errors import FipbenchError
from benchmark.registries import DATASETS, MODELS, TASKS
from benchmark.rng import generator
from tasks._classification import ClassificationTask
from tasks.base import Batch, Splits, TaskConfig, seeded_init
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
class ImageClassificationTask(ClassificationTask):
    modality = "image"
    version = 1
    Config = ImageClassificationConfig

    @functools.cached_property
    def data(self) -> ImageData:
        loader = self.lookup(DATASETS, self.dataset, "dataset")
        return loader(self.data_root, split_seed=self.cfg.split_seed)

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

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        cfg: ImageClassificationConfig = self.cfg  # type: ignore[assignment]
        if not cfg.augment or (cfg.pad == 0 and not cfg.hflip):
            return batch
        return self.crop_flip(batch, generator, cfg.pad, cfg.hflip)  # x [B,C,H,W]
