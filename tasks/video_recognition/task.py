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
from typing import Any

import torch
from torch import nn

from benchmark.registries import DATASETS, TASKS
from tasks._classification import ClassificationTask, CropFlipConfig
from tasks.base import Sample, labels_of
from tasks.video_recognition.data import VideoData


@dataclasses.dataclass(frozen=True)
class VideoRecognitionConfig(CropFlipConfig):
    # Clip policy handed to the dataset loader; None = the dataset's default (motions: 8 frames of 32 px;
    # UCF-101 / HMDB-51: 16 frames of 112 px, as the torchvision video models are trained).
    frames: int | None = None
    size: int | None = None
    test_clips: int = 1  # clips per test video (real datasets); > 1 adds video-level accuracy
    fold: int = 1  # the official split (1-3) of UCF-101 / HMDB-51
    # Crop / flip is one offset and one flip per clip, every frame alike (CropFlipConfig).  No flip by default:
    # on the generated motions a flip turns "right" into "left".

    def check(self) -> None:
        super().check()
        if self.frames is not None and self.frames < 1:
            raise self.bad("frames", "must be >= 1 or null")
        if self.size is not None and self.size < 8:
            raise self.bad("size", "must be >= 8 or null")
        if self.test_clips < 1:
            raise self.bad("test_clips", "must be >= 1")


@TASKS.register("video_recognition")
class VideoRecognitionTask(ClassificationTask):
    modality = "video"
    version = 1
    Config = VideoRecognitionConfig
    sharpness_batch = 64  # a 3D CNN's Hessian-vector product costs ~8x an image CNN's
    eval_batch_size = 64  # a clip is ~T images

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

    def model_kwargs(self) -> dict[str, Any]:
        t, c, h, _ = self.clip_shape
        return {"in_channels": c, "mean": self.data.mean, "std": self.data.std, "frames": t, "size": h}

    def metrics(self, model: nn.Module, data: Sequence[Sample]) -> dict[str, float]:
        videos = self.data.test_videos
        if videos is None or data is not self.splits().test:
            return super().metrics(model, data)
        scores = self.logits(model, data).softmax(dim=1)  # [N_clips,K]
        y = torch.tensor(labels_of(data))
        n = int(videos.max()) + 1
        per_video = torch.zeros(n, scores.shape[1]).index_add_(0, videos, scores)  # summed clip scores [V,K]
        video_y = torch.zeros(n, dtype=torch.int64).index_copy_(0, videos, y)
        return {"acc": float((scores.argmax(1) == y).float().mean()),
                "video_acc": float((per_video.argmax(1) == video_y).float().mean())}
