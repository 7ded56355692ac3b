"""The real-dataset loaders (CIFAR-10, GTSRB, Tiny-ImageNet, ImageNet) on tiny fixtures written in each
dataset's official on-disk format: shapes, labels, value range, sizes, and one-line errors for missing or
malformed files.  Sized to run in a few seconds."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from _helpers import one_line_error
from benchmark.registries import DATASETS
from tasks.image_classification import ImageClassificationConfig, ImageClassificationTask
from tasks.image_classification.data import ImageSource, SampleView
from tasks.image_classification.real_data import (load_cifar10, load_gtsrb, load_imagenet,
                                                  load_tiny_imagenet)

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]  # solid colour per class: survives resize and JPEG


pytestmark = pytest.mark.usefixtures("no_env_root")  # loaders must not see a real $FIPBENCH_DATA


def solid(size: tuple[int, int], color, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, color if mode == "RGB" else color[0])


# -- fixtures in the official formats ------------------------------------------------------------------------
def write_cifar(root, per_batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """cifar-10-batches-py with 5 train batches + test_batch of `per_batch` images, labels 0/1 alternating."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f, protocol=2)
    written = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": [i % 2 for i in range(per_batch)], b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = data
    return written


def write_gtsrb(root) -> None:
    """2 training classes x 3 .ppm images (odd sizes) with GT-<class>.csv, 3 test images + GT-final_test.csv."""
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
    for cid in (0, 1):
        folder = root / "GTSRB" / "Final_Training" / "Images" / f"{cid:05d}"
        folder.mkdir(parents=True)
        rows = [header]
        for k in range(3):
            name = f"00000_{k:05d}.ppm"
            solid((40 + k, 35), COLORS[cid]).save(folder / name, format="PPM")
            rows.append(f"{name};{40 + k};35;5;5;{35 + k};30;{cid}")
        (folder / f"GT-{cid:05d}.csv").write_text("\n".join(rows) + "\n")
    test = root / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows = [header]
    for k, cid in enumerate((1, 0, 1)):
        solid((50, 47), COLORS[cid]).save(test / f"{k:05d}.ppm", format="PPM")
        rows.append(f"{k:05d}.ppm;50;47;5;5;45;42;{cid}")
    (root / "GT-final_test.csv").write_text("\n".join(rows) + "\n")


WNIDS = ["n02085620", "n01443537"]  # deliberately unsorted in wnids.txt; class ids follow the sorted order


def write_tiny(root) -> None:
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for w in WNIDS:
        folder = base / "train" / w / "images"
        folder.mkdir(parents=True)
        cid = sorted(WNIDS).index(w)
        for k in range(3):
            mode = "L" if k == 2 else "RGB"  # Tiny-ImageNet has some grey-scale JPEGs
            solid((64, 64), COLORS[cid], mode).save(folder / f"{w}_{k}.JPEG", quality=95)
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
    lines = []
    for k, w in enumerate(WNIDS + WNIDS):
        solid((64, 64), COLORS[sorted(WNIDS).index(w)]).save(base / "val" / "images" / f"val_{k}.JPEG", quality=95)
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def write_imagenet(root) -> None:
    """2 classes; 80x40 images whose outer 10 columns are black: a center crop must cut them off."""
    for split, n in (("train", 3), ("val", 2)):
        for cid, w in enumerate(sorted(WNIDS)):
            folder = root / "imagenet" / split / w
            folder.mkdir(parents=True)
            for k in range(n):
                arr = np.zeros((40, 80, 3), dtype=np.uint8)
                arr[:, 10:70] = COLORS[cid]
                Image.fromarray(arr).save(folder / f"{w}_{k}.JPEG", quality=95)


# -- the loaders ---------------------------------------------------------------------------------------------
def test_all_real_datasets_are_registered():
    assert {"cifar10", "gtsrb", "tiny_imagenet", "imagenet"} <= set(DATASETS.names())
    assert DATASETS.get("cifar10") is load_cifar10


def test_cifar10_reads_the_python_pickles(tmp_path):
    written = write_cifar(tmp_path)
    d = load_cifar10(tmp_path)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_train.dtype == torch.uint8
    assert d.x_test.shape == (4, 3, 32, 32) and d.shape == (3, 32, 32) and d.num_classes == 10
    assert d.y_train.tolist() == [0, 1, 0, 1] * 5 and d.y_train.dtype == torch.int64
    # layout: each row is 1024 R, 1024 G, 1024 B values of a row-major 32x32 image
    row = written["data_batch_2"][1]
    assert torch.equal(d.x_train[5, 0], torch.from_numpy(row[:1024].reshape(32, 32)))
    assert torch.equal(d.x_train[5, 2], torch.from_numpy(row[2048:].reshape(32, 32)))
    assert len(d.mean) == len(d.std) == 3


def test_cifar10_errors_are_one_line_and_name_the_files(tmp_path, monkeypatch):
    msg = one_line_error(load_cifar10, None)
    assert "cifar-10-batches-py/data_batch_1..5" in msg and "--data-root" in msg and "FIPBENCH_DATA" in msg
    assert "data_batch_1" in one_line_error(load_cifar10, tmp_path)  # empty root
    write_cifar(tmp_path)
    monkeypatch.setenv("FIPBENCH_DATA", str(tmp_path))
    assert len(load_cifar10(None).y_test) == 4  # the environment variable is the fallback root
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])  # truncated
    assert "data_batch_3 is malformed" in one_line_error(load_cifar10, tmp_path)
    with open(batch, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    assert "not uint8 [N,3072]" in one_line_error(load_cifar10, tmp_path)
    with open(batch, "wb") as f:
        pickle.dump({"data": 1}, f, protocol=2)
    assert 'b"labels"' in one_line_error(load_cifar10, tmp_path)


class _Sneaky:
    def __reduce__(self):
        return (os.getcwd, ())  # a harmless stand-in for a pickle that would run code


def test_cifar10_pickle_may_only_rebuild_arrays(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": _Sneaky(), b"labels": []}, f, protocol=2)
    assert "refusing global" in one_line_error(load_cifar10, tmp_path)


def test_gtsrb_reads_ppm_folders_and_csvs(tmp_path):
    write_gtsrb(tmp_path)
    d = load_gtsrb(tmp_path)
    assert d.x_train.shape == (6, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)  # resized to 32x32
    assert d.num_classes == 43
    assert d.y_train.tolist() == [0, 0, 0, 1, 1, 1] and d.y_test.tolist() == [1, 0, 1]
    assert d.x_test[0, :, 16, 16].tolist() == list(COLORS[1])  # .ppm is lossless; solid colour survives resize
    # statistics of the (in-memory) training images: half the images have 200 in R, half 30
    assert d.mean == pytest.approx((115 / 255, 115 / 255, 30 / 255)) and d.std[0] == pytest.approx(85 / 255, rel=1e-3)


def test_gtsrb_errors(tmp_path):
    assert "GT-final_test.csv" in one_line_error(load_gtsrb, None)
    write_gtsrb(tmp_path)
    (tmp_path / "GT-final_test.csv").unlink()
    assert "GT-final_test.csv not found" in one_line_error(load_gtsrb, tmp_path)
    (tmp_path / "GT-final_test.csv").write_text("Filename;Width\n00000.ppm;50\n")  # no ClassId column
    assert "ClassId" in one_line_error(load_gtsrb, tmp_path)
    (tmp_path / "GT-final_test.csv").write_text("Filename;ClassId\n00000.ppm;77\n")
    assert "class id 77" in one_line_error(load_gtsrb, tmp_path)
    (tmp_path / "GT-final_test.csv").write_text("Filename;ClassId\n00000.ppm;1\n")
    ppm = tmp_path / "GTSRB" / "Final_Training" / "Images" / "00001" / "00000_00002.ppm"
    ppm.write_bytes(ppm.read_bytes()[:200])  # truncated
    assert "cannot decode image" in one_line_error(load_gtsrb, tmp_path)


def test_tiny_imagenet_is_lazy_64px_rgb(tmp_path):
    write_tiny(tmp_path)
    d = load_tiny_imagenet(tmp_path)
    assert isinstance(d.x_train, ImageSource) and d.shape == (3, 64, 64) and d.num_classes == 2
    assert len(d.x_train) == 6 and len(d.x_test) == 4
    assert d.y_train.tolist() == [0, 0, 0, 1, 1, 1] and d.y_test.tolist() == [1, 0, 1, 0]
    x = d.x_train[4]  # class 1 (n02085620), an RGB file
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(COLORS[1]) / 255, atol=0.02)
    assert d.x_train[2].shape == (3, 64, 64)  # grey-scale file -> 3 channels


def test_tiny_imagenet_errors(tmp_path):
    assert "tiny-imagenet-200/wnids.txt" in one_line_error(load_tiny_imagenet, None)
    write_tiny(tmp_path)
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    assert "val_annotations.txt is malformed" in one_line_error(load_tiny_imagenet, tmp_path)
    ann.unlink()
    assert "val_annotations.txt not found" in one_line_error(load_tiny_imagenet, tmp_path)
    write_tiny(tmp_path / "b")
    jpeg = tmp_path / "b" / "tiny-imagenet-200" / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_0.JPEG"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    d = load_tiny_imagenet(tmp_path / "b")  # lazy: the corrupt file is found when read
    assert "cannot decode image" in one_line_error(d.x_train.__getitem__, 0)


def test_imagenet_resizes_the_short_side_and_center_crops(tmp_path):
    write_imagenet(tmp_path)
    d = load_imagenet(tmp_path, size=32)
    assert d.shape == (3, 32, 32) and d.num_classes == 2 and len(d.x_train) == 6 and len(d.x_test) == 4
    assert d.y_train.tolist() == [0, 0, 0, 1, 1, 1] and d.y_test.tolist() == [0, 0, 1, 1]
    x = d.x_test[3]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
    # the black outer columns are outside the central crop (a plain resize would keep them)
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(COLORS[1]) / 255, atol=0.03)
    assert load_imagenet(tmp_path).x_train[0].shape == (3, 224, 224)  # default size


def test_imagenet_errors(tmp_path):
    assert "imagenet/train/<wnid>" in one_line_error(load_imagenet, None)
    write_imagenet(tmp_path)
    (tmp_path / "imagenet" / "val" / "n09999999").mkdir()
    assert "has no train folder" in one_line_error(load_imagenet, tmp_path)


# -- through the task ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, writer, shape", [("cifar10", write_cifar, (3, 32, 32)),
                                                 ("tiny_imagenet", write_tiny, (3, 64, 64))])
def test_task_splits_and_collate(tmp_path, name, writer, shape):
    writer(tmp_path)
    task = ImageClassificationTask(name, ImageClassificationConfig(holdout_fraction=0.2), data_root=tmp_path)
    sp = task.splits()
    assert isinstance(sp.train, SampleView) and task.input_shape == shape
    n_train = len(task.data.y_train)
    assert len(sp.train) + len(sp.holdout) == n_train and len(sp.test) == len(task.data.y_test)
    assert [sp.train[i].index for i in range(len(sp.train))] == list(range(len(sp.train)))
    assert sp.train[-1].index == len(sp.train) - 1 and len(sp.train[:2]) == 2
    with pytest.raises(IndexError):
        sp.train[len(sp.train)]
    batch = task.collate([sp.train[i] for i in range(min(4, len(sp.train)))])
    assert batch["x"].dtype == torch.float32 and batch["x"].shape[1:] == shape
    assert 0 <= batch["x"].min() and batch["x"].max() <= 1 and batch["y"].dtype == torch.int64
    from attacks.badnets import BadNets, BadNetsConfig
    # triggers work on the lazily built samples
    poisoned = BadNets(BadNetsConfig(poison_rate=0.5), seed=0).poison(task, sp.train)
    assert poisoned[poisoned.indices[0]].x.shape == shape
    # one training step and the clean metric over the lazily built splits
    from benchmark.rng import generator
    from tasks.base import FitConfig

    model = task.build_model("small_cnn", generator(0, "init"))
    fit = task.fit(model, poisoned, FitConfig(steps=1, batch_size=4), generator=generator(0, "train"))
    assert fit.steps == 1 and 0 <= task.metrics(model, sp.test)["acc"] <= 1
