"""The ModelNet40 loader on tiny fixtures in both official on-disk layouts: HDF5 files written by h5py (the
modelnet40_ply_hdf5_2048 release) and plain-text .off meshes (ModelNet40.zip, including the glued "OFF<counts>"
header and a quad face).  Split sizes, class ids, shapes, normalisation, truncation and surface sampling, the
point cache, the registry, and one-line errors for missing and malformed files.  Runs in a few seconds."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from _helpers import one_line_error
from benchmark.registries import DATASETS
from benchmark.rng import generator
from tasks.point_cloud import real_data
from tasks.point_cloud.real_data import load_modelnet40

H5_CLASSES = ["airplane", "bathtub", "bed"]


pytestmark = pytest.mark.usefixtures("no_env_root")  # loaders must not see a real $FIPBENCH_DATA


def norms_ok(x: torch.Tensor) -> None:
    """Every cloud [N,P,3] centred on its mean with its farthest point on the unit sphere."""
    assert x.mean(dim=1).abs().max() < 1e-5
    assert torch.allclose(x.norm(dim=-1).amax(dim=1), torch.ones(len(x)), atol=1e-5)


# -- HDF5 release --------------------------------------------------------------------------------------------
def write_h5(path, labels, points: int = 64, seed: int = 0, drop: str = "") -> np.ndarray:
    """One ply_data_*.h5 file: clouds [n,points,3] (not normalised: offset and scaled) and uint8 labels [n,1]."""
    rng = np.random.default_rng(seed)
    data = (rng.normal(size=(len(labels), points, 3)) * 5 + 3).astype(np.float32)
    with h5py.File(path, "w") as h:
        if drop != "data":
            h.create_dataset("data", data=data)
        if drop != "label":
            h.create_dataset("label", data=np.array(labels, dtype=np.uint8)[:, None])
    return data


def write_h5_release(root):
    """3 classes; train in files 0, 2 and 10 (numeric order matters), test in 0 and 1."""
    d = root / "modelnet40_ply_hdf5_2048"
    d.mkdir(parents=True)
    (d / "shape_names.txt").write_text("".join(f"{c}\n" for c in H5_CLASSES))
    arrays = {}
    for name, labels in (("train10", [2, 2]), ("train0", [0, 1, 2]), ("train2", [1, 0]),
                         ("test1", [2]), ("test0", [0, 1])):
        arrays[name] = write_h5(d / f"ply_data_{name}.h5", labels, seed=len(arrays))
    (d / "ply_data_train_0_id2file.json").write_text("[]")  # shipped with the release; not data
    return d, arrays


def test_h5_splits_labels_and_normalisation(tmp_path):
    _, arrays = write_h5_release(tmp_path)
    d = load_modelnet40(tmp_path, num_points=64)
    assert d.classes == tuple(H5_CLASSES) and d.num_classes == 3
    assert d.y_train.tolist() == [0, 1, 2, 1, 0, 2, 2] and d.y_test.tolist() == [0, 1, 2]
    assert d.y_train.dtype == torch.int64 and d.x_train.dtype == torch.float32
    assert d.x_train.shape == (7, 64, 3) and d.x_test.shape == (3, 64, 3) and d.num_points == 64
    norms_ok(d.x_train), norms_ok(d.x_test)
    # a cloud is the file's cloud up to a translation and a uniform scale
    raw = torch.from_numpy(arrays["train0"][1])
    assert torch.allclose(d.x_train[1], real_data.normalise(raw), atol=1e-6)


def test_h5_truncation_and_registry(tmp_path, monkeypatch):
    _, arrays = write_h5_release(tmp_path)
    monkeypatch.setenv("FIPBENCH_DATA", str(tmp_path))
    loader = DATASETS.get("modelnet40")
    assert loader is load_modelnet40 and loader.task == "point_cloud"
    d = loader(num_points=32)
    assert d.x_train.shape == (7, 32, 3) and d.x_test.shape == (3, 32, 3)
    first = torch.from_numpy(arrays["test1"][0, :32])  # the first 32 points, not a resample
    assert torch.allclose(d.x_test[2], real_data.normalise(first), atol=1e-6)
    norms_ok(d.x_train)


def test_h5_wins_over_off(tmp_path):
    write_h5_release(tmp_path)
    write_off_release(tmp_path)
    assert load_modelnet40(tmp_path, num_points=64).classes == tuple(H5_CLASSES)


def test_h5_errors(tmp_path):
    d, _ = write_h5_release(tmp_path)
    one_line_error(load_modelnet40, tmp_path, num_points=65, match=r"has 64 points per cloud, fewer than "
                                                                  r"num_points=65")
    one_line_error(load_modelnet40, tmp_path, num_points=0, match="num_points must be a positive integer")
    f = d / "ply_data_test1.h5"
    bad = lambda why: one_line_error(load_modelnet40, tmp_path, num_points=64,  # noqa: E731
                                     match=rf"ply_data_test1.h5 is malformed \({why}")
    for key in ("label", "data"):
        write_h5(f, [2], drop=key)
        bad("no 'data' and 'label' datasets")
    write_h5(f, [3])
    bad("label 3 is outside 0..2")
    f.write_bytes(b"not hdf5")
    bad("OSError")
    with h5py.File(f, "w") as h:
        h["data"], h["label"] = np.zeros((2, 64), np.float32), np.zeros((2, 1), np.uint8)
    bad(r"want data \[n,P,3\]")
    with h5py.File(f, "w") as h:
        h["data"], h["label"] = np.zeros((2, 64, 3), np.float32), np.zeros((2, 1), np.float32)
    bad(r"want data \[n,P,3\] and integer label")
    for f in d.glob("ply_data_test*.h5"):
        f.unlink()
    one_line_error(load_modelnet40, tmp_path, num_points=64, match="ply_data_test0.h5 not found")
    (d / "shape_names.txt").unlink()
    one_line_error(load_modelnet40, tmp_path, match="shape_names.txt not found")


# -- .off mesh release ---------------------------------------------------------------------------------------
CUBE_QUADS = "OFF\n8 6 12\n" + "".join(f"{x} {y} {z}\n" for x in (2, 4) for y in (2, 4) for z in (2, 4)) + \
    "4 0 1 3 2\n4 4 5 7 6\n4 0 1 5 4\n4 2 3 7 6\n4 0 2 6 4\n4 1 3 7 5\n"  # an off-centre 2x2x2 cube, quads
TETRA_GLUED = "OFF4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n"
TRI = "OFF\n3 1 0\n\n0 0 0\n1.5 0 0\n0 2.5e0 0\n3 0 1 2\n\n"  # blank lines are tolerated


def write_off_release(root):
    """3 classes x (2 train + 1 test) meshes; "box" holds the quad cube, "cone" glued-header tetrahedra."""
    glued_quads = CUBE_QUADS.replace("OFF\n", "OFF")  # read by the line parser (the fast one takes triangles)
    files = {"box": [CUBE_QUADS, CUBE_QUADS, glued_quads], "cone": [TETRA_GLUED, TRI, TETRA_GLUED],
             "chair": [TRI, TETRA_GLUED, TRI]}
    for cls, texts in files.items():
        for i, (split, text) in enumerate(zip(("train", "train", "test"), texts)):
            p = root / "ModelNet40" / cls / split / f"{cls}_{i + 1:04d}.off"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    (root / "ModelNet40" / "box" / "train" / ".DS_Store").write_text("")  # not a mesh
    return root / "ModelNet40"


def test_off_splits_sampling_and_cache(tmp_path, monkeypatch):
    folder = write_off_release(tmp_path)
    d = load_modelnet40(tmp_path, num_points=256)
    assert d.classes == ("box", "chair", "cone") and d.num_classes == 3  # sorted folder names
    assert d.y_train.tolist() == [0, 0, 1, 1, 2, 2] and d.y_test.tolist() == [0, 1, 2]
    assert d.x_train.shape == (6, 256, 3) and d.x_test.shape == (3, 256, 3) and d.x_train.dtype == torch.float32
    norms_ok(d.x_train), norms_ok(d.x_test)
    # on the cube's surface: every point lies on one of the 6 face planes (the cloud's per-axis extremes)
    for cube in (d.x_train[0], d.x_train[1], d.x_test[0]):
        lo, hi = cube.amin(dim=0), cube.amax(dim=0)
        on_face = ((cube - lo).abs() < 1e-5) | ((cube - hi).abs() < 1e-5)  # [P,3]
        assert on_face.any(dim=1).all() and on_face.sum(dim=0).min() > 0
    assert not torch.equal(d.x_train[0], d.x_train[1])  # each file has its own sample...
    # the flat triangle in the mesh's z = 0 plane: all points in one plane, y = 0 after the z-up -> y-up turn
    assert d.x_train[2][:, 1].abs().max() < 1e-6
    cache = folder / ".fipbench_points_256.safetensors"
    assert cache.is_file() and not list(folder.glob("*.tmp"))
    # reused: no mesh is read or sampled again, and the clouds are identical
    monkeypatch.setattr(real_data, "sample_mesh", lambda *a: pytest.fail("cache not used"))
    again = load_modelnet40(tmp_path, num_points=256)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)
    monkeypatch.undo()
    # invalidated by a new file; ...and the same sample is drawn from the same file
    (folder / "chair" / "test" / "chair_0009.off").write_text(CUBE_QUADS)
    grown = load_modelnet40(tmp_path, num_points=256)
    assert grown.y_test.tolist() == [0, 1, 1, 2]
    assert torch.equal(grown.x_test[[0, 1, 3]], d.x_test) and torch.equal(grown.x_train, d.x_train)
    again = load_modelnet40(tmp_path, num_points=256)
    assert torch.equal(again.x_test, grown.x_test)


def test_off_deterministic_without_cache(tmp_path, monkeypatch):
    folder = write_off_release(tmp_path)

    def read_only(*a, **kw):
        raise PermissionError("read-only")

    monkeypatch.setattr(real_data.tempfile, "mkstemp", read_only)
    a, b = load_modelnet40(tmp_path, num_points=64), load_modelnet40(tmp_path, num_points=64)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert not list(folder.glob(".fipbench_points_*"))


def test_off_errors(tmp_path):
    one_line_error(load_modelnet40, match="no data root given.*ModelNet40")
    one_line_error(load_modelnet40, tmp_path / "nope", match="is not a directory")
    one_line_error(load_modelnet40, tmp_path, match="neither .*modelnet40_ply_hdf5_2048 nor .*ModelNet40 found.*"
                                                    "FIPBENCH_DATA")
    folder = write_off_release(tmp_path)
    bad = folder / "cone" / "train" / "cone_0002.off"
    for text, why in (("OFX\n3 1 0\n", r"first line is not 'OFF'"),
                      ("OFF\n3 x 0\n", r"want the counts 'nV nF nE'"),
                      (TRI.replace("3 1 0", "4 1 0"), r"header promises 4 vertices \+ 1 faces but 4 lines"),
                      (TRI.replace("3 0 1 2", "3 0 1 3"), r"a face index is outside 0..2"),
                      (TRI.replace("3 0 1 2", "3 0 1"), r"face line '3 0 1' does not list"),
                      (TRI.replace("1.5", "one"), r"could not convert"),
                      (TRI.replace("2.5e0", "0"), r"mesh has zero surface area")):
        bad.write_text(text)
        one_line_error(load_modelnet40, tmp_path, num_points=16, match=rf"cone_0002.off is malformed \({why}")
    bad.unlink()
    (folder / "box" / "test").rename(folder / "box" / "val")
    one_line_error(load_modelnet40, tmp_path, match=r"ModelNet40/box/test not found")


def test_off_parsers_agree(tmp_path):
    """A quad cube (line parser, fan triangulation) and the same cube written as its fan triangles (the fast
    all-triangle path) read to the same mesh."""
    tris = "".join(f"3 {q[0]} {q[j]} {q[j + 1]}\n" for q in ((0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6),
                                                            (0, 2, 6, 4), (1, 3, 7, 5)) for j in (1, 2))
    (quads := tmp_path / "quads.off").write_text(CUBE_QUADS)
    (fans := tmp_path / "fans.off").write_text(CUBE_QUADS.split("4 0 1")[0].replace("8 6 12", "8 12 18") + tris)
    assert real_data._off_triangles(quads.read_text()) is None and real_data._off_triangles(fans.read_text())
    (v1, f1), (v2, f2) = real_data.read_off(quads, tmp_path), real_data.read_off(fans, tmp_path)
    assert torch.equal(v1, v2) and torch.equal(f1, f2) and f1.shape == (12, 3) and v1.dtype == torch.float64


def test_mesh_sampling_is_uniform_by_area():
    """Two disjoint triangles with areas 1 : 3 get ~1/4 and ~3/4 of the points, and inside a triangle the
    points are uniform (a uniform point's distance to the base edge has mean 1/3 of the height)."""
    from tasks.point_cloud.data import sample_mesh

    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 2, 0],  # area 1
                      [5, 0, 0], [8, 0, 0], [5, 2, 0]], dtype=torch.float32)  # area 3
    pts = sample_mesh(v, torch.tensor([[0, 1, 2], [3, 4, 5]]), 20_000, generator(0, "area"))  # [n,3]
    big = pts[:, 0] >= 5 - 1e-6
    assert abs(float(big.float().mean()) - 0.75) < 0.015
    small = pts[~big]
    assert (small[:, 0] >= -1e-6).all() and (small[:, 1] >= -1e-6).all()
    assert (small[:, 0] + small[:, 1] / 2 <= 1 + 1e-5).all()  # inside the first triangle
    # the height above the base edge y = 0 has mean h/3 = 2/3 for a uniform point (not h/2 or less)
    assert abs(float(small[:, 1].mean()) - 2 / 3) < 0.03 and abs(float(pts[big][:, 1].mean()) - 2 / 3) < 0.02
