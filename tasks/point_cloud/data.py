"""Point-cloud datasets: `PointData`, area-weighted surface sampling, and the embedded generated `solids`.

A cloud is a float tensor [P,3] (x, y, z; y is up, the frame of ModelNet40's HDF5 release), centred on its mean and scaled into the unit ball, as
PointNet++ and DGCNN normalise ModelNet40.  Clouds reach a split as a float tensor [N,P,3] (`as_samples` makes
the Samples); the points of a cloud are an i.i.d. surface sample, so its first P' points are a uniform
P'-subsample (how the 2048-point HDF5 release is cut to 1,024 points).

`solids` (the embedded default): eight geometric solids, sampled uniformly by area over their surface,

    0 sphere  1 cube  2 cylinder  3 cone  4 torus  5 pyramid  6 octahedron  7 hemisphere

each with a random anisotropic scale (0.75-1.25 per axis), a random rotation about the up axis (any angle),
a small random tilt (at most 2 degrees about a horizontal axis: aligned meshes are never exactly upright) and
Gaussian point noise (sigma 0.01), then normalised.  2,000 training and 400 test clouds of 1,024 points
(balanced), deterministic by seed.  The objects stand upright, as ModelNet40's aligned meshes do, so an
orientation trigger (PointBA-O) is visible on every class but the sphere, which is class 0, the default target.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from benchmark.errors import FipbenchError
from benchmark.registries import DATASETS
from benchmark.rng import generator

SOLIDS = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "octahedron", "hemisphere")


@dataclasses.dataclass(frozen=True)
class PointData:
    """A dataset's official train/test split: clouds x [N,P,3] float32 (normalised, see the module docstring)
    and labels y [N] int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    classes: tuple[str, ...] = ()

    @property
    def num_points(self) -> int:
        return int(self.x_train.shape[1])


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Clouds [...,P,3] centred on their mean and scaled so that the farthest point lies on the unit sphere."""
    x = x - x.mean(dim=-2, keepdim=True)
    return x / x.norm(dim=-1).amax(dim=-1).clamp_min(1e-8)[..., None, None]


def sample_mesh(vertices: torch.Tensor, faces: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """n points [n,3] uniform by area on a triangle mesh (vertices [V,3], faces [F,3] vertex ids): a face with
    probability proportional to its area, then a uniform point of it (square-root barycentric rule)."""
    a, b, c = (vertices[faces[:, i]].double() for i in range(3))  # [F,3] each
    area = torch.linalg.cross(b - a, c - a).norm(dim=1) / 2  # [F]
    if not float(area.sum()) > 0:
        raise ValueError("mesh has zero surface area")
    f = torch.multinomial(area.float(), n, replacement=True, generator=g)  # [n]
    r1, r2 = torch.rand(n, 1, generator=g, dtype=torch.float64).sqrt(), torch.rand(n, 1, generator=g,
                                                                                   dtype=torch.float64)
    pts = (1 - r1) * a[f] + r1 * (1 - r2) * b[f] + r1 * r2 * c[f]
    return pts.float()


def _mesh(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "cube":
        v = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float32)
        quads = [(0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5)]
        f = [t for q in quads for t in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))]
    elif kind == "pyramid":  # square base at z = -1, apex above its centre
        v = torch.tensor([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1], [0, 0, 1]], dtype=torch.float32)
        f = [(0, 1, 2), (0, 2, 3), (0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 0, 4)]
    else:  # octahedron
        v = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float32)
        f = [(i, j, k) for i in (0, 1) for j in (2, 3) for k in (4, 5)]
    return v, torch.tensor(f)


def _ring(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.rand(n, generator=g) * 2 * math.pi
    return a.cos(), a.sin()


def sample_solid(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    """n points [n,3] uniform by area on the surface of the canonical solid `kind` (about the origin, z up;
    `render_solid` turns it y-up)."""
    if kind in ("cube", "pyramid", "octahedron"):
        return sample_mesh(*_mesh(kind), n, g)
    if kind in ("sphere", "hemisphere"):
        p = torch.randn(n, 3, generator=g)
        p = p / p.norm(dim=1, keepdim=True)
        if kind == "sphere":
            return p
        # Dome (area 2 pi) and base disc (area pi): a point is on the base with probability 1/3.
        p[:, 2] = p[:, 2].abs()
        base = torch.rand(n, generator=g) < 1 / 3
        r = torch.rand(n, generator=g).sqrt()  # uniform on the unit disc
        cx, cy = _ring(n, g)
        disc = torch.stack([r * cx, r * cy, torch.zeros(n)], dim=1)
        return torch.where(base[:, None], disc, p) - torch.tensor([0.0, 0.0, 0.5])
    if kind == "cylinder":  # radius 0.6, height 2: side 2.4 pi, each cap 0.36 pi
        rad = 0.6
        side, cap = 2 * math.pi * rad * 2, math.pi * rad ** 2
        u = torch.rand(n, generator=g) * (side + 2 * cap)
        cx, cy = _ring(n, g)
        r = torch.where(u < side, torch.full((n,), rad), rad * torch.rand(n, generator=g).sqrt())
        z = torch.where(u < side, torch.rand(n, generator=g) * 2 - 1, torch.where(u < side + cap, -1.0, 1.0))
        return torch.stack([r * cx, r * cy, z], dim=1)
    if kind == "cone":  # base radius 0.8 at z = -1, apex at z = 1
        rad, h = 0.8, 2.0
        lateral, base = math.pi * rad * math.hypot(rad, h), math.pi * rad ** 2
        on_base = torch.rand(n, generator=g) < base / (lateral + base)
        t = torch.rand(n, generator=g).sqrt()  # distance from the apex, as a fraction: area grows linearly
        cx, cy = _ring(n, g)
        r = torch.where(on_base, rad * torch.rand(n, generator=g).sqrt(), rad * t)
        z = torch.where(on_base, -1.0, 1 - h * t)
        return torch.stack([r * cx, r * cy, z], dim=1)
    if kind == "torus":  # tube radius 0.3 about a circle of radius 0.8; area density ~ (R + r cos phi)
        big, small = 0.8, 0.3
        phi = torch.empty(0)
        while len(phi) < n:  # rejection sampling of the tube angle
            cand = torch.rand(2 * n, generator=g) * 2 * math.pi
            keep = torch.rand(2 * n, generator=g) * (big + small) < big + small * cand.cos()
            phi = torch.cat([phi, cand[keep]])
        phi = phi[:n]
        cx, cy = _ring(n, g)
        ring = big + small * phi.cos()
        return torch.stack([ring * cx, ring * cy, small * phi.sin()], dim=1)
    raise ValueError(f"unknown solid {kind!r}")


def rotation(axis: str, angle: float | torch.Tensor) -> torch.Tensor:
    """The 3x3 matrix of a right-handed rotation by `angle` (radians) about 'x', 'y' or 'z'; points rotate as
    p @ R.T."""
    c, s = torch.as_tensor(angle).cos(), torch.as_tensor(angle).sin()
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    rows = {"x": [[one, zero, zero], [zero, c, -s], [zero, s, c]],
            "y": [[c, zero, s], [zero, one, zero], [-s, zero, c]],
            "z": [[c, -s, zero], [s, c, zero], [zero, zero, one]]}[axis]
    return torch.stack([torch.stack(r) for r in rows]).float()


def z_up_to_y_up(p: torch.Tensor) -> torch.Tensor:
    """Points [...,3] in a z-up frame (meshes, the .off release) turned y-up (the HDF5 release): the proper
    rotation (x, y, z) -> (x, z, -y)."""
    return torch.stack([p[..., 0], p[..., 2], -p[..., 1]], dim=-1)


def render_solid(label: int, n: int, g: torch.Generator) -> torch.Tensor:
    """One normalised cloud [n,3] of solid `label` under a random scale, yaw, small tilt and point noise."""
    p = sample_solid(SOLIDS[label], n, g)
    p = p * (0.75 + 0.5 * torch.rand(3, generator=g))  # anisotropic scale
    tilt_axis = float(torch.rand((), generator=g)) * 2 * math.pi
    tilt = (float(torch.rand((), generator=g)) * 2 - 1) * math.radians(2)
    yaw = float(torch.rand((), generator=g)) * 2 * math.pi
    # Tilt about a random horizontal axis (yaw it to x, tilt about x, yaw back), then the random yaw.
    r = rotation("z", yaw) @ rotation("z", tilt_axis) @ rotation("x", tilt) @ rotation("z", -tilt_axis)
    p = p @ r.T + 0.01 * torch.randn(n, 3, generator=g)
    return normalise(z_up_to_y_up(p))


def generate_solids(n: int, points: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n clouds [n,points,3] and balanced labels [n] (class i % 8, then shuffled)."""
    y = torch.arange(n) % len(SOLIDS)
    y = y[torch.randperm(n, generator=g)]
    return torch.stack([render_solid(int(c), points, g) for c in y]), y


@DATASETS.register("solids")
def load_solids(root: Path | None = None, split_seed: int = 0, *, num_points: int = 1024) -> PointData:
    """The generated solids: 2,000 train / 400 test clouds, the same for every `split_seed` (the objects are a
    property of the dataset; `split_seed` only fixes the defense holdout)."""
    if not 16 <= num_points <= 1024:
        raise FipbenchError(f"solids has 16-1,024 points per cloud, not {num_points}; set task_config.num_points")
    xtr, ytr = generate_solids(2000, 1024, generator(0, "solids", "train"))
    xte, yte = generate_solids(400, 1024, generator(0, "solids", "test"))
    return PointData(x_train=xtr[:, :num_points].contiguous(), y_train=ytr, x_test=xte[:, :num_points].contiguous(),
                     y_test=yte, num_classes=len(SOLIDS), classes=SOLIDS)


load_solids.task = "point_cloud"  # type: ignore[attr-defined]
