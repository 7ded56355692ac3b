"""3D point-cloud classification: clouds [P,3], cross-entropy, top-1 accuracy, ASR / RA.

Everything classification-generic (splits, loss, accuracy, backdoor labels, true-Fisher labels, init weights)
comes from `ClassificationTask`; this adapter adds the point datasets and models and the point-cloud training
augmentation.  Triggers see `input_shape` = (P, 3).

Augmentation (every training run: backdoor training and tuning defenses) is DGCNN's `translate_pointcloud`: a
random anisotropic scale in [2/3, 3/2] and a random shift in [-0.2, 0.2] per axis, per cloud.  No random
rotation: ModelNet40's meshes are aligned, the DGCNN and PointNet++ recipes train without it, and it would
erase an orientation trigger (PointBA-O) by construction.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from benchmark.registries import DATASETS, TASKS
from tasks._classification import ClassificationConfig, ClassificationTask
from tasks.base import Batch
from tasks.point_cloud.data import PointData


@dataclasses.dataclass(frozen=True)
class PointCloudConfig(ClassificationConfig):
    num_points: int | None = None  # points per cloud; None = the dataset's default (1,024)
    scale_low: float = 2 / 3  # augmentation: per-axis scale drawn from [scale_low, scale_high]
    scale_high: float = 1.5
    shift: float = 0.2  # augmentation: per-axis shift drawn from [-shift, shift]

    def check(self) -> None:
        super().check()
        if self.num_points is not None and self.num_points < 16:
            raise self.bad("num_points", "must be >= 16 or null")
        if not 0 < self.scale_low <= self.scale_high:
            raise self.bad("scale_low", "needs 0 < scale_low <= scale_high")
        if self.shift < 0:
            raise self.bad("shift", "must be >= 0")


@TASKS.register("point_cloud")
class PointCloudTask(ClassificationTask):
    modality = "points"
    version = 1
    Config = PointCloudConfig
    eval_batch_size = 256

    @functools.cached_property
    def data(self) -> PointData:
        cfg: PointCloudConfig = self.cfg  # type: ignore[assignment]
        loader = self.lookup(DATASETS, self.dataset, "dataset")
        policy = {"num_points": cfg.num_points} if cfg.num_points is not None else {}
        return loader(self.data_root, split_seed=cfg.split_seed, **policy)

    @property
    def input_shape(self) -> tuple[int, int]:
        """(P, 3) of every cloud."""
        return (self.data.num_points, 3)

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_points": self.data.num_points}

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        cfg: PointCloudConfig = self.cfg  # type: ignore[assignment]
        if not cfg.augment:
            return batch
        x = batch["x"]  # [B,P,3]
        b = x.shape[0]
        scale = cfg.scale_low + (cfg.scale_high - cfg.scale_low) * torch.rand(b, 1, 3, generator=generator)
        shift = (torch.rand(b, 1, 3, generator=generator) * 2 - 1) * cfg.shift
        return {**batch, "x": x * scale.to(x.device) + shift.to(x.device)}
