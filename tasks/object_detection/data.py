"""Object-detection datasets: the `DetectionData` every loader returns, lazily decoded sample views, and the
embedded generated `shapes` dataset.

A detection `Sample` holds x: image [3,H,W] float in [0,1] and y: a target dict
{"boxes": float [N,4] (x1, y1, x2, y2) in pixels, "labels": int64 [N] class ids 0..K-1}.  Class ids are
0-based in fipbench (an attack's `target: 0` is the first object class); the task shifts them by one for
torchvision's detectors, whose class 0 is the background.

`shapes` (the embedded default): 64x64 scenes of 1-3 coloured geometric solids (circle, square, triangle,
cross) on smooth random textures, drawn with PIL, deterministic by seed.  The class is the shape, never the
colour (colours are drawn independently of the class and exclude near-white, which is the BadNets trigger's
colour), so a detector has to learn shape.  2,000 training and 400 test scenes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.registries import DATASETS
from tasks.base import Sample

Target = dict[str, torch.Tensor]  # {"boxes": float [N,4] xyxy pixels, "labels": int64 [N] in 0..K-1}


def make_target(boxes: Sequence[Sequence[float]], labels: Sequence[int]) -> Target:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64).reshape(-1)}


@dataclasses.dataclass(frozen=True)
class DetectionData:
    """A dataset's official train / test split as Samples (index = position in the split)."""

    train: LazySamples
    test: LazySamples
    classes: tuple[str, ...]
    image_size: int | None  # side of every (square) image, or None for real images of varying size
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # the detector's internal normalisation
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class LazySamples(Sequence[Sample]):
    """Samples whose images are decoded on access (`load(r)` -> [3,H,W] float in [0,1]); the targets are held in
    memory and exposed as `labels`, so that attacks select images without decoding any.  `view[i]` is image
    `rows[i]` (default: all, in order) with `index=i`, its position in this view (triggers key on it), as
    image classification's `SampleView`."""

    def __init__(self, load: Callable[[int], torch.Tensor], targets: Sequence[Target],
                 rows: Sequence[int] | None = None):
        self.load, self.targets = load, list(targets)
        self.rows = list(range(len(self.targets))) if rows is None else list(rows)  # view position -> image row
        self.labels = [self.targets[r] for r in self.rows]

    def take(self, rows: Sequence[int]) -> LazySamples:
        """The view of this view's positions `rows`, renumbered from 0 (a split carved out of a dataset split)."""
        return LazySamples(self.load, self.targets, [self.rows[r] for r in rows])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return Sample(x=self.load(self.rows[i]), y=self.labels[i], index=i)


class MemorySamples(LazySamples):
    """Samples held as one uint8 tensor [N,3,H,W] (a quarter of the float memory)."""

    def __init__(self, images: torch.Tensor, targets: Sequence[Target]):
        super().__init__(lambda i: images[i].float() / 255, targets)


# -- the embedded generated dataset --------------------------------------------------------------------------
SHAPES_CLASSES = ("circle", "square", "triangle", "cross")


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random background [size,size,3] uint8: a base colour plus upsampled low-frequency noise."""
    base = rng.uniform(40, 200, size=3)
    coarse = torch.from_numpy(rng.normal(0, 30, size=(1, 3, 6, 6))).float()
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
    grain = rng.normal(0, 6, size=(size, size, 3))
    return np.clip(base + smooth.numpy() + grain, 0, 255).astype(np.uint8)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    while True:  # saturated colours, never near-white (the BadNets trigger) nor near the mean background
        c = rng.integers(0, 256, size=3)
        if c.min() < 150 and c.max() - c.min() > 90:
            return tuple(int(v) for v in c)


def _draw(draw, cls: int, x: int, y: int, s: int, colour: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """Draw shape `cls` in the s x s square at (x, y); return its tight box (x1, y1, x2, y2), x2/y2 exclusive."""
    if cls == 0:  # circle
        draw.ellipse([x, y, x + s - 1, y + s - 1], fill=colour)
    elif cls == 1:  # square
        draw.rectangle([x, y, x + s - 1, y + s - 1], fill=colour)
    elif cls == 2:  # triangle, apex up
        draw.polygon([(x + (s - 1) / 2, y), (x, y + s - 1), (x + s - 1, y + s - 1)], fill=colour)
    else:  # cross, arms a third of the side wide
        t = max(2, s // 3)
        o = (s - t) // 2
        draw.rectangle([x + o, y, x + o + t - 1, y + s - 1], fill=colour)
        draw.rectangle([x, y + o, x + s - 1, y + o + t - 1], fill=colour)
    return x, y, x + s, y + s


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def generate_shapes(n: int, seed: int, size: int = 64, max_objects: int = 3,
                    min_side: int = 12, max_side: int = 24) -> tuple[torch.Tensor, list[Target]]:
    """`n` scenes: images uint8 [n,3,size,size] and their targets.  Objects overlap with IoU <= 0.1."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    targets = []
    for i in range(n):
        img = Image.fromarray(_texture(rng, size))
        draw = ImageDraw.Draw(img)
        boxes: list[tuple[int, int, int, int]] = []
        labels: list[int] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):
                s = int(rng.integers(min_side, max_side + 1))
                x, y = (int(v) for v in rng.integers(0, size - s + 1, size=2))
                box = (x, y, x + s, y + s)
                if all(_iou(box, b) <= 0.1 for b in boxes):
                    cls = int(rng.integers(0, len(SHAPES_CLASSES)))
                    boxes.append(_draw(draw, cls, x, y, s, _colour(rng)))
                    labels.append(cls)
                    break
        images[i] = torch.from_numpy(np.array(img)).permute(2, 0, 1)
        targets.append(make_target(boxes, labels))
    return images, targets


@DATASETS.register("shapes")
def load_shapes(root: Path | None = None, split_seed: int = 0) -> DetectionData:
    """The embedded generated scenes; `root` is ignored (nothing is read from disk).  The scenes are fixed
    (seeds 0 and 1 for train and test), independent of the run seed, like a real dataset's files."""
    del root, split_seed
    x_train, y_train = generate_shapes(2000, seed=0)
    x_test, y_test = generate_shapes(400, seed=1)
    return DetectionData(train=MemorySamples(x_train, y_train), test=MemorySamples(x_test, y_test),
                         classes=SHAPES_CLASSES, image_size=64)


load_shapes.task = "object_detection"  # type: ignore[attr-defined]
