"""Object detection: the detector's own training loss, mAP@0.5 as the clean metric, BadDet ASR.

Batches are lists (images may differ in size): {"x": list of [3,H,W], "y": list of target dicts, "index": [B]}.
Targets use 0-based class ids; `_torchvision_targets` shifts them by one for torchvision's detectors, whose
class 0 is the background, and `predict` shifts the detections back.

The loss is the sum of the detector's loss terms (e.g. FCOS: classification + box regression + centre-ness).
torchvision detectors return losses only in training mode, while fipbench's Fisher and sharpness code evaluates
the loss in eval mode (BatchNorm on running statistics).  `loss_mode` therefore switches on training mode for
the detection wrappers alone (the modules that choose between losses and detections), leaving every
normalisation layer in the mode the caller set: `fit` trains with batch statistics, `diagonal_fisher` and the
sharpness figures see one fixed function, exactly as for image classification.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from benchmark.errors import FipbenchError
from benchmark.registries import DATASETS, MODELS, TASKS
from benchmark.rng import generator
from tasks.base import Batch, Sample, Splits, Task, TaskConfig, labels_of, seeded_init
from tasks.object_detection.data import DetectionData
from tasks.object_detection.metrics import backdoor_rates, mean_average_precision

_LOSS_SWITCHES = (GeneralizedRCNN, RegionProposalNetwork, RoIHeads, FCOS, SSD, RetinaNet)


@contextlib.contextmanager
def loss_mode(model: nn.Module) -> Iterator[None]:
    """Make a torchvision detector return its losses without changing its normalisation layers' mode."""
    switches = [m for m in model.modules() if isinstance(m, _LOSS_SWITCHES)]
    saved = [m.training for m in switches]
    for m in switches:
        m.training = True
    try:
        yield
    finally:
        for m, mode in zip(switches, saved):
            m.training = mode


@dataclasses.dataclass(frozen=True)
class ObjectDetectionConfig(TaskConfig):
    # Random horizontal flip of image and boxes during every training run (SSD's and torchvision's reference
    # recipes flip); off by default on the embedded scenes, whose BadDet triggers sit at a fixed corner.
    hflip: bool = False


@TASKS.register("object_detection")
class ObjectDetectionTask(Task):
    modality = "detection"
    version = 1
    Config = ObjectDetectionConfig
    metric_name = "map50"
    sharpness_batch = 16  # 20 + 20 Hessian-vector products of a detector on 128 images cost minutes on a CPU

    @functools.cached_property
    def data(self) -> DetectionData:
        loader = self.lookup(DATASETS, self.dataset, "dataset")
        return loader(self.data_root, split_seed=self.cfg.split_seed)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def image_size(self) -> int | None:
        """Side of the dataset's square images, or None where sizes vary (triggers then place per image)."""
        return self.data.image_size

    @functools.cache
    def splits(self) -> Splits:
        d = self.data
        # The holdout: a random share of the training images, fixed by split_seed, never poisoned.
        n_hold = max(1, round(self.cfg.holdout_fraction * len(d.train)))
        perm = torch.randperm(len(d.train), generator=generator(self.cfg.split_seed, self.dataset, "holdout"))
        hold, train = sorted(perm[:n_hold].tolist()), sorted(perm[n_hold:].tolist())
        return Splits(train=d.train.take(train), test=d.test, holdout=d.train.take(hold))

    def build_model(self, arch: str, generator: torch.Generator | None = None) -> nn.Module:
        builder = self.lookup(MODELS, arch, "model")
        d = self.data
        with seeded_init(generator):
            model = builder(num_classes=d.num_classes, mean=d.mean, std=d.std, image_size=d.image_size)
        return model.to(self.device)

    def collate(self, samples: Sequence[Sample]) -> Batch:
        return {"x": [s.x for s in samples], "y": [s.y for s in samples],
                "index": torch.tensor([s.index for s in samples])}

    def to_device(self, batch: Batch) -> Batch:
        move = lambda v: v.to(self.device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return {"x": [x.to(self.device) for x in batch["x"]],
                "y": [{k: move(v) for k, v in t.items()} for t in batch["y"]], "index": batch["index"]}

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        if not self.cfg.hflip:  # type: ignore[attr-defined]
            return batch
        flip = (torch.rand(len(batch["x"]), generator=generator) < 0.5).tolist()
        xs, ys = [], []
        for x, y, f in zip(batch["x"], batch["y"], flip):
            if f:
                w = x.shape[-1]
                boxes = y["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1.0, -1.0, 1.0]) + torch.tensor(
                    [w, 0.0, w, 0.0])
                x, y = x.flip(-1), {**y, "boxes": boxes}
            xs.append(x)
            ys.append(y)
        return {**batch, "x": xs, "y": ys}

    # -- objective ----------------------------------------------------------------------------------------
    @staticmethod
    def _torchvision_targets(ys: Sequence[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
        return [{"boxes": y["boxes"], "labels": y["labels"] + 1} for y in ys]

    def loss(self, model: nn.Module, batch: Batch, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
        if reduction == "none":  # detector losses are batch-normalised: one forward per image
            return torch.stack([self.loss(model, {"x": [x], "y": [y]}) for x, y in zip(batch["x"], batch["y"])])
        with loss_mode(model):
            losses = model(batch["x"], self._torchvision_targets(batch["y"]))
        return sum(losses.values())  # type: ignore[return-value]

    # -- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, data: Sequence[Sample], batch_size: int = 32
                ) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, Any]]]:
        """Detections (0-based labels, on the CPU) and the targets of the samples they were made for."""
        model.eval()
        preds, targets = [], []
        for start in range(0, len(data), batch_size):
            samples = [data[i] for i in range(start, min(len(data), start + batch_size))]
            out = model([s.x.to(self.device) for s in samples])
            # Sigmoid heads (FCOS, RetinaNet) keep an output channel for torchvision's background label 0; it is
            # never a training target, but an untrained head can still fire on it: drop such detections.
            keep = [o["labels"] > 0 for o in out]
            preds += [{"boxes": o["boxes"][k].cpu(), "scores": o["scores"][k].cpu(),
                       "labels": o["labels"][k].cpu() - 1} for o, k in zip(out, keep)]
            targets += [s.y for s in samples]
        return preds, targets

    def metrics(self, model: nn.Module, data: Sequence[Sample]) -> dict[str, float]:
        preds, targets = self.predict(model, data)
        return mean_average_precision(preds, targets)

    def backdoor_metrics(self, model: nn.Module, triggered: Sequence[Sample],
                         clean: Sequence[Sample]) -> dict[str, float]:
        preds, targets = self.predict(model, triggered)
        return backdoor_rates(preds, targets, labels_of(clean))

    def backdoor_label(self, y: Any, mode: str, target: int) -> Any:
        raise FipbenchError("object_detection has no image-level label modes; use a BadDet attack "
                            "(baddet_oga, baddet_rma, baddet_gma, baddet_oda)")

