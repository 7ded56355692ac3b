"""Video datasets: `VideoData`, lazily decoded clip sources, and the embedded generated `motions` clips.

A clip is a float tensor [T,C,H,W] in [0,1] (T frames, channels first per frame).  Clips reach a split as a
uint8 tensor [N,T,C,H,W] (the generated set: a quarter of the float memory) or as a `ClipSource` that decodes
one video file per access (UCF-101, HMDB-51 in `real_data.py`); `as_samples` (shared with image
classification) turns either into the `Sample`s of a split.

`motions` (the embedded default): one shape (disc, square, triangle or cross, random colour, never white) moves
over a smooth random background; the class is the motion alone, so no single frame tells it:

    0 right  1 left  2 down  3 up  4 grow  5 shrink  6 orbit clockwise  7 orbit counter-clockwise

Speed, start position, size, orbit radius and phase are random; a little per-frame pixel noise is added.
2,000 training and 400 test clips (balanced), 8 frames of 32x32 RGB by default, deterministic by seed.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmark.registries import DATASETS
from benchmark.rng import generator

MOTIONS = ("right", "left", "down", "up", "grow", "shrink", "orbit_cw", "orbit_ccw")


class ClipSource(Sequence[torch.Tensor], abc.ABC):
    """Clips not held in memory: `src[i]` decodes clip i to a float tensor [T,C,H,W] in [0,1]."""

    clip_shape: tuple[int, int, int, int]  # (T, C, H, W) of every clip the source returns

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, i: int) -> torch.Tensor: ...  # type: ignore[override]


Clips = torch.Tensor | ClipSource  # [N,T,C,H,W] uint8 or float, or a lazy source of N clips


@dataclasses.dataclass(frozen=True)
class VideoData:
    """A dataset's official train/test split: clips and labels y [N] int64.

    `test_videos` [N_test] gives the video each test clip was cut from, where a video yields several test clips
    (the real datasets' multi-clip evaluation); None when every test clip is its own video.
    """

    x_train: Clips
    y_train: torch.Tensor
    x_test: Clips
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per-channel, used by the model's first (normalisation) layer
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    test_videos: torch.Tensor | None = None

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(T, C, H, W) of every clip."""
        if isinstance(self.x_train, ClipSource):
            return self.x_train.clip_shape
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


# -- the generated motions -----------------------------------------------------------------------------------
def _shape_mask(kind: int, dy: torch.Tensor, dx: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Soft-edged mask [T,H,W] of shape `kind` with half-size s [T,1,1] at offsets dy, dx [T,H,W] from its
    centre (0 disc, 1 square, 2 triangle, 3 cross); values in [0,1], 1 inside."""
    if kind == 0:
        d = torch.sqrt(dy ** 2 + dx ** 2) - s
    elif kind == 1:
        d = torch.maximum(dy.abs(), dx.abs()) - s
    elif kind == 2:  # apex up: inside when below the top edge and within the widening sides
        d = torch.maximum(dy.abs() - s, dx.abs() - (dy + s) / 2)
    else:
        arm = s / 3
        d = torch.minimum(torch.maximum(dx.abs() - arm, dy.abs() - s), torch.maximum(dy.abs() - arm, dx.abs() - s))
    return (0.5 - d).clamp(0, 1)  # a one-pixel anti-aliased edge


def _trajectory(motion: int, frames: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Centre (cy, cx) and half-size s, each [T], of the shape under `motion`."""
    u = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=g))  # noqa: E731
    t = torch.arange(frames, dtype=torch.float32)
    if motion in (4, 5):  # grow / shrink about a fixed centre
        lo, hi = size * 0.06, size * 0.2
        s = lo + (hi - lo) * t / (frames - 1)
        s = s if motion == 4 else s.flip(0)
        cy, cx = torch.full_like(t, u(hi + 1, size - hi - 2)), torch.full_like(t, u(hi + 1, size - hi - 2))
        return cy, cx, s
    s = torch.full_like(t, u(size * 0.09, size * 0.15))
    half = float(s[0])
    if motion in (6, 7):  # orbit about a centre, screen coordinates (y down): +angle is clockwise
        r = u(size * 0.15, size * 0.25)
        c0, c1 = u(r + half + 1, size - r - half - 2), u(r + half + 1, size - r - half - 2)
        step = u(0.5, 0.8) * (1 if motion == 6 else -1)
        a = u(0, 2 * math.pi) + step * t
        return c0 + r * torch.sin(a), c1 + r * torch.cos(a), s
    v = u(size * 0.045, size * 0.075)  # pixels per frame
    travel = v * (frames - 1)
    start = u(half + 1, size - half - 2 - travel)
    along = start + v * t if motion in (0, 2) else (size - 1 - start) - v * t  # right/down grow, left/up shrink
    across = torch.full_like(t, u(half + 1, size - half - 2))
    return (along, across, s) if motion in (2, 3) else (across, along, s)


def render_clip(motion: int, frames: int, size: int, g: torch.Generator) -> torch.Tensor:
    """One clip [T,3,H,W] in [0,1] of a random shape performing `motion`."""
    bg = F.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(size, size), mode="bilinear",
                       align_corners=False)[0] * 0.5 + 0.1  # [3,H,W] smooth, in [0.1,0.6]
    kind = int(torch.randint(0, 4, (), generator=g))
    colour = torch.rand(3, generator=g) * 0.6 + 0.3
    colour[int(torch.randint(0, 3, (), generator=g))] = 0.15  # one dim channel: never white
    cy, cx, s = _trajectory(motion, frames, size, g)
    ys = torch.arange(size, dtype=torch.float32).view(1, size, 1)
    xs = torch.arange(size, dtype=torch.float32).view(1, 1, size)
    mask = _shape_mask(kind, ys - cy.view(-1, 1, 1), xs - cx.view(-1, 1, 1), s.view(-1, 1, 1))  # [T,H,W]
    mask = mask.unsqueeze(1)  # [T,1,H,W]
    clip = (1 - mask) * bg + mask * colour.view(1, 3, 1, 1)  # [T,3,H,W]
    return (clip + 0.02 * torch.randn(clip.shape, generator=g)).clamp(0, 1)


def generate_motions(n: int, frames: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n clips as uint8 [n,T,3,H,W] and balanced labels [n] (class i % 8, then shuffled)."""
    y = torch.arange(n) % len(MOTIONS)
    y = y[torch.randperm(n, generator=g)]
    x = torch.stack([render_clip(int(c), frames, size, g) for c in y])  # [n,T,3,H,W]
    return (x * 255).round().to(torch.uint8), y


@DATASETS.register("motions")
def load_motions(root: Path | None = None, split_seed: int = 0, *, frames: int = 8, size: int = 32,
                 test_clips: int = 1, fold: int = 1) -> VideoData:
    """The generated motion clips: 2,000 train / 400 test, the same for every `split_seed` (the scenes are a
    property of the dataset; `split_seed` only fixes the defense holdout).  `test_clips` and `fold` are unused:
    every generated video is one clip, and there is one official split."""
    xtr, ytr = generate_motions(2000, frames, size, generator(0, "motions", "train", frames, size))
    xte, yte = generate_motions(400, frames, size, generator(0, "motions", "test", frames, size))
    xf = xtr.float().div_(255)  # [N,T,3,H,W]
    return VideoData(x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, num_classes=len(MOTIONS),
                     mean=tuple(xf.mean(dim=(0, 1, 3, 4)).tolist()), std=tuple(xf.std(dim=(0, 1, 3, 4)).tolist()),
                     classes=MOTIONS)


load_motions.task = "video_recognition"  # type: ignore[attr-defined]
