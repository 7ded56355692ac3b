"""Real image-classification datasets, read from local files in each dataset's official on-disk format.

Nothing is downloaded.  Every loader takes `root` (the CLI's --data-root, default $FIPBENCH_DATA; the variable is
also read when a task is built in Python with no root) and raises a one-line FipbenchError that names the
expected files when they are missing, malformed, truncated or corrupt.  Train/test are the official splits, so
`split_seed` is unused here (it still fixes the defense holdout, which the task carves out of train).

- cifar10: the "python version" pickles, held as uint8 [50000,3,32,32] (150 MB; float would be 600 MB).
- gtsrb: decoded once at load, resized to 32x32 like BackdoorBench, held as uint8 [39209,3,32,32].
- tiny_imagenet (64x64) and imagenet (resize + center crop): file lists only; a `FileImages` source decodes
  one image when its sample is read, since the train sets as float would need ~5 GB and ~770 GB.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmark.errors import FipbenchError
from benchmark.registries import DATASETS
from tasks.image_classification.data import ImageData, ImageSource

FIX = "pass --data-root or set FIPBENCH_DATA"

# Published per-channel statistics, used instead of a pass over every image (which a lazy set would have to
# decode in full).  CIFAR-10: training-set pixel mean/std as used by BackdoorBench and most CIFAR code.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# Tiny-ImageNet: the statistics commonly published with it (BackdoorBench uses the same numbers).
TINY_MEAN, TINY_STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)
# ImageNet: the torchvision / timm statistics of the ILSVRC-2012 training set.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".ppm", ".bmp"}


# -- shared helpers ------------------------------------------------------------------------------------------
def _root(root: Path | str | None, name: str, expected: str) -> Path:
    root = root if root is not None else os.environ.get("FIPBENCH_DATA") or None
    if root is None:
        raise FipbenchError(f"dataset {name}: no data root given; expected {expected.format(root='<root>')}; {FIX}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FipbenchError(f"dataset {name}: data root {root} is not a directory; "
                            f"expected {expected.format(root=root)}; {FIX}")
    return root


def _missing(name: str, path: Path, expected: str, root: Path) -> FipbenchError:
    return FipbenchError(f"dataset {name}: {path} not found; expected {expected.format(root=root)}; {FIX}")


def _malformed(name: str, path: Path, why: object, expected: str, root: Path) -> FipbenchError:
    return FipbenchError(f"dataset {name}: {path} is malformed ({why}); expected {expected.format(root=root)}; "
                         f"re-extract the official archive")


def _open_rgb(path: str | Path, name: str) -> Image.Image:
    """Decode one file to an RGB PIL image (grey-scale and CMYK files are converted, as torchvision does)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # forces the full decode, so truncated files fail here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise FipbenchError(f"dataset {name}: cannot decode image {path} ({type(err).__name__}: {err}); "
                            f"re-extract the official archive") from None


def _to_uint8(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()  # [H,W,3] -> [3,H,W]


def _resize_square(im: Image.Image, size: int) -> Image.Image:
    return im if im.size == (size, size) else im.resize((size, size), Image.BILINEAR)


def _resize_center_crop(im: Image.Image, size: int, short: int) -> Image.Image:
    """torchvision's Resize(short) + CenterCrop(size): shorter side to `short` (aspect kept), then the central
    size x size window."""
    w, h = im.size
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


def _list_images(folder: Path) -> list[str]:
    """Image files directly in `folder`, sorted (os.scandir: fast on ImageNet's 1.28 M files)."""
    with os.scandir(folder) as it:
        return sorted(e.path for e in it if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)


class FileImages(ImageSource):
    """Images decoded from files on access: `src[i]` -> float [3,size,size] in [0,1].

    `crop_from=None` resizes every image to size x size (Tiny-ImageNet's files already are 64x64); otherwise the
    shorter side goes to `crop_from` and the central size x size crop is kept (the standard ImageNet eval view).
    """

    def __init__(self, name: str, paths: list[str], size: int, crop_from: int | None = None):
        self.name, self.paths, self.size, self.crop_from = name, paths, size, crop_from
        self.image_shape = (3, size, size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        im = _open_rgb(self.paths[i], self.name)
        im = (_resize_square(im, self.size) if self.crop_from is None
              else _resize_center_crop(im, self.size, self.crop_from))
        return _to_uint8(im).float().div_(255.0)  # [3,size,size]


# -- CIFAR-10 ------------------------------------------------------------------------------------------------
CIFAR_EXPECTED = ("{root}/cifar-10-batches-py/data_batch_1..5, test_batch and batches.meta "
                  "(the CIFAR-10 python version, cifar-10-python.tar.gz)")


class _ArrayUnpickler(pickle.Unpickler):
    """The CIFAR-10 python version *is* a set of pickles (its documented format), so pickle reads it.  Only
    the globals that rebuild numpy arrays resolve; any other global (how a tampered pickle runs code) is an
    error.  encoding="bytes" reads the Python 2 strings of the official files as bytes keys (b"data")."""

    _NUMPY = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"
    ALLOWED = frozenset({("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype")}
                        | {(f"numpy.{p}.multiarray", n) for p in ("core", "_core")
                           for n in ("_reconstruct", "scalar")}
                        | {(f"numpy.{p}.numeric", "_frombuffer") for p in ("core", "_core")})

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}")
        if module.startswith("numpy.core.") or module.startswith("numpy._core."):
            module = self._NUMPY + module[module.index(".", 6):]  # numpy 1 and 2 name the same module differently
        return getattr(importlib.import_module(module), name)


def _unpickle(path: Path, root: Path) -> object:
    if not path.is_file():
        raise _missing("cifar10", path, CIFAR_EXPECTED, root)
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - a corrupt pickle can raise nearly anything; all mean "bad file"
        raise _malformed("cifar10", path, f"{type(err).__name__}: {err}", CIFAR_EXPECTED, root) from None


def _cifar_batch(path: Path, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file: {b"data": uint8 [N,3072] (1024 R, then G, then B, row-major 32x32), b"labels": N ints}."""
    d = _unpickle(path, root)
    if not (isinstance(d, dict) and b"data" in d and b"labels" in d):
        raise _malformed("cifar10", path, 'not a dict with keys b"data" and b"labels"', CIFAR_EXPECTED, root)
    data, labels = d[b"data"], d[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        got = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        raise _malformed("cifar10", path, f'b"data" is {got}, not uint8 [N,3072]', CIFAR_EXPECTED, root)
    try:
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))  # [N]
    except (TypeError, ValueError) as err:
        raise _malformed("cifar10", path, f'b"labels" are not integers ({err})', CIFAR_EXPECTED, root) from None
    if y.shape != (len(data),) or (len(y) and not (0 <= int(y.min()) and int(y.max()) < 10)):
        raise _malformed("cifar10", path, f'b"labels" must be {len(data)} class ids in 0..9', CIFAR_EXPECTED, root)
    return torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32), y  # [N,3,32,32] uint8


@DATASETS.register("cifar10")
def load_cifar10(root: Path | None = None, split_seed: int = 0) -> ImageData:
    """CIFAR-10's official 50,000 / 10,000 split, 10 classes, 3x32x32."""
    root = _root(root, "cifar10", CIFAR_EXPECTED)
    base = root / "cifar-10-batches-py"
    meta = _unpickle(base / "batches.meta", root)
    if not (isinstance(meta, dict) and len(meta.get(b"label_names", ())) == 10):
        raise _malformed("cifar10", base / "batches.meta", 'no b"label_names" with 10 names', CIFAR_EXPECTED, root)
    train = [_cifar_batch(base / f"data_batch_{k}", root) for k in range(1, 6)]
    x_test, y_test = _cifar_batch(base / "test_batch", root)
    return ImageData(x_train=torch.cat([x for x, _ in train]), y_train=torch.cat([y for _, y in train]),
                     x_test=x_test, y_test=y_test, num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD)


# -- GTSRB ---------------------------------------------------------------------------------------------------
GTSRB_EXPECTED = ("{root}/GTSRB/Final_Training/Images/<00000..00042>/GT-<class>.csv and *.ppm, "
                  "{root}/GTSRB/Final_Test/Images/*.ppm and {root}/GT-final_test.csv (the official GTSRB release)")
GTSRB_CLASSES = 43


def _gt_csv(path: Path, root: Path) -> list[tuple[str, int]]:
    """(Filename, ClassId) rows of a GTSRB annotation file (semicolon separated, header row)."""
    if not path.is_file():
        raise _missing("gtsrb", path, GTSRB_EXPECTED, root)
    try:
        rows = [r for r in csv.reader(path.read_text(encoding="utf-8-sig").splitlines(), delimiter=";") if r]
        f, c = rows[0].index("Filename"), rows[0].index("ClassId")
        out = [(r[f], int(r[c])) for r in rows[1:]]
    except (UnicodeDecodeError, IndexError, ValueError) as err:
        raise _malformed("gtsrb", path, f"need a Filename;...;ClassId header and rows ({type(err).__name__}: {err})",
                         GTSRB_EXPECTED, root) from None
    bad = [cid for _, cid in out if not 0 <= cid < GTSRB_CLASSES]
    if bad or not out:
        raise _malformed("gtsrb", path, f"class id {bad[0]} not in 0..42" if bad else "no rows", GTSRB_EXPECTED, root)
    return out


def _decode_all(paths: list[Path], size: int, name: str) -> torch.Tensor:
    x = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)  # [N,3,size,size]
    for i, p in enumerate(paths):
        x[i] = _to_uint8(_resize_square(_open_rgb(p, name), size))
    return x


def _uint8_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std in [0,1] units of uint8 images [N,C,H,W], in float64 chunks so no
    float copy of the whole set is made."""
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    sq = torch.zeros_like(s)
    for chunk in x.split(4096):
        c = chunk.to(torch.float64).div_(255.0)
        s += c.sum(dim=(0, 2, 3))
        sq += c.square().sum(dim=(0, 2, 3))
    n = x.numel() // x.shape[1]
    mean = s / n
    var = ((sq - n * mean.square()) / max(n - 1, 1)).clamp_min(0)
    return tuple(mean.tolist()), tuple(var.sqrt().tolist())


@DATASETS.register("gtsrb")
def load_gtsrb(root: Path | None = None, split_seed: int = 0) -> ImageData:
    """GTSRB's official 39,209 / 12,630 split, 43 classes, every image resized to 3x32x32.

    Resizing the whole image to 32x32 (bilinear), without cropping to the annotated ROI, is what BackdoorBench
    (and WaNet, whose loader it took) does; the ROI columns are read past.  Mean/std are computed from the
    training images (cheap: they are in memory).
    """
    root = _root(root, "gtsrb", GTSRB_EXPECTED)
    images = root / "GTSRB" / "Final_Training" / "Images"
    if not images.is_dir():
        raise _missing("gtsrb", images, GTSRB_EXPECTED, root)
    class_dirs = sorted(d for d in images.iterdir() if d.is_dir())
    if not class_dirs:
        raise _missing("gtsrb", images / "00000", GTSRB_EXPECTED, root)
    train = [(d / fname, cid) for d in class_dirs for fname, cid in _gt_csv(d / f"GT-{d.name}.csv", root)]
    test_dir = root / "GTSRB" / "Final_Test" / "Images"
    if not test_dir.is_dir():
        raise _missing("gtsrb", test_dir, GTSRB_EXPECTED, root)
    test = [(test_dir / fname, cid) for fname, cid in _gt_csv(root / "GT-final_test.csv", root)]
    for path, _ in train + test:
        if not path.is_file():
            raise _missing("gtsrb", path, GTSRB_EXPECTED, root)
    x_train = _decode_all([p for p, _ in train], 32, "gtsrb")
    mean, std = _uint8_stats(x_train)
    return ImageData(x_train=x_train, y_train=torch.tensor([c for _, c in train], dtype=torch.int64),
                     x_test=_decode_all([p for p, _ in test], 32, "gtsrb"),
                     y_test=torch.tensor([c for _, c in test], dtype=torch.int64),
                     num_classes=GTSRB_CLASSES, mean=mean, std=std)


# -- Tiny-ImageNet-200 ---------------------------------------------------------------------------------------
TINY_EXPECTED = ("{root}/tiny-imagenet-200/wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
                 "val/val_annotations.txt (tiny-imagenet-200.zip, extracted)")


@DATASETS.register("tiny_imagenet")
def load_tiny_imagenet(root: Path | None = None, split_seed: int = 0) -> ImageData:
    """Tiny-ImageNet-200: 100,000 train / 10,000 val (used as test) images, 200 classes, 3x64x64, decoded on
    access.  Class ids follow the sorted wnids (torchvision ImageFolder's order)."""
    root = _root(root, "tiny_imagenet", TINY_EXPECTED)
    base = root / "tiny-imagenet-200"
    wnids_file, ann_file = base / "wnids.txt", base / "val" / "val_annotations.txt"
    for f in (wnids_file, ann_file):
        if not f.is_file():
            raise _missing("tiny_imagenet", f, TINY_EXPECTED, root)
    wnids = sorted({w.strip() for w in wnids_file.read_text().splitlines() if w.strip()})
    if not wnids:
        raise _malformed("tiny_imagenet", wnids_file, "no wnids", TINY_EXPECTED, root)
    cls = {w: i for i, w in enumerate(wnids)}
    train_paths: list[str] = []
    train_y: list[int] = []
    for w in wnids:
        folder = base / "train" / w / "images"
        files = _list_images(folder) if folder.is_dir() else []
        if not files:
            raise _missing("tiny_imagenet", folder / "*.JPEG", TINY_EXPECTED, root)
        train_paths += files
        train_y += [cls[w]] * len(files)
    val_paths: list[str] = []
    val_y: list[int] = []
    for n, line in enumerate(ann_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in cls:
            why = f"line {n}: want <file>\\t<wnid from wnids.txt>\\t..., got {line[:60]!r}"
            raise _malformed("tiny_imagenet", ann_file, why, TINY_EXPECTED, root)
        path = base / "val" / "images" / fields[0]
        if not path.is_file():
            raise _missing("tiny_imagenet", path, TINY_EXPECTED, root)
        val_paths.append(str(path))
        val_y.append(cls[fields[1]])
    return ImageData(x_train=FileImages("tiny_imagenet", train_paths, 64),
                     y_train=torch.tensor(train_y, dtype=torch.int64),
                     x_test=FileImages("tiny_imagenet", val_paths, 64), y_test=torch.tensor(val_y, dtype=torch.int64),
                     num_classes=len(wnids), mean=TINY_MEAN, std=TINY_STD)


# -- ImageNet (ILSVRC-2012) ----------------------------------------------------------------------------------
IMAGENET_EXPECTED = ("{root}/imagenet/train/<wnid>/*.JPEG and {root}/imagenet/val/<wnid>/*.JPEG "
                     "(ImageFolder layout; sort val into class folders first)")


@DATASETS.register("imagenet")
def load_imagenet(root: Path | None = None, split_seed: int = 0, size: int = 224) -> ImageData:
    """ImageNet in ImageFolder layout: class ids are the sorted train folder names (1000 in the full set), val
    is the test split.  Each image is decoded on access, its shorter side resized to size*256/224 (256 for 224)
    and the central size x size crop kept: 3 x size x size."""
    root = _root(root, "imagenet", IMAGENET_EXPECTED)
    base = root / "imagenet"
    splits: dict[str, tuple[list[str], list[int]]] = {}
    classes: dict[str, int] = {}
    for split in ("train", "val"):
        folder = base / split
        dirs = sorted(d.name for d in os.scandir(folder) if d.is_dir()) if folder.is_dir() else []
        if not dirs:
            raise _missing("imagenet", folder / "<wnid>", IMAGENET_EXPECTED, root)
        if split == "train":
            classes = {w: i for i, w in enumerate(dirs)}
        elif stray := [w for w in dirs if w not in classes]:
            raise _malformed("imagenet", folder, f"class folder {stray[0]!r} has no train folder",
                             IMAGENET_EXPECTED, root)
        paths: list[str] = []
        ys: list[int] = []
        for w in dirs:
            files = _list_images(folder / w)
            if split == "train" and not files:
                raise _missing("imagenet", folder / w / "*.JPEG", IMAGENET_EXPECTED, root)
            paths += files
            ys += [classes[w]] * len(files)
        splits[split] = (paths, ys)
    short = int(size * 256 / 224)
    (tr_paths, tr_y), (va_paths, va_y) = splits["train"], splits["val"]
    if not va_paths:
        raise _missing("imagenet", base / "val" / "<wnid>" / "*.JPEG", IMAGENET_EXPECTED, root)
    return ImageData(x_train=FileImages("imagenet", tr_paths, size, short),
                     y_train=torch.tensor(tr_y, dtype=torch.int64),
                     x_test=FileImages("imagenet", va_paths, size, short),
                     y_test=torch.tensor(va_y, dtype=torch.int64),
                     num_classes=len(classes), mean=IMAGENET_MEAN, std=IMAGENET_STD)
