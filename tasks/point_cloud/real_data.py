"""ModelNet40, read from local files in either of its two public layouts (the HDF5 one wins when both exist).

Nothing is downloaded.  The loader takes `root` (the CLI's --data-root, else $FIPBENCH_DATA) and raises a
one-line FipbenchError naming the expected files when they are missing or malformed (the image-classification
helpers, hence the same messages).  Train/test are the official splits (9,843 / 2,468 shapes), so `split_seed`
is unused.  Either way a cloud is float32 [num_points,3], centred and scaled into the unit ball (`normalise`).

- HDF5 (modelnet40_ply_hdf5_2048.zip, the PointNet / DGCNN release): <root>/modelnet40_ply_hdf5_2048/
  ply_data_train*.h5 and ply_data_test*.h5 (read in numeric order), each with `data` float32 [n,2048,3] and
  `label` integer [n,1], and shape_names.txt (the class names, label order).  The first `num_points` points of a
  cloud are kept, as PointNet and DGCNN take data[:, :1024] (the 2,048 are an i.i.d. surface sample, so this is a
  uniform subsample).  The release is already normalised; normalising again makes both layouts alike.
- Meshes (ModelNet40.zip from modelnet.cs.princeton.edu): <root>/ModelNet40/<class>/train|test/<class>_XXXX.off;
  class ids are the sorted folder names.  Polygons are fan-triangulated and `num_points` points are sampled
  uniformly by area (`sample_mesh`), deterministically per file (its seed is keyed by the file's relative path),
  and turned from the meshes' z-up frame to the HDF5 release's y-up one ((x, y, z) -> (x, z, -y); the up axis
  matches, the horizontal heading of the two releases is not verified to).
  Sampling 12k meshes takes minutes, so the clouds are cached in <root>/ModelNet40/.fipbench_points_<P>.safetensors
  (skipped when the folder is read-only), keyed by a hash of the file list and sizes: adding, removing or
  replacing a mesh resamples everything.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from benchmark._io import interrupts_deferred
from benchmark.errors import FipbenchError
from benchmark.registries import DATASETS
from benchmark.rng import generator
from tasks.image_classification.real_data import FIX, _malformed, _missing, _root
from tasks.point_cloud.data import PointData, normalise, sample_mesh, z_up_to_y_up

NAME = "modelnet40"
EXPECTED = ("{root}/modelnet40_ply_hdf5_2048/ply_data_train*.h5, ply_data_test*.h5 and shape_names.txt "
            "(modelnet40_ply_hdf5_2048.zip) or {root}/ModelNet40/<class>/train|test/<class>_XXXX.off "
            "(ModelNet40.zip from modelnet.cs.princeton.edu), extracted into {root}")
SPLITS = ("train", "test")
CACHE_VERSION = "off-v2"  # bump when parsing or sampling changes, so old caches are resampled


# -- HDF5 release --------------------------------------------------------------------------------------------
def _h5_split(folder: Path, split: str, classes: list[str], num_points: int, root: Path):
    bad = lambda f, why: _malformed(NAME, f, why, EXPECTED, root)  # noqa: E731
    # numeric order (train2 before train10); a name without digits sorts first
    key = lambda p: (int(m.group(1)) if (m := re.search(r"(\d+)\.h5$", p.name)) else -1, p.name)  # noqa: E731
    files = sorted(folder.glob(f"ply_data_{split}*.h5"), key=key)
    if not files:
        raise _missing(NAME, folder / f"ply_data_{split}0.h5", EXPECTED, root)
    xs, ys = [], []
    for f in files:
        try:
            with h5py.File(f, "r") as h:
                if "data" not in h or "label" not in h:
                    raise bad(f, f"no 'data' and 'label' datasets, has {sorted(h.keys())}")
                d, y = h["data"], np.asarray(h["label"])  # [n,P,3] (read below, only P' points), [n,1]
                if len(d.shape) != 3 or d.shape[2] != 3 or y.size != d.shape[0] or y.dtype.kind not in "iu":
                    raise bad(f, f"want data [n,P,3] and integer label [n,1], got {d.shape} and {y.dtype} {y.shape}")
                if d.shape[1] < num_points:
                    raise FipbenchError(f"dataset {NAME}: {f} has {d.shape[1]} points per cloud, fewer than "
                                        f"num_points={num_points}; set task_config.num_points")
                x = np.asarray(d[:, :num_points], dtype=np.float32)  # [n,P',3]
        except (OSError, ValueError, TypeError) as err:
            raise bad(f, f"{type(err).__name__}: {err}") from None
        y = y.reshape(-1).astype(np.int64)
        if len(out := y[(y < 0) | (y >= len(classes))]):
            raise bad(f, f"label {out[0]} is outside 0..{len(classes) - 1} (shape_names.txt has {len(classes)} names)")
        xs.append(torch.from_numpy(x))
        ys.append(torch.from_numpy(y))
    return normalise(torch.cat(xs)), torch.cat(ys)  # [N,P,3], [N]


def _load_h5(folder: Path, num_points: int, root: Path) -> PointData:
    names = folder / "shape_names.txt"
    if not names.is_file():
        raise _missing(NAME, names, EXPECTED, root)
    classes = [line.strip() for line in names.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not classes:
        raise _malformed(NAME, names, "no class names", EXPECTED, root)
    (xtr, ytr), (xte, yte) = (_h5_split(folder, s, classes, num_points, root) for s in SPLITS)
    return PointData(xtr, ytr, xte, yte, num_classes=len(classes), classes=tuple(classes))


# -- .off mesh release ---------------------------------------------------------------------------------------
_OFF_HEAD = re.compile(r"\s*OFF\s*(\d+)[ \t]+(\d+)[ \t]+\d+[ \t]*\r?\n")  # counts glued or on line 2


def _off_triangles(text: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The common file (all faces triangles, nothing extra) parsed in C, ~10x faster than line by line: vertices
    [V,3] and faces [F,3]; None sends anything else (polygons, colours, errors) to the line parser."""
    if not (m := _OFF_HEAD.match(text)):
        return None
    nv, nf = int(m[1]), int(m[2])
    try:  # a token that is not a number: ValueError (numpy 2), a warning and a short array (numpy 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            nums = np.fromstring(text[m.end():], dtype=np.float64, sep=" ")  # [3V + 4F]
    except ValueError:
        return None
    if nv < 3 or nf < 1 or nums.size != 3 * nv + 4 * nf:
        return None
    f = nums[3 * nv:].reshape(nf, 4)  # [F,4]: "3 i j k"
    if (f[:, 0] != 3).any() or (f[:, 1:] % 1 != 0).any():
        return None
    return nums[:3 * nv].reshape(nv, 3), f[:, 1:].astype(np.int64)


def read_off(path: Path, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A mesh from an OFF file: vertices [V,3] float64 and fan-triangulated faces [F',3] int64."""
    bad = lambda why: _malformed(NAME, path, why, EXPECTED, root)  # noqa: E731
    text = path.read_text(encoding="latin-1")
    if fast := _off_triangles(text):
        return _checked(*fast, bad)
    lines = [t for line in text.splitlines() if (t := line.split())]
    if not lines or not lines[0][0].startswith("OFF"):
        raise bad("first line is not 'OFF'")
    # Some ModelNet files glue the counts to the keyword ("OFF490 518 0"); otherwise they are the next line.
    glued = lines[0][0][3:]
    head, body = ([glued, *lines[0][1:]], lines[1:]) if glued else (lines[1] if len(lines) > 1 else [], lines[2:])
    if len(head) != 3 or not all(c.isdigit() for c in head):
        raise bad(f"want the counts 'nV nF nE' after 'OFF', got {' '.join(head)!r}")
    nv, nf = int(head[0]), int(head[1])
    if nv < 3 or nf < 1 or len(body) != nv + nf:
        raise bad(f"header promises {nv} vertices + {nf} faces but {len(body)} lines follow")
    try:
        v = np.array([t[:3] for t in body[:nv]], dtype=np.float64)  # [V,3]; ragged/short rows raise
        tris = []
        for t in body[nv:]:  # "k i0 .. i(k-1)", a polygon becomes the fan (i0, ij, ij+1)
            k, ids = int(t[0]), [int(i) for i in t[1:1 + int(t[0])]]
            if k < 3 or len(ids) != k:
                raise ValueError(f"face line {' '.join(t)!r} does not list k >= 3 vertex ids")
            tris += [(ids[0], ids[j], ids[j + 1]) for j in range(1, k - 1)]
    except ValueError as err:
        raise bad(err) from None
    if v.shape != (nv, 3):
        raise bad("a vertex line has fewer than 3 coordinates")
    return _checked(v, np.array(tris, dtype=np.int64), bad)


def _checked(v: np.ndarray, f: np.ndarray, bad) -> tuple[torch.Tensor, torch.Tensor]:
    if f.min() < 0 or f.max() >= len(v):
        raise bad(f"a face index is outside 0..{len(v) - 1}")
    return torch.from_numpy(v), torch.from_numpy(f)


def _cache_load(path: Path, digest: str, sizes: tuple[int, int]) -> dict[str, torch.Tensor] | None:
    try:
        with interrupts_deferred(), safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("files") != digest:
                return None
            t = {k: f.get_tensor(k) for k in ("x_train", "y_train", "x_test", "y_test")}
    except Exception:  # noqa: BLE001 - a missing, truncated or foreign cache only means "resample"
        return None
    return t if (len(t["y_train"]), len(t["y_test"])) == sizes else None


def _cache_save(path: Path, tensors: dict[str, torch.Tensor], digest: str) -> None:
    try:  # atomic: a crash or a concurrent reader never sees half a file
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError:
        return  # read-only data folder: no cache, the load still works
    os.close(fd)
    try:
        with interrupts_deferred():
            save_file(tensors, tmp, metadata={"files": digest})
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def _load_off(folder: Path, num_points: int, root: Path) -> PointData:
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith((".", "_")))
    if not classes:
        raise _missing(NAME, folder / "<class>", EXPECTED, root)
    files: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}  # split -> (relative path, class id)
    for cid, cls in enumerate(classes):
        for s in SPLITS:
            if not (folder / cls / s).is_dir():
                raise _missing(NAME, folder / cls / s, EXPECTED, root)
            files[s] += [(f"{cls}/{s}/{n}", cid) for n in sorted(os.listdir(folder / cls / s)) if n.endswith(".off")]
    for s in SPLITS:
        if not files[s]:
            raise _missing(NAME, folder / f"<class>/{s}/*.off", EXPECTED, root)
    listing = "".join(f"{r}\t{os.path.getsize(folder / r)}\n" for s in SPLITS for r, _ in files[s])
    digest = hashlib.sha256(f"{CACHE_VERSION}\n{num_points}\n{listing}".encode()).hexdigest()
    cache = folder / f".fipbench_points_{num_points}.safetensors"
    sizes = (len(files["train"]), len(files["test"]))
    t = _cache_load(cache, digest, sizes)
    if t is None:
        t = {}
        for s in SPLITS:
            clouds = []
            for rel, _ in files[s]:
                v, f = read_off(folder / rel, root)
                try:
                    clouds.append(sample_mesh(v, f, num_points, generator(0, NAME, rel)))  # [P,3]
                except ValueError as err:  # zero surface area
                    raise _malformed(NAME, folder / rel, err, EXPECTED, root) from None
            # The meshes are z-up; the HDF5 release (and every point-cloud backdoor paper's data) is y-up.
            t[f"x_{s}"] = normalise(z_up_to_y_up(torch.stack(clouds))).contiguous()  # [N,P,3]
            t[f"y_{s}"] = torch.tensor([c for _, c in files[s]], dtype=torch.int64)  # [N]
        _cache_save(cache, t, digest)
    return PointData(t["x_train"], t["y_train"], t["x_test"], t["y_test"], num_classes=len(classes),
                     classes=tuple(classes))


@DATASETS.register("modelnet40")
def load_modelnet40(root: Path | None = None, split_seed: int = 0, *, num_points: int = 1024) -> PointData:
    """ModelNet40's official split (9,843 train / 2,468 test shapes, 40 classes) as `num_points`-point clouds,
    from the HDF5 release if <root>/modelnet40_ply_hdf5_2048 exists, else from the .off meshes.  `split_seed` is
    unused (the split is official; it still fixes the defense holdout carved out of train)."""
    if not isinstance(num_points, int) or isinstance(num_points, bool) or num_points < 1:
        raise FipbenchError(f"dataset {NAME}: num_points must be a positive integer, got {num_points!r}; "
                            f"set task_config.num_points")
    root = _root(root, NAME, EXPECTED)
    if (root / "modelnet40_ply_hdf5_2048").is_dir():
        return _load_h5(root / "modelnet40_ply_hdf5_2048", num_points, root)
    if (root / "ModelNet40").is_dir():
        return _load_off(root / "ModelNet40", num_points, root)
    raise FipbenchError(f"dataset {NAME}: neither {root / 'modelnet40_ply_hdf5_2048'} nor {root / 'ModelNet40'} "
                        f"found; expected {EXPECTED.format(root=root)}; {FIX}")


load_modelnet40.task = "point_cloud"  # type: ignore[attr-defined]
