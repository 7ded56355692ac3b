"""Behaviour of the optimised / clean-label / composite image attacks: Trojan, SIG, LF, CBA."""

from __future__ import annotations

import math

import pytest
import torch

from attacks.base import Subset
from attacks.cba import CBA, CBAConfig, draw_split, half_mix
from attacks.lf import LFConfig, LowFrequency, gaussian_transfer, low_pass
from attacks.sig import SIG, SIGConfig
from attacks.trojan import Trojan, TrojanConfig
from benchmark.errors import FipbenchError
from benchmark.rng import generator
from tasks.base import labels_of


@pytest.fixture(scope="module")
def small_train(splits):
    return Subset(splits.train, range(400))


# -- SIG ------------------------------------------------------------------------------------------------------
def test_sig_adds_the_sinusoid_to_target_class_images_only_and_keeps_their_labels(task, splits):
    attack = SIG(SIGConfig(), seed=0)
    poisoned = attack.poison(task, splits.train)
    labels = labels_of(splits.train)
    assert poisoned.indices and all(labels[i] == 0 for i in poisoned.indices)
    # Poison rate 10 % of the split, drawn from the target class only (capped by its size).
    n_target = labels.count(0)
    assert len(poisoned.indices) == min(n_target, round(0.1 * len(labels)))
    assert poisoned.labels == labels  # clean-label: no label changes
    i = poisoned.indices[0]
    x, xp = splits.train[i].x, poisoned[i].x  # [C,H,W]
    w = x.shape[-1]
    j = torch.arange(w, dtype=torch.float64)
    expected = (x.double() + (40 / 255) * torch.sin(2 * math.pi * j * 6 / w)).clamp(0, 1)
    assert torch.allclose(xp.double(), expected, atol=1e-6)
    assert poisoned[i].y == 0
    # Test time: only non-target images, triggered, labelled with the target.
    trig, clean = attack.triggered_test(task, splits.test)
    assert len(clean) and all(y != 0 for y in labels_of(clean)) and set(labels_of(trig)) == {0}
    k = 3
    assert torch.allclose(trig[k].x.double(),
                          (clean[k].x.double() + (40 / 255) * torch.sin(2 * math.pi * j * 6 / w)).clamp(0, 1),
                          atol=1e-6)


def test_sig_test_delta_and_clean_label_only(task, splits):
    trig, clean = SIG(SIGConfig(delta=0.05, test_delta=0.2)).triggered_test(task, Subset(splits.test, range(50)))
    diff = (trig[0].x - clean[0].x).abs().max()
    assert 0.1 < float(diff) <= 0.2 + 1e-6
    with pytest.raises(FipbenchError, match="label_mode"):
        SIGConfig(label_mode="all2all")


# -- Trojan ---------------------------------------------------------------------------------------------------
def test_trojan_pattern_excites_its_neurons_more_than_random_patterns(task, splits, small_train):
    attack = Trojan(TrojanConfig(neuron_steps=60, surrogate_epochs=1), seed=0)
    attack.prepare(task, small_train, generator=generator(0, "trojan-test"))
    from attacks._surrogate import train_surrogate
    from tasks.base import FitConfig
    from benchmark.rng import child

    # The same surrogate the attack optimised against (same generator keys).
    model = train_surrogate(task, small_train, generator=child(generator(0, "trojan-test"), "surrogate"),
                            fit=FitConfig(epochs=1, batch_size=64, lr=0.05))
    optimised = float(attack.neuron_activation(task, model, attack.patch).sum())
    g = generator(1, "random-patches")
    random_acts = [float(attack.neuron_activation(task, model, torch.rand(attack.patch.shape, generator=g)).sum())
                   for _ in range(8)]
    # Optimised against it, the patch beats every random patch (a 4x4 patch on a 16x16 image moves the pooled
    # features only so far, hence the modest margin over the random mean).
    assert optimised > max(random_acts) and optimised > 1.05 * sum(random_acts) / len(random_acts)
    # Stamped like BadNets: the square (7 % of the image, bottom-right) holds the patch, the rest is untouched.
    c, h, w = task.input_shape
    s = attack.side(task)
    assert s == round(math.sqrt(0.07) * h)
    sample = splits.test[0]
    out = attack.trigger(task).apply(sample, {}).x
    assert torch.allclose(out[:, h - s:, w - s:], attack.patch)
    outside = torch.ones(h, w, dtype=torch.bool)
    outside[h - s:, w - s:] = False
    assert torch.equal(out[:, outside], sample.x[:, outside])


def test_trojan_all2all_relabels_to_the_next_class(task, splits, small_train):
    attack = Trojan(TrojanConfig(label_mode="all2all", neuron_steps=2, surrogate_epochs=1), seed=0)
    attack.prepare(task, small_train, generator=generator(0, "p"))
    poisoned = attack.poison(task, small_train)
    base = labels_of(small_train)
    assert len(poisoned.indices) == round(0.1 * len(base))
    assert all(poisoned[i].y == (base[i] + 1) % 10 for i in poisoned.indices[:20])
    with pytest.raises(FipbenchError, match="prepare"):
        Trojan().trigger(task)


# -- LF -------------------------------------------------------------------------------------------------------
def test_lf_trigger_is_low_frequency_and_bounded(task, splits, small_train):
    attack = LowFrequency(LFConfig(steps=10, surrogate_epochs=1, batch_size=32), seed=0)
    attack.prepare(task, small_train, generator=generator(0, "lf-test"))
    v = attack.pattern  # [C,H,W]
    c, h, w = task.input_shape
    assert v.shape == (c, h, w)
    assert float(v.min()) >= 0 and float(v.max()) <= 0.2 + 1e-6 and float(v.max() - v.min()) > 0.19
    spec = torch.fft.fft2(v - v.mean()).abs() ** 2  # energy per frequency, DC removed
    f = torch.sqrt(torch.fft.fftfreq(h).view(h, 1) ** 2 + torch.fft.fftfreq(w).view(1, w) ** 2)
    assert float(spec[:, f > 0.2].sum()) < 1e-9 * float(spec.sum())
    # The filter removes a high-frequency input (checkerboard) and keeps a constant one.
    checker = ((torch.arange(h).view(h, 1) + torch.arange(w).view(1, w)) % 2).float().unsqueeze(0) - 0.5
    transfer = gaussian_transfer(h, w, 6 / 32)
    assert float(low_pass(checker, transfer).abs().max()) < 1e-6
    assert torch.allclose(low_pass(torch.ones(1, h, w), transfer), torch.ones(1, h, w), atol=1e-6)
    # Additive trigger, clipped.
    trig, clean = attack.triggered_test(task, Subset(splits.test, range(40)))
    assert torch.allclose(trig[0].x, (clean[0].x + v).clamp(0, 1))
    assert all(y == 0 for y in labels_of(trig))


# -- CBA ------------------------------------------------------------------------------------------------------
def test_half_mix_puts_a_strip_of_each_image_side_by_side():
    a, b = torch.zeros(1, 8, 8), torch.ones(1, 8, 8)
    p = {"swap": False, "vertical": True, "first": 5, "off_a": 1, "off_b": 2}
    out = half_mix(a, b, p)
    assert torch.equal(out[..., :5], a[..., 1:6]) and torch.equal(out[..., 5:], b[..., 2:5])
    p = draw_split((1, 28, 28), 3, True, generator(0, "x"))
    assert 14 - 3 <= p["first"] <= 14 + 3


def test_cba_composites_and_same_class_mixes(task, splits, small_train):
    attack = CBA(CBAConfig(), seed=0)
    poisoned = attack.poison(task, small_train)
    base = labels_of(small_train)
    assert len(poisoned.indices) == round(0.1 * len(base))
    i = poisoned.indices[0]
    s = poisoned[i]
    assert s.y == 0
    params = poisoned.trigger.make_params(small_train[i], generator(0, "train", small_train[i].index))
    assert base[params["a"]] == 1 and base[params["b"]] == 2
    assert torch.equal(s.x, half_mix(small_train[params["a"]].x, small_train[params["b"]].x, params))
    # The train hook appends same-class mixes with their clean label, never built from composites.
    hook = attack.train_hooks(task)[1]
    hook.on_fit_start(None, task)
    batch = task.collate([poisoned[j] for j in range(64)])
    out = hook.on_batch(batch, 0)
    n = round(5 / 6 * 64)
    assert out["x"].shape[0] == out["y"].shape[0] == out["index"].shape[0] == 64 + n
    extra_idx, extra_y = out["index"][64:].tolist(), out["y"][64:].tolist()
    assert not set(extra_idx) & set(poisoned.indices)
    assert all(base[k] == y for k, y in zip(extra_idx, extra_y))
    # Test time: every class-A (B) test image mixed with a class-B (A) test image, labelled with the target.
    test_labels = labels_of(splits.test)
    trig, clean = attack.triggered_test(task, splits.test)
    assert len(clean) == test_labels.count(1) + test_labels.count(2) and set(labels_of(clean)) == {1, 2}
    assert set(labels_of(trig)) == {0}
    for k in range(10):
        params = trig.trigger.make_params(clean[k], generator(0, "test", clean[k].index))
        assert test_labels[params["partner"]] == 3 - clean[k].y  # the partner is of the other source class
        assert torch.equal(trig[k].x, half_mix(clean[k].x, splits.test[params["partner"]].x, params))
    with pytest.raises(FipbenchError):
        CBAConfig(class_a=0)
    with pytest.raises(FipbenchError):
        CBAConfig(margin=0)
    with pytest.raises(FipbenchError):
        CBAConfig(label_mode="all2all")


def test_cba_redraws_each_batch_composites_from_the_batch_own_a_and_b_images(task, small_train):
    from attacks.cba import FreshCompositeHook

    attack = CBA(CBAConfig(), seed=0)
    poisoned = attack.poison(task, small_train)
    batch = task.collate([poisoned[j] for j in range(64)])
    is_poisoned = torch.tensor([int(i) in attack.train_poisoned for i in batch["index"]])  # [B]
    # Paint the batch's clean class-A images 0.25 and class-B images 0.75: a fresh composite holds only both.
    x = batch["x"].clone()
    x[(batch["y"] == 1) & ~is_poisoned], x[(batch["y"] == 2) & ~is_poisoned] = 0.25, 0.75
    batch = {**batch, "x": x}
    hook = FreshCompositeHook(attack, attack.jitter_px(task))
    hook.on_fit_start(None, task)
    out = hook.on_batch(batch, 0)
    assert is_poisoned.any() and out["x"].shape == x.shape
    assert torch.equal(out["x"][~is_poisoned], x[~is_poisoned]) and torch.equal(out["y"], batch["y"])
    for row in out["x"][is_poisoned]:
        assert set(row.unique().tolist()) == {0.25, 0.75}
    hook.on_fit_start(None, task)  # every fit draws the same composites
    assert torch.equal(hook.on_batch(batch, 0)["x"], out["x"])
    no_b = {**batch, "y": torch.where(batch["y"] == 2, 3, batch["y"])}  # no class-B image to compose with
    assert torch.equal(hook.on_batch(no_b, 1)["x"], x)


def test_cba_composite_loss_is_the_authors_contrastive_term_on_the_fit_forward(task):
    from attacks.cba import CompositeLossHook

    attack = CBA(CBAConfig(), seed=0)
    hooks = attack.train_hooks(task)
    assert [type(h).__name__ for h in hooks] == ["FreshCompositeHook", "SameClassMixHook", "CompositeLossHook"]
    assert [type(h).__name__ for h in CBA(CBAConfig(simi_factor=0, fresh=False)).train_hooks(task)] == \
        ["SameClassMixHook"]
    model = torch.nn.Linear(2, 8)
    hook = CompositeLossHook(CBAConfig())
    hook.on_fit_start(model, task)
    # Labels 5 and 7 are outside the rule (1, 2 -> 0): left out, the others pair up in batch order.
    y = torch.tensor([1, 5, 1, 0, 7, 2])
    x = torch.tensor([[0.0, 0.0], [9.0, 9.0], [3.0, 4.0], [3.0, 4.3], [9.0, 9.0], [3.0, 4.3]])
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0, 0] = model.weight[1, 1] = 1.0  # logits (x0, x1, 0, ..., 0)
        model.bias.zero_()
    ce = torch.nn.functional.cross_entropy(model(x), y)  # the fit's forward; the hook keeps its logits
    total = hook.on_loss(model, {"y": y}, ce, 0)
    # Kept logits (x, 0): (0,0) 1 -> (3,4) 1: same, 25/2; (3,4) 1 -> (3,4.3) 0: apart 0.3 < 1, (0.7)^2/2;
    # (3,4.3) 0 -> (3,4.3) 2: distance 0 < 1, 1/2.  Mean over the 3 pairs, divided by 3 again.
    expected = (25 / 2 + 0.7 ** 2 / 2 + 1 / 2) / 3 / 3
    assert float((total - ce).detach()) == pytest.approx(expected, rel=1e-4)
    hook.on_fit_end(model)
    model(x)
    assert hook.logits is None  # the forward hook is gone after the fit
