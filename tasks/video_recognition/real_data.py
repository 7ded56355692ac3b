"""Real video-recognition datasets (UCF-101, HMDB-51), read from local files in each dataset's official layout.

Nothing is downloaded.  Every loader takes `root` (the CLI's --data-root, else $FIPBENCH_DATA) and raises a
one-line FipbenchError naming the expected files when they are missing or malformed (the image-classification
helpers, hence the same messages).  Train/test are the official splits (`fold` 1, 2 or 3 picks the split file),
so `split_seed` is unused.  Labels come from the split files alone, so they are known without decoding a video;
every listed video is checked to exist at load time, and a file that cannot be decoded fails, naming its path,
when one of its clips is read.

Clip policy.  Videos are decoded with PyAV (torchvision 0.29 no longer has `torchvision.io.read_video`): all N
frames of the first video stream (only the frames a clip uses are converted to RGB).  A clip is T = `frames`
frames, one at the same relative position in each of T equal segments of the video (TSN-style uniform sampling,
deterministic): clip c of k takes frame floor((j + (c + 0.5) / k) * N / T), j = 0..T-1, clamped to N - 1, so a
video shorter than T frames repeats frames.  Training uses one clip per video (k = 1: the segment centres); the
test set has k = `test_clips` clips per video, consecutive, and `VideoData.test_videos` [N_test_clips] gives each
clip's video (None when k = 1) for video-level accuracy.  Each frame's short side is resized to `size`
(bilinear, antialiased; torchvision's Resize(size)) and the central size x size window kept: a clip is float32
[T,3,size,size] in [0,1].  mean/std are the Kinetics-400 statistics of torchvision's video models, whose
pretrained weights the usual UCF/HMDB fine-tuning starts from.

- ucf101: <root>/UCF-101/<Class>/v_<Class>_gXX_cYY.avi and <root>/ucfTrainTestlist/{classInd,trainlist0F,
  testlist0F}.txt (UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip).  Class ids: classInd's 1-based ids
  minus 1.  Train lines give "<Class>/<file>.avi <id>"; test lines only the path, the class being its folder
  (matched case-insensitively: the official lists spell "HandStandPushups" in file names, not folders).
- hmdb51: <root>/hmdb51/<class>/<video>.avi and <root>/testTrainMulti_7030_splits/<class>_test_splitF.txt
  (hmdb51_org.rar and test_train_splits.rar).  Each split-file line is "<video>.avi <tag>": 1 train, 2 test,
  0 unused (70 / 30 per class).  The class names are read from the split-file names and their ids are the names
  sorted alphabetically (as torchvision's HMDB51 does); videos keep their split-file order within a class.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import av
import torch
import torch.nn.functional as F

from benchmark.errors import FipbenchError
from benchmark.registries import DATASETS
from tasks.image_classification.real_data import FIX, _malformed, _missing, _root
from tasks.video_recognition.data import ClipSource, VideoData

# torchvision's r3d_18 / r2plus1d_18 / mc3_18 Kinetics-400 weights normalise with these
KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)


def frame_indices(n: int, frames: int, offset: float) -> list[int]:
    """Indices of the T = `frames` frames of a clip from an n-frame video, at `offset` in (0,1) of each of the
    T equal segments; clamped to n - 1 (a short video repeats frames)."""
    return [min(math.floor((j + offset) * n / frames), n - 1) for j in range(frames)]


class VideoClips(ClipSource):
    """Clips decoded from video files on access: item i is (path, offset) -> float [T,3,size,size] in [0,1].

    The decoded frames of the last video are kept, so the k consecutive test clips of a video decode it once
    (decoding, not the resize, is the cost).  The cache is dropped when pickled for DataLoader workers."""

    def __init__(self, name: str, items: list[tuple[str, float]], frames: int, size: int):
        self.name, self.items, self.frames, self.size = name, items, frames, size
        self.clip_shape = (frames, 3, size, size)
        self._cache: tuple[str, list[av.VideoFrame]] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}

    def _decode(self, path: str) -> list[av.VideoFrame]:
        if self._cache is not None and self._cache[0] == path:
            return self._cache[1]
        self._cache = None
        try:
            with av.open(path) as container:
                if not container.streams.video:
                    raise ValueError("no video stream")
                decoded = list(container.decode(container.streams.video[0]))
        except (av.FFmpegError, OSError, ValueError, EOFError) as err:
            why = getattr(err, "strerror", None) or err  # FFmpegError's str() repeats the path
            raise FipbenchError(f"dataset {self.name}: cannot decode video {path} ({type(err).__name__}: {why}); "
                                f"re-extract the official archive") from None
        if not decoded:
            raise FipbenchError(f"dataset {self.name}: video {path} has no decodable frames; "
                                f"re-extract the official archive")
        self._cache = (path, decoded)
        return decoded

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        path, offset = self.items[i]
        decoded = self._decode(path)
        rgb = [torch.from_numpy(decoded[k].to_ndarray(format="rgb24")) for k in
               frame_indices(len(decoded), self.frames, offset)]  # T x [H,W,3] uint8
        x = torch.stack(rgb).permute(0, 3, 1, 2).float().div_(255.0)  # [T,3,H,W]
        return resize_center_crop(x, self.size)


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """[T,3,H,W] -> [T,3,size,size]: short side to `size` (bilinear, antialias; torchvision Resize(size)
    rounding), then torchvision's CenterCrop(size)."""
    h, w = x.shape[-2:]
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return x[..., top:top + size, left:left + size].contiguous()


def _lines(name: str, path: Path, expected: str, root: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, whitespace tokens) of the non-blank lines of a split file (CRLF, BOM tolerated)."""
    if not path.is_file():
        raise _missing(name, path, expected, root)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise _malformed(name, path, err, expected, root) from None
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _check_args(name: str, frames: int, size: int, test_clips: int, fold: int) -> None:
    if fold not in (1, 2, 3) or isinstance(fold, bool):
        raise FipbenchError(f"dataset {name}: fold must be 1, 2 or 3 (the official splits), got {fold!r}")
    for arg, v in (("frames", frames), ("size", size), ("test_clips", test_clips)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise FipbenchError(f"dataset {name}: {arg} must be a positive integer, got {v!r}")


def _video_data(name: str, train: list[tuple[Path, int]], test: list[tuple[Path, int]], classes: list[str],
                frames: int, size: int, k: int, expected: str, root: Path) -> VideoData:
    """Check every listed video exists, then wrap the lists as lazy clip sources (k test clips per video)."""
    videos = [p for p, _ in train + test]
    missing = [p for p in videos if not os.path.isfile(p)]
    if missing:
        raise FipbenchError(f"dataset {name}: {missing[0]} not found ({len(missing)} of the {len(videos)} videos "
                            f"listed in the split files are missing); expected {expected.format(root=root)}; {FIX}")
    offsets = [(c + 0.5) / k for c in range(k)]  # k evenly spaced positions within each segment
    return VideoData(
        x_train=VideoClips(name, [(str(p), 0.5) for p, _ in train], frames, size),
        y_train=torch.tensor([y for _, y in train], dtype=torch.int64),  # [N_train]
        x_test=VideoClips(name, [(str(p), o) for p, _ in test for o in offsets], frames, size),
        y_test=torch.tensor([y for _, y in test], dtype=torch.int64).repeat_interleave(k),  # [N_test * k]
        num_classes=len(classes), mean=KINETICS_MEAN, std=KINETICS_STD, classes=tuple(classes),
        test_videos=torch.arange(len(test)).repeat_interleave(k) if k > 1 else None)


# -- UCF-101 -------------------------------------------------------------------------------------------------
UCF_EXPECTED = ("{root}/UCF-101/<Class>/v_<Class>_gXX_cYY.avi and {root}/ucfTrainTestlist/classInd.txt, "
                "trainlist0<fold>.txt, testlist0<fold>.txt (UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip "
                "from crcv.ucf.edu, extracted into {root})")


@DATASETS.register("ucf101")
def load_ucf101(root: Path | None = None, split_seed: int = 0, *, frames: int = 16, size: int = 112,
                test_clips: int = 1, fold: int = 1) -> VideoData:
    """UCF-101, official split `fold` (split 1: 9,537 train / 3,783 test videos), 101 classes."""
    _check_args("ucf101", frames, size, test_clips, fold)
    root = _root(root, "ucf101", UCF_EXPECTED)
    lists, videos = root / "ucfTrainTestlist", root / "UCF-101"
    bad = lambda f, n, why: _malformed("ucf101", f, f"line {n}: {why}", UCF_EXPECTED, root)  # noqa: E731
    ids: dict[int, str] = {}
    for n, tok in _lines("ucf101", lists / "classInd.txt", UCF_EXPECTED, root):
        if len(tok) != 2 or not tok[0].isdigit() or int(tok[0]) in ids:
            raise bad(lists / "classInd.txt", n, f"want '<id> <ClassName>', ids distinct, got {' '.join(tok)!r}")
        ids[int(tok[0])] = tok[1]
    if sorted(ids) != list(range(1, len(ids) + 1)):
        raise _malformed("ucf101", lists / "classInd.txt", "class ids are not 1..K", UCF_EXPECTED, root)
    classes = [ids[i] for i in range(1, len(ids) + 1)]
    by_folder = {c.lower(): i for i, c in enumerate(classes)}
    train = []
    for n, tok in _lines("ucf101", f := lists / f"trainlist0{fold}.txt", UCF_EXPECTED, root):
        if len(tok) != 2 or not tok[1].isdigit() or not 1 <= int(tok[1]) <= len(classes):
            raise bad(f, n, f"want '<Class>/<video>.avi <id>' with id in 1..{len(classes)}, got {' '.join(tok)!r}")
        train.append((videos / tok[0], int(tok[1]) - 1))
    test = []
    for n, tok in _lines("ucf101", f := lists / f"testlist0{fold}.txt", UCF_EXPECTED, root):
        folder = tok[0].replace("\\", "/").split("/")[0].lower() if len(tok) == 1 else None
        if folder not in by_folder:
            raise bad(f, n, f"want '<Class>/<video>.avi' with a class of classInd.txt, got {' '.join(tok)!r}")
        test.append((videos / tok[0], by_folder[folder]))
    return _video_data("ucf101", train, test, classes, frames, size, test_clips, UCF_EXPECTED, root)


# -- HMDB-51 -------------------------------------------------------------------------------------------------
HMDB_EXPECTED = ("{root}/hmdb51/<class>/<video>.avi and {root}/testTrainMulti_7030_splits/<class>_test_split"
                 "<fold>.txt (hmdb51_org.rar and test_train_splits.rar from serre-lab.clps.brown.edu, the class "
                 "rars extracted into {root}/hmdb51)")
_HMDB_SPLIT = re.compile(r"(.+)_test_split[123]\.txt")


@DATASETS.register("hmdb51")
def load_hmdb51(root: Path | None = None, split_seed: int = 0, *, frames: int = 16, size: int = 112,
                test_clips: int = 1, fold: int = 1) -> VideoData:
    """HMDB-51, official split `fold` (3,570 train / 1,530 test videos), 51 classes, ids = sorted class names."""
    _check_args("hmdb51", frames, size, test_clips, fold)
    root = _root(root, "hmdb51", HMDB_EXPECTED)
    splits, videos = root / "testTrainMulti_7030_splits", root / "hmdb51"
    if not splits.is_dir():
        raise _missing("hmdb51", splits, HMDB_EXPECTED, root)
    # classes named by any fold's file, so a class lacking this fold's file is reported missing, not dropped
    classes = sorted({m.group(1) for e in os.scandir(splits) if (m := _HMDB_SPLIT.fullmatch(e.name))})
    if not classes:
        raise _missing("hmdb51", splits / f"<class>_test_split{fold}.txt", HMDB_EXPECTED, root)
    train, test = [], []
    for cid, cls in enumerate(classes):
        f = splits / f"{cls}_test_split{fold}.txt"
        for n, tok in _lines("hmdb51", f, HMDB_EXPECTED, root):
            if len(tok) < 2 or tok[-1] not in ("0", "1", "2"):
                raise _malformed("hmdb51", f, f"line {n}: want '<video>.avi <0|1|2>', got {' '.join(tok)!r}",
                                 HMDB_EXPECTED, root)
            if tok[-1] != "0":
                (train if tok[-1] == "1" else test).append((videos / cls / " ".join(tok[:-1]), cid))
    return _video_data("hmdb51", train, test, classes, frames, size, test_clips, HMDB_EXPECTED, root)


load_ucf101.task = "video_recognition"  # type: ignore[attr-defined]
load_hmdb51.task = "video_recognition"  # type: ignore[attr-defined]
