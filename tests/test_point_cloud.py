"""The point-cloud task: generated solids, the batched sampling / grouping ops, the four networks, the
point-cloud augmentation, the PointBA-I / PointBA-O / PCBA triggers, and every defense that declares
point-cloud support running on a backdoored PointNet."""

from __future__ import annotations

import math

import pytest
import torch

from attacks.base import Subset
from benchmark.errors import FipbenchError
from benchmark.registries import ATTACKS, DEFENSES
from benchmark.rng import generator
from _helpers import assert_defense_runs, briefly_backdoored
from tasks.base import FitConfig, labels_of
from tasks.point_cloud.data import SOLIDS, generate_solids, normalise, rotation, sample_solid
from tasks.point_cloud.models import ball_query, farthest_point_sample, gather, knn


def test_solids_are_deterministic_balanced_normalised_clouds(pc_task):
    x1, y1 = generate_solids(16, 128, generator(3, "s"))
    x2, y2 = generate_solids(16, 128, generator(3, "s"))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (16, 128, 3) and x1.dtype == torch.float32
    assert torch.bincount(y1, minlength=8).tolist() == [2] * 8
    assert torch.allclose(x1.norm(dim=-1).amax(dim=1), torch.ones(16), atol=1e-5)  # unit ball, touching it
    assert x1.mean(dim=1).abs().max() < 1e-5  # centred
    d = pc_task.data
    assert d.num_classes == len(SOLIDS) == 8 and d.num_points == 1024 and pc_task.input_shape == (1024, 3)
    assert torch.bincount(d.y_train).tolist() == [250] * 8
    s = pc_task.splits()
    assert len(s.train) + len(s.holdout) == 2000 and len(s.test) == 400
    assert labels_of(s.holdout).count(0) == round(0.05 * 250)  # stratified holdout


@pytest.mark.parametrize("kind", SOLIDS)
def test_solids_are_sampled_on_their_surface(kind):
    p = sample_solid(kind, 2000, generator(0, kind))  # canonical, z up, before scale / rotation / noise
    assert p.shape == (2000, 3) and torch.isfinite(p).all()
    r = p.norm(dim=1)
    if kind == "sphere":
        assert torch.allclose(r, torch.ones(2000), atol=1e-5)
    if kind == "cube":
        assert torch.allclose(p.abs().amax(dim=1), torch.ones(2000), atol=1e-5)
    if kind == "torus":  # distance to the tube's centre circle is the tube radius
        ring = (p[:, :2].norm(dim=1) - 0.8)
        assert torch.allclose(torch.sqrt(ring ** 2 + p[:, 2] ** 2), torch.full((2000,), 0.3), atol=1e-5)
    if kind == "cylinder":  # about a third of the points on the caps (0.72 pi of 3.12 pi)
        caps = (p[:, 2].abs() > 1 - 1e-6).float().mean()
        assert 0.18 < float(caps) < 0.28


def test_solids_stand_upright_in_the_y_up_frame():
    """A cylinder's axis is the frame's y axis (up to the 2-degree tilt): its y extent is the largest."""
    x, y = generate_solids(64, 512, generator(0, "up"))
    cyl = x[y == SOLIDS.index("cylinder")]
    extent = cyl.amax(dim=1) - cyl.amin(dim=1)  # [n,3]
    assert (extent[:, 1] > extent[:, 0]).all() and (extent[:, 1] > extent[:, 2]).all()


def test_sampling_and_grouping_ops():
    g = generator(0, "ops")
    xyz = torch.rand(2, 50, 3, generator=g)
    idx = farthest_point_sample(xyz, 10)  # [2,10]
    assert idx.shape == (2, 10) and (idx[:, 0] == 0).all()
    assert all(len(set(row.tolist())) == 10 for row in idx)  # distinct points
    # each new point is the farthest from the chosen ones
    chosen = gather(xyz, idx[:, :5])  # [2,5,3]
    d = torch.cdist(xyz, chosen).amin(dim=2)  # [2,50]
    assert torch.equal(d.argmax(dim=1), idx[:, 5])
    centres = gather(xyz, idx)
    nb = ball_query(xyz, centres, 0.3, 8)  # [2,10,8]
    assert nb.shape == (2, 10, 8)
    dist = (gather(xyz, nb) - centres.unsqueeze(2)).norm(dim=-1)
    assert (dist <= 0.3 + 1e-6).all()
    k = knn(xyz, 4)  # [2,50,4]: itself first
    assert k.shape == (2, 50, 4) and torch.equal(k[..., 0], torch.arange(50).expand(2, 50))


@pytest.mark.parametrize("arch", ["small_pointnet", "pointnet", "pointnet2_ssg", "dgcnn"])
def test_point_models_map_clouds_to_class_logits(pc_task, arch):
    model = pc_task.build_model(arch, generator(0, "init", arch)).eval()
    x = torch.stack([pc_task.splits().test[i].x[:128] for i in range(2)])  # [2,128,3]: any cloud size works
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 8) and torch.isfinite(out).all()
    with torch.no_grad():  # PointNet-family outputs ignore the order of the points
        shuffled = model(x[:, torch.randperm(128, generator=generator(1, "perm"))])
    if arch in ("small_pointnet", "pointnet", "dgcnn"):
        assert torch.allclose(out, shuffled, atol=1e-4)
    again = pc_task.build_model(arch, generator(0, "init", arch))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_augmentation_scales_and_shifts_each_cloud_without_rotating(pc_task):
    x = torch.stack([pc_task.splits().train[i].x for i in range(4)])  # [4,P,3]
    batch = {"x": x.clone(), "y": torch.zeros(4, dtype=torch.int64), "index": torch.arange(4)}
    out = pc_task.augment(batch, generator(0, "aug"))["x"]
    # an affine map per axis: out = x * s + t, with s in [2/3, 3/2] and |t| <= 0.2
    s = (out[:, 1] - out[:, 0]) / (x[:, 1] - x[:, 0])  # [4,3]
    t = out[:, 0] - x[:, 0] * s
    assert torch.allclose(out, x * s[:, None] + t[:, None], atol=1e-5)
    assert (s >= 2 / 3 - 1e-4).all() and (s <= 1.5 + 1e-4).all() and (t.abs() <= 0.2 + 1e-5).all()


def test_wrong_task_components_are_one_line_errors(pc_task):
    with pytest.raises(FipbenchError, match="belongs to task 'image_classification'"):
        pc_task.build_model("small_cnn")
    with pytest.raises(FipbenchError, match="does not support task 'point_cloud'"):
        ATTACKS.get("badnets")().poison(pc_task, pc_task.splits().train[:4])
    with pytest.raises(FipbenchError, match="num_points"):
        from tasks.point_cloud import PointCloudConfig
        PointCloudConfig(num_points=4)


def test_pointba_i_replaces_points_with_a_fixed_ball(pc_task):
    attack = ATTACKS.get("pointba_i")()
    train = Subset(pc_task.splits().train, range(200))
    poisoned = attack.poison(pc_task, train)
    assert len(poisoned.indices) == 10  # 5 % of 200
    i = poisoned.indices[0]
    s, c = poisoned[i], train[i]
    assert s.y == 0 and s.x.shape == c.x.shape
    moved = (s.x - c.x).norm(dim=1) > 0
    assert int(moved.sum()) == 32
    ball = s.x[moved] - torch.tensor([0.05, 0.05, 0.05])
    assert torch.allclose(ball.norm(dim=1), torch.full((32,), 0.05), atol=1e-5)


def test_pointba_o_rotates_the_whole_cloud_by_the_fixed_angle(pc_task):
    attack = ATTACKS.get("pointba_o")()
    triggered, clean = attack.triggered_test(pc_task, Subset(pc_task.splits().test, range(20)))
    x, c = triggered[0].x, clean[0].x
    assert torch.allclose(x, c @ rotation("z", math.radians(10)).T)
    assert torch.allclose(x.norm(dim=1), c.norm(dim=1), atol=1e-5) and torch.allclose(x[:, 2], c[:, 2])  # about z
    cos = float((x[:, :2] * c[:, :2]).sum(dim=1).sum() / (x[:, :2].norm(dim=1) * c[:, :2].norm(dim=1)).sum())
    assert cos == pytest.approx(math.cos(math.radians(10)), abs=1e-3)


def test_pcba_learns_a_centre_and_a_density_matched_radius(pc_task):
    cls = ATTACKS.get("pcba")
    attack = cls(cls.Config.from_dict({**cls.smoke_overrides, "source": 3}), seed=0)
    train = Subset(pc_task.splits().train, range(160))
    with pytest.raises(FipbenchError, match="call prepare"):
        attack.trigger(pc_task)
    attack.prepare(pc_task, train, generator=generator(0, "prep"))
    state = attack.state_dict()
    assert state["centre"].shape == (3,) and 0.01 <= float(state["radius"][0]) <= 0.49
    poisoned = attack.poison(pc_task, train)
    labels = labels_of(train)
    assert poisoned.indices and all(labels[i] == 3 for i in poisoned.indices)  # one source class
    s = poisoned[poisoned.indices[0]]
    assert s.y == 0 and s.x.norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)  # re-normalised
    triggered, clean = attack.triggered_test(pc_task, Subset(pc_task.splits().test, range(80)))
    assert len(triggered) and all(labels_of(clean)[i] == 3 for i in range(len(clean)))


@pytest.fixture(scope="module")
def point_backdoor(pc_task):
    """small_pointnet trained 2 epochs on PointBA-I-poisoned clouds (a working backdoor is not needed here)."""
    return briefly_backdoored(pc_task, "pointba_i", "small_pointnet", 400, FitConfig(epochs=2, batch_size=32, lr=0.05))


POINT_DEFENSES = [n for n in DEFENSES.names() if {"*", "points"} & set(DEFENSES.get(n).modalities)]


@pytest.mark.parametrize("name", POINT_DEFENSES)
def test_every_point_defense_runs_on_a_pointnet(pc_task, point_backdoor, name):
    model, attack = point_backdoor
    assert_defense_runs(pc_task, model, attack, name, Subset(pc_task.splits().test, range(80)))


def test_normalise_centres_and_scales_into_the_unit_ball():
    x = torch.randn(3, 40, 3) * 5 + 2
    n = normalise(x)
    assert n.mean(dim=1).abs().max() < 1e-5
    assert torch.allclose(n.norm(dim=-1).amax(dim=1), torch.ones(3))
