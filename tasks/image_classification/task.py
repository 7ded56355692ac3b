"""Image classification: top-1 accuracy, cross-entropy, all-to-one / all-to-all backdoor labels.

Everything classification-generic (splits, loss, accuracy, backdoor labels, true-Fisher labels, crop/flip,
init weights) comes from `ClassificationTask`; this adapter adds the image datasets and models.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from benchmark.registries import DATASETS, TASKS
from tasks._classification import ClassificationTask, CropFlipConfig
from tasks.image_classification.data import ImageData


@dataclasses.dataclass(frozen=True)
class ImageClassificationConfig(CropFlipConfig):
    """Crop (pad 2) without flip by default: the digits recipe; CIFAR configs set pad 4 and hflip."""


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

    def model_kwargs(self) -> dict[str, Any]:
        d = self.data
        return {"in_channels": d.shape[0], "mean": d.mean, "std": d.std, "image_size": d.shape[1]}
