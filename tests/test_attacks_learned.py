"""Behaviour of the attacks whose trigger is learned in `prepare`: CLB's adversarial perturbations, ISSBA's
steganographic encoder/decoder, FBA's style transform (on the embedded digits data, sized for a CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attacks._c_nets import seeded
from attacks.base import Subset
from attacks.clb import CLB, AdversarialTraining, CLBConfig, corner_trigger, pgd
from attacks.fba import FBA, FBAConfig, RandomFeatures, gram, style_image
from attacks.issba import ISSBA, SSBA, ISSBAConfig
from benchmark.errors import FipbenchError
from benchmark.registries import ATTACKS
from benchmark.rng import generator
from tasks.base import labels_of


@pytest.fixture(scope="module")
def train(splits):
    return Subset(splits.train, range(600))


def images(data, n=64):
    return torch.stack([data[i].x for i in range(min(n, len(data)))])  # [n,C,H,W]


# -- CLB ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clb(task, train):
    attack = CLB(CLBConfig(eps=8 / 255, pgd_steps=10, surrogate_epochs=1, adv_steps=1, poison_rate=0.05), seed=0)
    attack.prepare(task, train, generator=generator(0, "clb-test"))
    return attack


def test_clb_poisons_only_target_images_within_eps_and_keeps_labels(task, train, clb):
    poisoned = clb.poison(task, train)
    labels = labels_of(train)
    assert poisoned.indices and all(labels[i] == 0 for i in poisoned.indices)
    assert len(poisoned.indices) == round(0.05 * len(train))  # share of the whole split, from the target class
    assert poisoned.labels == labels  # clean-label: nothing is relabelled
    sign, mask = corner_trigger(*task.input_shape)
    inner = ~mask.bool().expand_as(sign)
    moved = 0
    for i in poisoned.indices:
        x, xp = train[i].x, poisoned[i].x
        assert poisoned[i].y == train[i].y == 0
        assert float((xp - x)[inner].abs().max()) <= 8 / 255 + 1e-6  # the perturbation obeys the L_inf bound
        assert torch.equal(xp[mask.bool().expand_as(xp)], (sign[mask.bool().expand_as(sign)] > 0).float())
        moved += bool((xp - x)[inner].abs().max() > 0)
    assert moved >= len(poisoned.indices) // 2  # the perturbations are really there
    assert int(clb.state_dict()["delta"].abs().max()) <= 8


def test_clb_perturbations_are_adversarial_and_the_test_trigger_is_the_pattern_only(task, splits, train, clb):
    # A linear classifier fitted in a few full-batch steps stands in for the surrogate (PGD is model-agnostic).
    c, h, w = task.input_shape
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * h * w, task.num_classes))
    xs, ys = images(train, len(train)), torch.tensor(labels_of(train))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(xs), ys).backward()
        opt.step()
    x = images(train, 32)
    y = torch.tensor(labels_of(train)[:32])
    adv = pgd(model, x, y, 8 / 255, 2 / 255, 10)
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y) + 0.1
    assert float((adv - x).abs().max()) <= 8 / 255 + 1e-6 and 0 <= float(adv.min()) and float(adv.max()) <= 1
    triggered, clean = clb.triggered_test(task, Subset(splits.test, range(50)))
    assert all(s.y != 0 for s in clean) and all(s.y == 0 for s in triggered)
    sign, mask = corner_trigger(*task.input_shape)
    for i in range(5):  # outside the corners a test image is untouched
        assert torch.equal(triggered[i].x[~mask.bool().expand_as(sign)], clean[i].x[~mask.bool().expand_as(sign)])


def test_clb_state_round_trip_rebuilds_the_poisoned_set_exactly(task, train, clb):
    restored = CLB(clb.cfg, seed=0)
    restored.load_state_dict(clb.state_dict())
    a, b = clb.poison(task, train), restored.poison(task, train)
    assert all(torch.equal(a[i].x, b[i].x) for i in a.indices)
    with pytest.raises(FipbenchError, match="perturbation"):
        CLB(clb.cfg, seed=0).poison(task, train)[a.indices[0]]  # no state: refuses to invent one
    with pytest.raises(FipbenchError, match="all2one"):
        CLBConfig(label_mode="all2all")


def test_clb_adversarial_training_hook_trains_on_pgd_examples_within_eps(task, train):
    # The surrogate's Madry-style training: each batch is replaced by PGD examples of the current model, inside the
    # eps-ball and [0,1], harder than the clean batch; crafting runs in eval mode and leaves BatchNorm untouched.
    model = task.build_model("small_cnn", generator(0, "clb-hook"))
    hook = AdversarialTraining(0.2, 0.1, 3, generator(0, "clb-hook-start"))
    hook.on_fit_start(model, task)
    model.train()
    batch = task.collate([train[i] for i in range(32)])
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    adv = hook.on_batch(batch, 0)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    x, xa = batch["x"], adv["x"]
    assert torch.equal(adv["y"], batch["y"]) and xa.shape == x.shape
    assert float((xa - x).abs().max()) <= 0.2 + 1e-6 and 0 <= float(xa.min()) and float(xa.max()) <= 1
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(xa), batch["y"]) > F.cross_entropy(model(x), batch["y"])


# -- ISSBA ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def issba(task, train):
    attack = ISSBA(ISSBAConfig(steps=400, width=16), seed=0)
    attack.prepare(task, train, generator=generator(0, "issba-test"))
    return attack


def test_issba_decoder_recovers_the_secret_and_residuals_are_small(task, splits, issba):
    x = images(Subset(splits.test, range(200)), 128)
    encoded = issba.encode(task, x)
    with torch.no_grad():
        bits = (issba.decoder(encoded) > 0).float()  # [B,n_bits]
        clean_bits = (issba.decoder(x) > 0).float()
    secret = issba.secret
    assert float((bits == secret).float().mean()) > 0.85  # chance is 0.5
    assert float((clean_bits == secret).float().mean()) < float((bits == secret).float().mean()) - 0.2
    residual = encoded - x
    psnr = 10 * torch.log10(1 / residual.pow(2).mean())
    assert float(psnr) > 18 and float(residual.abs().mean()) < 0.08  # invisible-ish, not a patch
    # Sample-specific: residuals of different images differ.
    assert float((residual[0] - residual[1]).abs().mean()) > 1e-3


def test_issba_trigger_matches_the_encoder_and_survives_a_state_round_trip(task, splits, issba):
    test = Subset(splits.test, range(40))
    triggered, clean = issba.triggered_test(task, test)
    x = torch.stack([clean[i].x for i in range(8)])
    direct = issba.encode(task, x)
    restored = SSBA(issba.cfg, seed=0)  # the alias: same attack, same state
    restored.load_state_dict(issba.state_dict())
    t2, _ = restored.triggered_test(task, test)
    for i in range(8):
        assert torch.allclose(triggered[i].x, direct[i], atol=1e-5)
        assert torch.equal(triggered[i].x, t2[i].x)
    with pytest.raises(FipbenchError, match="secret"):
        ISSBA(ISSBAConfig(secret_seed=1, width=16), seed=0).load_state_dict(issba.state_dict())
    assert issubclass(ATTACKS.get("ssba"), ISSBA) and ATTACKS.get("ssba").__doc__


# -- FBA ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fba(task, train):
    attack = FBA(FBAConfig(steps=100, width=16), seed=0)
    attack.prepare(task, train, generator=generator(0, "fba-test"))
    return attack


def test_fba_transform_moves_images_towards_the_style(task, splits, fba):
    c, h, w = task.input_shape
    x = images(Subset(splits.test, range(64)))
    with torch.no_grad():
        y = fba.transform(task)(x)
        feats = seeded(lambda: RandomFeatures(c), generator(fba.cfg.style_seed, "fba-features"))  # prepare's
        target = [gram(f) for f in feats(style_image(c, h, w, fba.cfg.style_seed)[None])]
        dist = lambda z: sum(float((gram(f) - t).pow(2).sum((1, 2)).mean()) for f, t in zip(feats(z), target))
        assert dist(y) < 0.5 * dist(x)
    assert 0 <= float(y.min()) and float(y.max()) <= 1
    assert float((y - x).abs().mean()) > 0.05  # a global restyling, not an invisible residual
    # The content survives: the restyled digits still correlate with the originals.
    corr = torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1]
    assert float(corr) > 0.3


def test_fba_transform_is_the_same_function_after_a_state_round_trip(task, splits, fba):
    restored = FBA(fba.cfg, seed=0)
    restored.load_state_dict(fba.state_dict())
    x = images(Subset(splits.test, range(16)))
    with torch.no_grad():
        assert torch.equal(fba.transform(task)(x), restored.transform(task)(x))
    poisoned = fba.poison(task, Subset(splits.train, range(100)))
    assert all(poisoned[i].y == 0 for i in poisoned.indices)
    with pytest.raises(FipbenchError):
        FBA(fba.cfg).load_state_dict({"secret": torch.zeros(3)})
