"""Point-cloud classifiers in plain PyTorch, on clouds [B,P,3] (fipbench's sample layout).

torch-points3d (the design card's library) is unmaintained and pins torch 1.x / torch-geometric wheels that do
not exist for torch 2.14, so the three standard networks are written here with torch ops only, including the
batched farthest-point sampling, ball query and kNN they need (`ops` below).  Builders are registered in MODELS,
marked `.task = "point_cloud"`, and take (num_classes, num_points).  No normalisation layer: clouds are already
centred and scaled into the unit ball by the datasets.

- `pointnet`: Qi et al., CVPR 2017, as in pointnet.pytorch's classifier (input T-Net, shared MLP 64-128-1024,
  max pool, 512-256-K with dropout 0.3); no feature T-Net, pointnet.pytorch's default (so no orthogonality
  regulariser in the loss).
- `pointnet2_ssg`: Qi et al., NeurIPS 2017, single-scale grouping as in the classification model of
  Pointnet_Pointnet2_pytorch: SA(512, r 0.2, 32, [64,64,128]), SA(128, r 0.4, 64, [128,128,256]), global SA
  [256,512,1024], 512-256-K with dropout 0.4.  Deviation: farthest-point sampling starts at point 0, not at a
  random point, so that a model is a deterministic function of its input.
- `dgcnn`: Wang et al., TOG 2019, as in the authors' PyTorch code: k = 20, EdgeConv 64-64-128-256, 1024-d
  embedding, max + average pooling, 512-256-K with dropout 0.5, LeakyReLU 0.2.
- `small_pointnet`: PointNet without T-Net, shared MLP 32-64-128, 64-K: fast enough for the CPU quick preset and
  the tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from benchmark.registries import MODELS


# -- ops: batched sampling and grouping -----------------------------------------------------------------------
def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B,N,C] indexed by idx [B,...] -> [B,...,C]."""
    b = x.shape[0]
    flat = idx.reshape(b, -1)  # [B,M]
    out = x.gather(1, flat.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B,M,C]
    return out.reshape(*idx.shape, x.shape[-1])


def farthest_point_sample(xyz: torch.Tensor, m: int) -> torch.Tensor:
    """Indices [B,m] of m points of xyz [B,N,3], each the farthest from those already chosen (from point 0)."""
    b, n, _ = xyz.shape
    idx = torch.zeros(b, m, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, n), float("inf"), device=xyz.device)
    far = torch.zeros(b, dtype=torch.long, device=xyz.device)
    rows = torch.arange(b, device=xyz.device)
    for i in range(m):
        idx[:, i] = far
        d = (xyz - xyz[rows, far].unsqueeze(1)).pow(2).sum(-1)  # [B,N] squared distance to the newest point
        dist = torch.minimum(dist, d)
        far = dist.argmax(-1)
    return idx


def ball_query(xyz: torch.Tensor, centres: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    """Indices [B,S,k] of up to k points of xyz [B,N,3] within `radius` of each centre [B,S,3], lowest index
    first; missing slots repeat the first neighbour (PointNet++'s rule).  Every centre is a point of xyz, so
    each ball holds at least one point."""
    n = xyz.shape[1]
    d2 = torch.cdist(centres, xyz).pow(2)  # [B,S,N]
    idx = torch.arange(n, device=xyz.device).expand_as(d2).clone()
    idx[d2 > radius ** 2] = n
    idx = idx.sort(dim=-1).values[..., :k]  # [B,S,k]
    return torch.where(idx == n, idx[..., :1], idx)


def knn(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B,N,k] of the k nearest points (itself included) of every point of x [B,N,C]."""
    return torch.cdist(x, x).topk(k, dim=-1, largest=False).indices


# -- building blocks --------------------------------------------------------------------------------------------
def _mlp1d(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for cin, cout in zip(widths, widths[1:]):
        layers += [nn.Conv1d(cin, cout, 1, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _head(cin: int, widths: list[int], num_classes: int, dropout: float, act: nn.Module) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(cin, w, bias=False), nn.BatchNorm1d(w), act, nn.Dropout(dropout)]
        cin = w
    return nn.Sequential(*layers, nn.Linear(cin, num_classes))


class TNet(nn.Module):
    """PointNet's input transform: a 3x3 matrix regressed from the cloud, initialised to the identity."""

    def __init__(self):
        super().__init__()
        self.features = _mlp1d([3, 64, 128, 1024])
        self.fc = nn.Sequential(nn.Linear(1024, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                nn.Linear(512, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(inplace=True),
                                nn.Linear(256, 9))
        nn.init.zeros_(self.fc[-1].weight)
        nn.init.zeros_(self.fc[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B,3,P]
        m = self.fc(self.features(x).amax(dim=2)).view(-1, 3, 3)  # [B,3,3]
        return m + torch.eye(3, device=x.device)


class PointNet(nn.Module):
    def __init__(self, num_classes: int, widths: list[int], head: list[int], dropout: float, tnet: bool):
        super().__init__()
        self.tnet = TNet() if tnet else None
        self.features = _mlp1d([3, *widths])
        self.head = _head(widths[-1], head, num_classes, dropout, nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B,P,3]
        if self.tnet is not None:
            x = torch.bmm(x, self.tnet(x.transpose(1, 2)))  # [B,P,3]
        return self.head(self.features(x.transpose(1, 2)).amax(dim=2))  # max over points -> [B,K]


class SetAbstraction(nn.Module):
    """PointNet++ SA layer: sample `npoint` centres (FPS), group `nsample` neighbours within `radius`, run a
    shared MLP on [relative xyz, features] and max-pool each group; npoint None groups the whole cloud."""

    def __init__(self, npoint: int | None, radius: float, nsample: int, cin: int, widths: list[int]):
        super().__init__()
        self.npoint, self.radius, self.nsample = npoint, radius, nsample
        layers: list[nn.Module] = []
        for a, b in zip([cin + 3, *widths], widths):
            layers += [nn.Conv2d(a, b, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # xyz [B,N,3], feats [B,N,C] or None
        if self.npoint is None:
            centres = xyz.new_zeros(xyz.shape[0], 1, 3)  # [B,1,3]
            grouped = xyz.unsqueeze(1)  # [B,1,N,3]
            gf = feats.unsqueeze(1) if feats is not None else None
        else:
            centres = gather(xyz, farthest_point_sample(xyz, min(self.npoint, xyz.shape[1])))  # [B,S,3]
            idx = ball_query(xyz, centres, self.radius, min(self.nsample, xyz.shape[1]))  # [B,S,k]
            grouped = gather(xyz, idx) - centres.unsqueeze(2)  # [B,S,k,3] relative coordinates
            gf = gather(feats, idx) if feats is not None else None
        h = grouped if gf is None else torch.cat([grouped, gf], dim=-1)  # [B,S,k,3+C]
        h = self.mlp(h.permute(0, 3, 1, 2)).amax(dim=3)  # [B,C',S]
        return centres, h.transpose(1, 2)  # [B,S,3], [B,S,C']


class PointNet2SSG(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.sa1 = SetAbstraction(512, 0.2, 32, 0, [64, 64, 128])
        self.sa2 = SetAbstraction(128, 0.4, 64, 128, [128, 128, 256])
        self.sa3 = SetAbstraction(None, 0.0, 0, 256, [256, 512, 1024])
        self.head = _head(1024, [512, 256], num_classes, 0.4, nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B,P,3]
        xyz, f = self.sa1(x, None)
        xyz, f = self.sa2(xyz, f)
        _, f = self.sa3(xyz, f)  # [B,1,1024]
        return self.head(f.squeeze(1))


class EdgeConv(nn.Module):
    """DGCNN's edge convolution: for each point i and its k nearest neighbours j (in the current feature space),
    an MLP of [x_j - x_i, x_i], max over j."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.k = k
        self.mlp = nn.Sequential(nn.Conv2d(2 * cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B,N,C]
        nb = gather(x, knn(x, min(self.k, x.shape[1])))  # [B,N,k,C]
        centre = x.unsqueeze(2).expand_as(nb)
        e = torch.cat([nb - centre, centre], dim=-1).permute(0, 3, 1, 2)  # [B,2C,N,k]
        return self.mlp(e).amax(dim=3).transpose(1, 2)  # [B,N,C']


class DGCNN(nn.Module):
    def __init__(self, num_classes: int, k: int = 20, emb: int = 1024):
        super().__init__()
        self.convs = nn.ModuleList([EdgeConv(3, 64, k), EdgeConv(64, 64, k), EdgeConv(64, 128, k),
                                    EdgeConv(128, 256, k)])
        self.embed = nn.Sequential(nn.Conv1d(512, emb, 1, bias=False), nn.BatchNorm1d(emb), nn.LeakyReLU(0.2))
        self.head = _head(2 * emb, [512, 256], num_classes, 0.5, nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B,P,3]
        outs = []
        for conv in self.convs:
            x = conv(x)
            outs.append(x)
        h = self.embed(torch.cat(outs, dim=-1).transpose(1, 2))  # [B,emb,P]
        return self.head(torch.cat([h.amax(dim=2), h.mean(dim=2)], dim=1))  # [B,K]


def _register(name: str) -> Callable:
    def wrap(fn: Callable) -> Callable:
        fn.task = "point_cloud"  # type: ignore[attr-defined]
        return MODELS.register(name)(fn)
    return wrap


@_register("small_pointnet")
def small_pointnet(num_classes: int, num_points: int = 1024) -> nn.Module:
    return PointNet(num_classes, [32, 64, 128], [64], dropout=0.0, tnet=False)


@_register("pointnet")
def pointnet(num_classes: int, num_points: int = 1024) -> nn.Module:
    return PointNet(num_classes, [64, 128, 1024], [512, 256], dropout=0.3, tnet=True)


@_register("pointnet2_ssg")
def pointnet2_ssg(num_classes: int, num_points: int = 1024) -> nn.Module:
    return PointNet2SSG(num_classes)


@_register("dgcnn")
def dgcnn(num_classes: int, num_points: int = 1024) -> nn.Module:
    return DGCNN(num_classes)
