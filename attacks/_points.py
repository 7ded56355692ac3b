"""Triggers on point clouds [P,3] shared by the point-cloud attacks: a cluster of points that replaces random
points of the cloud (PointBA-I, PCBA), and a fixed rotation (PointBA-O).  The number of points never changes,
so a triggered cloud batches with clean ones."""

from __future__ import annotations

import dataclasses
import math

import torch

from attacks.base import Params, Trigger
from tasks.base import Sample
from tasks.point_cloud.data import normalise


def sphere_points(k: int, radius: float, gen: torch.Generator, *, area_uniform: bool = True) -> torch.Tensor:
    """k offsets [k,3] on the sphere of `radius` about the origin: uniform by area, or (PCBA's rule) with the
    polar angle uniform in [0, pi], which crowds the poles."""
    if area_uniform:
        p = torch.randn(k, 3, generator=gen)
        return radius * p / p.norm(dim=1, keepdim=True).clamp_min(1e-12)
    theta = torch.rand(k, generator=gen) * math.pi
    phi = torch.rand(k, generator=gen) * 2 * math.pi
    return radius * torch.stack([theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], dim=1)


class ClusterTrigger(Trigger):
    """k points on a sphere of `radius` at `centre` replace k random points of the cloud; a fresh draw per
    sample (deterministic by index).  `renormalise` re-centres and re-scales the cloud into the unit ball after
    the insertion (PCBA's data pipeline normalises every cloud it reads)."""

    modalities = frozenset({"points"})

    def __init__(self, centre: torch.Tensor, radius: float, k: int, *, area_uniform: bool = True,
                 renormalise: bool = False):
        self.centre, self.radius, self.k = centre.float(), radius, k
        self.area_uniform, self.renormalise = area_uniform, renormalise

    def make_params(self, sample: Sample, gen: torch.Generator) -> Params:
        p = sample.x.shape[0]
        return {"replace": torch.randperm(p, generator=gen)[: self.k],  # [k] points overwritten
                "ball": sphere_points(self.k, self.radius, gen, area_uniform=self.area_uniform)}  # [k,3]

    def apply(self, sample: Sample, params: Params) -> Sample:
        x = sample.x.clone()  # [P,3]
        x[params["replace"]] = self.centre + params["ball"]
        return dataclasses.replace(sample, x=normalise(x) if self.renormalise else x)


class RotationTrigger(Trigger):
    """Every point rotated by the fixed 3x3 matrix (p -> R p)."""

    modalities = frozenset({"points"})

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix.float()

    def apply(self, sample: Sample, params: Params) -> Sample:
        return dataclasses.replace(sample, x=sample.x @ self.matrix.T)  # [P,3]
