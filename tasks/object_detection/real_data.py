"""Real object-detection datasets (PASCAL VOC, MS-COCO), read from local files in each dataset's official layout.

Nothing is downloaded.  Every loader takes `root` (the CLI's --data-root, else $FIPBENCH_DATA) and raises a
one-line FipbenchError naming the expected files when they are missing or malformed (the same helpers, hence
the same messages, as the image-classification loaders).  Train/test are the official splits, so `split_seed`
is unused.  Targets are parsed up front from the annotation files (cheap), so `samples.labels` never decodes an
image; each image is decoded when its sample is read, RGB float [3,H,W] in [0,1], at its own size
(`image_size=None`).  Every image a split lists is checked to exist up front (one directory listing per split),
so a missing file fails at load time, not mid-training; a corrupt one fails when it is decoded, naming its path.

- voc2007 / voc2012: <root>/VOCdevkit/VOC<year>/Annotations/<id>.xml, ImageSets/Main/<split>.txt (one id a
  line) and JPEGImages/<id>.jpg, as the official tars extract.  VOC2007: train = trainval (5,011), test = test
  (4,952).  VOC2012: train = train (5,717), test = val (5,823), since VOC2012's test annotations are not public.
  The 20 classes in the standard order -> ids 0..19.  VOC boxes are 1-based inclusive pixel coordinates; they
  become 0-based xyxy with an exclusive far edge: (xmin - 1, ymin - 1, xmax, ymax), so a box's width is
  xmax - xmin + 1 pixels, as VOC counts it.  Objects marked <difficult>1</difficult> are left out of the targets
  (torchvision / SSD training practice: VOC's own evaluation ignores them).  Images left with no objects are
  kept: torchvision's detectors accept empty targets.
- coco2017: <root>/coco/annotations/instances_{train,val}2017.json with <root>/coco/{train,val}2017/*.jpg;
  train = train2017 (118,287 images), test = val2017 (5,000).  The categories, sorted by id (COCO's 80 ids run
  1..90 with gaps), -> ids 0..K-1, names from the JSON.  Images are in image-id order (torchvision's
  CocoDetection order) and all are kept, also those without annotations.  Boxes: [x, y, w, h] -> (x, y, x+w,
  y+h).  Crowd regions (iscrowd=1) are dropped, as torchvision's detection references do (they are one box
  around many objects), and so are boxes narrower or shorter than 1 px, which would give a detector's box
  regression a zero or negative size.  Plain `json` reads the files (pycocotools is only needed to evaluate).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from benchmark.errors import FipbenchError
from benchmark.registries import DATASETS
from tasks.image_classification.real_data import _malformed, _missing, _open_rgb, _root, _to_uint8
from tasks.object_detection.data import DetectionData, LazySamples, Target, make_target

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
VOC_INDEX = {c: i for i, c in enumerate(VOC_CLASSES)}


class FileLoader:
    """`load(i)` for LazySamples: decode file i to float [3,H,W] in [0,1].  A class, not a closure, so that
    DataLoader workers can pickle it."""

    def __init__(self, name: str, paths: list[str]):
        self.name, self.paths = name, paths

    def __call__(self, i: int) -> torch.Tensor:
        return _to_uint8(_open_rgb(self.paths[i], self.name)).float().div_(255.0)  # [3,H,W]


def _names_in(folder: Path, name: str, expected: str, root: Path) -> set[str]:
    """The file names in `folder`: one scandir, instead of a stat per image (COCO train has 118k)."""
    if not folder.is_dir():
        raise _missing(name, folder, expected, root)
    with os.scandir(folder) as it:
        return {e.name for e in it}


def _check_images(folder: Path, files: list[str], name: str, expected: str, root: Path) -> list[str]:
    present = _names_in(folder, name, expected, root)
    for f in files:
        if f not in present:
            raise _missing(name, folder / f, expected, root)
    return [str(folder / f) for f in files]


# -- PASCAL VOC ----------------------------------------------------------------------------------------------
def _voc_target(path: Path, name: str, expected: str, root: Path) -> Target:
    """The non-difficult objects of one Annotations/<id>.xml."""
    try:
        objects = ET.parse(path).getroot().findall("object")  # direct children: a person's <part> boxes are not
        boxes, labels = [], []
        for k, obj in enumerate(objects):
            if int(obj.findtext("difficult") or 0):  # absent in some VOC2012 files: not difficult
                continue
            cls = (obj.findtext("name") or "").strip()
            if cls not in VOC_INDEX:
                raise ValueError(f"object {k}: class {cls!r} is not one of the 20 VOC classes")
            bb = obj.find("bndbox")
            coords = [None if bb is None else bb.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")]
            if None in coords:
                raise ValueError(f"object {k} ({cls}): want <bndbox> with xmin, ymin, xmax, ymax")
            xmin, ymin, xmax, ymax = (float(c) for c in coords)  # VOC2012 has a few non-integer coordinates
            if xmax < xmin or ymax < ymin:
                raise ValueError(f"object {k} ({cls}): empty box {coords}")
            boxes.append((xmin - 1, ymin - 1, xmax, ymax))  # 1-based inclusive -> 0-based, far edge exclusive
            labels.append(VOC_INDEX[cls])
    except FileNotFoundError:
        raise _missing(name, path, expected, root) from None
    except (ET.ParseError, ValueError) as err:  # ParseError says line and column
        raise _malformed(name, path, f"{type(err).__name__}: {err}", expected, root) from None
    return make_target(boxes, labels)


def _voc_split(base: Path, split: str, name: str, expected: str, root: Path) -> LazySamples:
    ids_file = base / "ImageSets" / "Main" / f"{split}.txt"
    if not ids_file.is_file():
        raise _missing(name, ids_file, expected, root)
    try:  # one id a line; first token, so a class file's "<id> 1" lines would also read
        ids = [line.split()[0] for line in ids_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise _malformed(name, ids_file, err, expected, root) from None
    if not ids:
        raise _malformed(name, ids_file, "no image ids", expected, root)
    paths = _check_images(base / "JPEGImages", [f"{i}.jpg" for i in ids], name, expected, root)
    targets = [_voc_target(base / "Annotations" / f"{i}.xml", name, expected, root) for i in ids]
    return LazySamples(FileLoader(name, paths), targets)


def _load_voc(root: Path | str | None, year: int, train: str, test: str, archives: str) -> DetectionData:
    name = f"voc{year}"
    expected = (f"{{root}}/VOCdevkit/VOC{year}/Annotations/<id>.xml, ImageSets/Main/{train}.txt and {test}.txt, "
                f"JPEGImages/<id>.jpg ({archives} from host.robots.ox.ac.uk/pascal/VOC, extracted into {{root}})")
    root = _root(root, name, expected)
    base = root / "VOCdevkit" / f"VOC{year}"
    return DetectionData(train=_voc_split(base, train, name, expected, root),
                         test=_voc_split(base, test, name, expected, root), classes=VOC_CLASSES, image_size=None)


@DATASETS.register("voc2007")
def load_voc2007(root: Path | None = None, split_seed: int = 0) -> DetectionData:
    """PASCAL VOC 2007: trainval (train) / test, 20 classes."""
    return _load_voc(root, 2007, "trainval", "test", "VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar")


@DATASETS.register("voc2012")
def load_voc2012(root: Path | None = None, split_seed: int = 0) -> DetectionData:
    """PASCAL VOC 2012: train (train) / val (test), 20 classes."""
    return _load_voc(root, 2012, "train", "val", "VOCtrainval_11-May-2012.tar")


load_voc2007.task = "object_detection"  # type: ignore[attr-defined]
load_voc2012.task = "object_detection"  # type: ignore[attr-defined]


# -- MS-COCO 2017 --------------------------------------------------------------------------------------------
COCO_EXPECTED = ("{root}/coco/annotations/instances_train2017.json and instances_val2017.json, "
                 "{root}/coco/train2017/*.jpg and {root}/coco/val2017/*.jpg (annotations_trainval2017.zip, "
                 "train2017.zip and val2017.zip from cocodataset.org, extracted into {root}/coco)")


def _coco_split(root: Path, split: str) -> tuple[LazySamples, tuple[str, ...]]:
    """One instances_<split>.json and its image folder: the samples and the class names (sorted by id)."""
    ann = root / "coco" / "annotations" / f"instances_{split}.json"
    if not ann.is_file():
        raise _missing("coco2017", ann, COCO_EXPECTED, root)
    try:
        with open(ann, encoding="utf-8") as f:
            d = json.load(f)
        cats = sorted((int(c["id"]), str(c["name"])) for c in d["categories"])
        cat_index = {cid: k for k, (cid, _) in enumerate(cats)}
        images = sorted((int(im["id"]), str(im["file_name"])) for im in d["images"])
        per_image: dict[int, tuple[list, list]] = {iid: ([], []) for iid, _ in images}
        for a in d["annotations"]:
            x, y, w, h = (float(v) for v in a["bbox"])
            if a.get("iscrowd", 0) or w < 1 or h < 1:
                continue
            if a["image_id"] not in per_image or a["category_id"] not in cat_index:
                raise ValueError(f"annotation {a.get('id')} has an unknown image_id {a['image_id']} "
                                 f"or category_id {a['category_id']}")
            boxes, labels = per_image[a["image_id"]]
            boxes.append((x, y, x + w, y + h))
            labels.append(cat_index[a["category_id"]])
    except KeyError as err:
        raise _malformed("coco2017", ann, f"missing key {err}", COCO_EXPECTED, root) from None
    except (UnicodeDecodeError, ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise _malformed("coco2017", ann, f"{type(err).__name__}: {err}", COCO_EXPECTED, root) from None
    if not images or not cats:
        raise _malformed("coco2017", ann, "no images or no categories", COCO_EXPECTED, root)
    paths = _check_images(root / "coco" / split, [f for _, f in images], "coco2017", COCO_EXPECTED, root)
    targets = [make_target(*per_image[iid]) for iid, _ in images]
    return LazySamples(FileLoader("coco2017", paths), targets), tuple(n for _, n in cats)


@DATASETS.register("coco2017")
def load_coco2017(root: Path | None = None, split_seed: int = 0) -> DetectionData:
    """MS-COCO 2017: train2017 (train) / val2017 (test), the 80 categories -> ids 0..79."""
    root = _root(root, "coco2017", COCO_EXPECTED)
    train, classes = _coco_split(root, "train2017")
    test, test_classes = _coco_split(root, "val2017")
    if test_classes != classes:  # class ids must mean the same thing in both splits
        raise FipbenchError(f"dataset coco2017: the categories of instances_val2017.json differ from those of "
                            f"instances_train2017.json under {root}/coco/annotations; re-extract "
                            f"annotations_trainval2017.zip")
    return DetectionData(train=train, test=test, classes=classes, image_size=None)


load_coco2017.task = "object_detection"  # type: ignore[attr-defined]
