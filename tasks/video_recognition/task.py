"""Video action recognition: clips [T,C,H,W], cross-entropy, clip top-1 accuracy, ASR / RA.

Everything classification-generic (loss, accuracy, backdoor labels, true-Fisher labels, crop/flip) comes from
`ClassificationTask`; this adapter adds the clip data, the video models and the clip-level augmentation (one
crop offset and one flip per clip, every frame alike).  Triggers see `input_shape` = (C,H,W) of one frame, so an
image trigger (BadNets patch, Blend, SIG) is built once and applied to every frame by broadcasting.

Where a dataset yields several test clips per video (`test_clips` > 1 on UCF-101 / HMDB-51), the clean metrics
also report `video_acc`: softmax scores averaged over a video's clips, then top-1 (the standard multi-clip
protocol).  ASR and RA stay clip-level: every triggered clip is one attempt.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from benchmark.errors import FipbenchError
from benchmark.registries import DATASETS, MODELS, TASKS
from benchmark.rng import generator
from tasks._classification import ClassificationTask
from tasks.base import Batch, Sample, Splits, TaskConfig, labels_of, seeded_init
from tasks.image_classification.data import as_samples, stratified_split
from tasks.video_recognition.data import VideoData


@dataclasses.dataclass(frozen=True)
class VideoRecognitionConfig(TaskConfig):
    # Clip policy handed to the dataset loader; None = the dataset's default (motions: 8 frames of 32 px;
    # UCF-101 / HMDB-51: 16 frames of 112 px, as the torchvision video models are trained).
    frames: int | None = None
    size: int | None = None
    test_clips: int = 1  # clips per test video (real datasets); > 1 adds video-level accuracy
    fold: int = 1  # the official split (1-3) of UCF-101 / HMDB-51
    # Training augmentation of every training run (backdoor training and tuning defenses): random crop after
    # zero padding and, optionally, a horizontal flip, the same for all frames of a clip.  No flip by default:
    # on the generated motions a flip turns "right" into "left".
    augment: bool = True
    pad: int = 2
    hflip: bool = False
    init_weights: str | None = None  # local safetensors / weights-only file loaded into every new model

    def check(self) -> None:
        super().check()
        if self.frames is not None and self.frames < 1:
            raise self.bad("frames", "must be >= 1 or null")
        if self.size is not None and self.size < 8:
            raise self.bad("size", "must be >= 8 or null")
        if self.test_clips < 1:
            raise self.bad("test_clips", "must be >= 1")
        if self.pad < 0:
            raise self.bad("pad", "must be >= 0")


@TASKS.register("video_recognition")
class VideoRecognitionTask(ClassificationTask):
    modality = "video"
    version = 1
    Config = VideoRecognitionConfig
    sharpness_batch = 64  # a 3D CNN's Hessian-vector product costs ~8x an image CNN's

    @functools.cached_property
    def data(self) -> VideoData:
        cfg: VideoRecognitionConfig = self.cfg  # type: ignore[assignment]
        loader = self.lookup(DATASETS, self.dataset, "dataset")
        policy = {k: v for k, v in (("frames", cfg.frames), ("size", cfg.size)) if v is not None}
        return loader(self.data_root, split_seed=cfg.split_seed, test_clips=cfg.test_clips, fold=cfg.fold,
                      **policy)

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(T, C, H, W) of every clip."""
        return self.data.clip_shape

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one frame: image triggers are built for it and broadcast over the frames."""
        return self.clip_shape[1:]  # type: ignore[return-value]

    @functools.cache
    def splits(self) -> Splits:
        d = self.data
        train_idx, hold_idx = stratified_split(d.y_train, self.cfg.holdout_fraction,
                                               generator(self.cfg.split_seed, self.dataset, "holdout"))
        return Splits(train=as_samples(d.x_train, d.y_train, train_idx), test=as_samples(d.x_test, d.y_test),
                      holdout=as_samples(d.x_train, d.y_train, hold_idx))

    def build_model(self, arch: str, generator: torch.Generator | None = None) -> nn.Module:
        builder = self.lookup(MODELS, arch, "model")
        d = self.data
        t, c, h, _ = d.clip_shape
        with seeded_init(generator):
            model = builder(in_channels=c, num_classes=d.num_classes, mean=d.mean, std=d.std, frames=t, size=h)
        cfg: VideoRecognitionConfig = self.cfg  # type: ignore[assignment]
        if cfg.init_weights:
            from benchmark.cache import load_weights  # safetensors or weights-only: never a pickle

            path = Path(cfg.init_weights).expanduser()
            if not path.is_file():
                raise FipbenchError(f"init_weights {str(path)!r} does not exist; give the path of a local "
                                    f".safetensors (or weights-only .pt) file for model {arch!r}")
            load_weights(model, path)
        return model.to(self.device)

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        cfg: VideoRecognitionConfig = self.cfg  # type: ignore[assignment]
        if not cfg.augment or (cfg.pad == 0 and not cfg.hflip):
            return batch
        return self.crop_flip(batch, generator, cfg.pad, cfg.hflip)  # x [B,T,C,H,W]

    def predict(self, model: nn.Module, data: Sequence[Sample], batch_size: int = 64) -> torch.Tensor:
        return super().predict(model, data, batch_size)  # clips are ~T times an image: smaller batches

    def metrics(self, model: nn.Module, data: Sequence[Sample]) -> dict[str, float]:
        videos = self.data.test_videos
        if videos is None or data is not self.splits().test:
            return super().metrics(model, data)
        scores = self.logits(model, data, 64).softmax(dim=1)  # [N_clips,K]
        y = torch.tensor(labels_of(data))
        n = int(videos.max()) + 1
        per_video = torch.zeros(n, scores.shape[1]).index_add_(0, videos, scores)  # summed clip scores [V,K]
        video_y = torch.zeros(n, dtype=torch.int64).index_copy_(0, videos, y)
        return {"acc": float((scores.argmax(1) == y).float().mean()),
                "video_acc": float((per_video.argmax(1) == video_y).float().mean())}
