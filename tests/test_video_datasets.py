"""The real video loaders (UCF-101, HMDB-51) on tiny fixtures in each dataset's official on-disk layout, with
real MPEG-4 .avi files written by PyAV: split sizes, 0-based class ids, clip shapes and value range, temporal
sampling (frame brightness rises over each video), multi-clip test sets, short videos, the resize/crop geometry,
and one-line errors for missing, malformed and corrupt files.  Runs in a few seconds."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from _helpers import one_line_error
from benchmark.registries import DATASETS
from tasks.video_recognition.data import ClipSource
from tasks.video_recognition.real_data import (KINETICS_MEAN, frame_indices, load_hmdb51, load_ucf101,
                                               resize_center_crop)

N_FRAMES = 12
W, H = 40, 32
TOL = 14 / 255  # MPEG-4 + YUV 4:2:0 round trip of a flat grey frame


pytestmark = pytest.mark.usefixtures("no_env_root")  # loaders must not see a real $FIPBENCH_DATA


def level(i: int) -> float:
    """Grey level in [0,1] of frame i of every fixture video: rises 18/255 a frame."""
    return (20 + 18 * i) / 255


def write_avi(path, n: int = N_FRAMES) -> None:
    """A real MPEG-4 AVI: n flat grey 40x32 frames, frame i at `level(i)`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(n):
            rgb = np.full((H, W, 3), round(level(i) * 255), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())  # flush


def brightness(clip: torch.Tensor) -> list[float]:
    return clip.mean(dim=(1, 2, 3)).tolist()  # [T]


# -- UCF-101 -------------------------------------------------------------------------------------------------
UCF_CLASSES = ["ApplyEyeMakeup", "Basketball", "HandstandPushups"]  # classInd order, not alphabetical below


def write_ucf(root, short: str | None = None):
    """3 classes x 3 videos (groups g01..g03); g01 is test, the rest train.  `short` names a 3-frame video."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    order = [UCF_CLASSES[2], UCF_CLASSES[0], UCF_CLASSES[1]]  # ids 1..3 listed out of order
    (lists / "classInd.txt").write_text("".join(f"{UCF_CLASSES.index(c) + 1} {c}\r\n" for c in order) + "\r\n")
    train, test = [], []
    for cid, cls in enumerate(UCF_CLASSES):
        for g in (1, 2, 3):
            name = cls.replace("Handstand", "HandStand")  # the official file names' spelling
            rel = f"{cls}/v_{name}_g0{g}_c01.avi"
            write_avi(root / "UCF-101" / rel, 3 if rel == short else N_FRAMES)
            (test if g == 1 else train).append(rel)
            if g > 1:
                train[-1] += f" {cid + 1}"
    (lists / "trainlist01.txt").write_text("".join(f"{t}  \r\n" for t in train) + "\n\n")
    (lists / "testlist01.txt").write_text("".join(f"{t}\n" for t in test))
    return lists, train, test


def test_ucf101_splits_labels_and_clips(tmp_path):
    write_ucf(tmp_path)
    d = load_ucf101(tmp_path, frames=4, size=16)
    assert load_ucf101.task == "video_recognition"
    assert d.classes == tuple(UCF_CLASSES) and d.num_classes == 3
    assert d.mean == KINETICS_MEAN and d.test_videos is None
    assert isinstance(d.x_train, ClipSource) and len(d.x_train) == 6 and len(d.x_test) == 3
    assert d.y_train.tolist() == [0, 0, 1, 1, 2, 2] and d.y_test.tolist() == [0, 1, 2]
    assert d.y_train.dtype == torch.int64 and d.clip_shape == (4, 3, 16, 16)
    clip = d.x_test[2]
    assert clip.shape == (4, 3, 16, 16) and clip.dtype == torch.float32
    assert 0 <= float(clip.min()) and float(clip.max()) <= 1
    # N=12, T=4: segment centres are frames 1, 4, 7, 10
    assert brightness(clip) == pytest.approx([level(i) for i in (1, 4, 7, 10)], abs=TOL)


def test_ucf101_env_root_and_registry(tmp_path, monkeypatch):
    write_ucf(tmp_path)
    monkeypatch.setenv("FIPBENCH_DATA", str(tmp_path))
    loader = DATASETS.get("ucf101")
    assert loader is load_ucf101 and loader.task == "video_recognition"
    assert DATASETS.get("hmdb51") is load_hmdb51 and load_hmdb51.task == "video_recognition"
    assert len(loader(size=8).y_train) == 6


def test_ucf101_multi_clip_test_and_short_video(tmp_path):
    _, _, test = write_ucf(tmp_path, short="Basketball/v_Basketball_g01_c01.avi")
    d = load_ucf101(tmp_path, frames=4, size=16, test_clips=2)
    assert len(d.x_test) == 6 and d.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    assert d.test_videos.tolist() == [0, 0, 1, 1, 2, 2]
    # offsets 1/4 and 3/4 of each segment: frames 0,3,6,9 and 2,5,8,11
    assert brightness(d.x_test[0]) == pytest.approx([level(i) for i in (0, 3, 6, 9)], abs=TOL)
    assert brightness(d.x_test[1]) == pytest.approx([level(i) for i in (2, 5, 8, 11)], abs=TOL)
    # the 3-frame video repeats frames: floor((j + 1/4) * 3/4) = 0,0,1,2
    short = d.x_test[2]
    assert short.shape == (4, 3, 16, 16)
    assert brightness(short) == pytest.approx([level(i) for i in (0, 0, 1, 2)], abs=TOL)


def test_ucf101_errors(tmp_path):
    one_line_error(load_ucf101, match="no data root given.*UCF-101")
    one_line_error(load_ucf101, tmp_path / "nope", match="is not a directory")
    one_line_error(load_ucf101, tmp_path, fold=4, match="fold must be 1, 2 or 3")
    one_line_error(load_ucf101, tmp_path, fold=0, match="fold must be 1, 2 or 3")
    one_line_error(load_ucf101, tmp_path, match="classInd.txt not found")
    lists, train, test = write_ucf(tmp_path)
    one_line_error(load_ucf101, tmp_path, fold=2, match="trainlist02.txt not found")
    (lists / "trainlist01.txt").write_text(f"{train[0]}\n{train[1].split()[0]}\n")  # line 2 lacks its id
    one_line_error(load_ucf101, tmp_path, match=r"trainlist01.txt is malformed \(line 2: ")
    (lists / "trainlist01.txt").write_text(f"{train[0].split()[0]} 7\n")  # id out of range
    one_line_error(load_ucf101, tmp_path, match=r"trainlist01.txt is malformed \(line 1: .*1..3")
    (lists / "trainlist01.txt").write_text("".join(f"{t}\n" for t in train))
    (lists / "testlist01.txt").write_text("\n".join(test + ["Juggling/v_Juggling_g01_c01.avi"]))
    one_line_error(load_ucf101, tmp_path, match=r"testlist01.txt is malformed \(line 4: ")
    (lists / "testlist01.txt").write_text("\n".join(test))
    (tmp_path / "UCF-101" / test[1]).unlink()
    (tmp_path / "UCF-101" / test[2]).unlink()
    one_line_error(load_ucf101, tmp_path, match=r"v_Basketball_g01_c01.avi not found \(2 of the 9 videos")


def test_corrupt_video_fails_when_read(tmp_path):
    _, _, test = write_ucf(tmp_path)
    (tmp_path / "UCF-101" / test[0]).write_bytes(b"RIFF\x00\x01garbage, not an AVI" * 20)
    d = load_ucf101(tmp_path, frames=4, size=16)  # labels need no decoding
    assert d.x_test[1].shape == (4, 3, 16, 16)
    one_line_error(d.x_test.__getitem__, 0, match=r"cannot decode video .*v_ApplyEyeMakeup_g01_c01.avi")


# -- HMDB-51 -------------------------------------------------------------------------------------------------
HMDB_CLASSES = ["brush_hair", "fall_floor", "ride_bike"]  # sorted: ids 0..2


def write_hmdb(root):
    """Per class: videos a (train), b (test), c (unused), d (train), in that split-file order."""
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for cls in reversed(HMDB_CLASSES):
        names = [f"{cls}_{v}_u_cm_np1_fr_med_0.avi" for v in "abcd"]
        for v in names:
            write_avi(root / "hmdb51" / cls / v)
        lines = [f"{names[0]} 1 ", f"{names[1]} 2 ", f"{names[2]} 0 ", f"{names[3]} 1 "]
        (splits / f"{cls}_test_split1.txt").write_text("\r\n".join(lines) + "\r\n\r\n")
        for fold in (2, 3):
            (splits / f"{cls}_test_split{fold}.txt").write_text("\n".join(lines))
    return splits


def test_hmdb51_splits_labels_and_clips(tmp_path):
    write_hmdb(tmp_path)
    d = load_hmdb51(tmp_path, frames=4, size=24, test_clips=2, fold=3)
    assert d.classes == tuple(HMDB_CLASSES) and d.num_classes == 3
    assert len(d.x_train) == 6 and d.y_train.tolist() == [0, 0, 1, 1, 2, 2]
    assert [p.rsplit("/", 1)[1][:12] for p, _ in d.x_train.items[:2]] == ["brush_hair_a", "brush_hair_d"]
    assert len(d.x_test) == 6 and d.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    assert d.test_videos.tolist() == [0, 0, 1, 1, 2, 2]
    clip = d.x_train[3]
    assert clip.shape == (4, 3, 24, 24) and 0 <= float(clip.min()) and float(clip.max()) <= 1
    assert brightness(clip) == pytest.approx([level(i) for i in (1, 4, 7, 10)], abs=TOL)


def test_hmdb51_errors(tmp_path):
    one_line_error(load_hmdb51, match="no data root given.*hmdb51")
    one_line_error(load_hmdb51, tmp_path, fold=5, match="fold must be 1, 2 or 3")
    one_line_error(load_hmdb51, tmp_path, match="testTrainMulti_7030_splits not found")
    splits = write_hmdb(tmp_path)
    (splits / "fall_floor_test_split2.txt").unlink()
    one_line_error(load_hmdb51, tmp_path, fold=2, match="fall_floor_test_split2.txt not found")
    bad = splits / "ride_bike_test_split1.txt"
    bad.write_text(bad.read_text() + "ride_bike_e.avi train\n")  # after a blank line: line 6
    one_line_error(load_hmdb51, tmp_path, match=r"ride_bike_test_split1.txt is malformed \(line 6: ")
    bad.write_text("ride_bike_zzz.avi 1\n")
    one_line_error(load_hmdb51, tmp_path, match=r"hmdb51/ride_bike/ride_bike_zzz.avi not found \(1 of the 7")


# -- helpers -------------------------------------------------------------------------------------------------
def test_frame_indices_and_resize_match_torchvision():
    assert frame_indices(12, 4, 0.5) == [1, 4, 7, 10]
    assert frame_indices(3, 8, 0.5) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert frame_indices(100, 1, 0.999) == [99]
    x = torch.rand(2, 3, 30, 50, generator=torch.Generator().manual_seed(0))  # [T,3,H,W], landscape
    for size in (16, 30, 40):
        want = TF.center_crop(TF.resize(x, [size], antialias=True), [size, size]).clamp(0, 1)
        assert torch.allclose(resize_center_crop(x, size), want, atol=1e-6)
    assert resize_center_crop(x.transpose(2, 3), 16).shape == (2, 3, 16, 16)  # portrait
