"""Attacks: deterministic triggers by index, poisoned-index selection, labels, trigger shapes, test views."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from attacks.badnets import BadNets, BadNetsConfig
from attacks.base import Params, PoisonedDataset, Trigger
from attacks.blend import Blend, BlendConfig
from attacks.none import NoAttack
from benchmark.registries import ATTACKS
from tasks.base import Sample


def digest(samples) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(s.x.contiguous().numpy().tobytes())
        h.update(str((s.y, s.index)).encode())
    return h.hexdigest()


@pytest.mark.parametrize("attack_cls", [BadNets, Blend])
def test_poisoning_is_deterministic_by_index(task, splits, attack_cls):
    a1 = attack_cls(seed=3)
    p1 = a1.poison(task, splits.train)
    p1b = a1.poison(task, splits.train)
    torch.manual_seed(12345)  # the global RNG must play no part
    torch.rand(100)
    p2 = attack_cls(attack_cls.Config(), seed=3).poison(task, splits.train)

    assert p1.indices == p1b.indices == p2.indices
    probe = p1.indices[:5] + p1.indices[-3:]
    for i in probe:
        assert torch.equal(p1[i].x, p1b[i].x) and torch.equal(p1[i].x, p2[i].x)
        assert p1[i].y == p2[i].y and p1[i].index == p2[i].index
        assert torch.equal(p1[i].x, p1[i].x)  # repeated access: same sample
    golden = digest(p1[i] for i in probe)
    assert golden == digest(p2[i] for i in probe)
    assert golden == digest(attack_cls(seed=3).poison(task, splits.train)[i] for i in probe)
    # And it is a real digest of triggered data: differs from the clean samples'.
    assert golden != digest(splits.train[i] for i in probe)


class NoiseTrigger(Trigger):
    """A trigger whose per-sample parameters are random: tests PoisonedDataset's per-index generators."""

    modalities = frozenset({"image"})

    def make_params(self, sample: Sample, gen: torch.Generator) -> Params:
        return {"noise": torch.rand(sample.x.shape, generator=gen)}

    def apply(self, sample: Sample, params: Params) -> Sample:
        return dataclasses.replace(sample, x=(sample.x + 0.1 * params["noise"]).clamp(0, 1))


def test_random_trigger_params_depend_only_on_seed_split_and_index(splits):
    data = splits.train[:40]
    idx = [1, 5, 7, 30]
    make = lambda seed, split="train": PoisonedDataset(data, idx, NoiseTrigger(), None, seed=seed, split=split)
    a, b = make(0), make(0)
    for i in idx:
        assert torch.equal(a[i].x, b[i].x)
        assert torch.equal(a[i].x, a[i].x)
    # Access order does not matter.
    xs_forward = [a[i].x for i in idx]
    xs_backward = [b[i].x for i in reversed(idx)][::-1]
    assert all(torch.equal(u, v) for u, v in zip(xs_forward, xs_backward))
    # Different samples, seeds or splits get different noise.
    assert not torch.equal(a[1].x - data[1].x, a[5].x - data[5].x)
    assert not torch.equal(make(1)[5].x, a[5].x)
    assert not torch.equal(make(0, "test")[5].x, a[5].x)
    # Unpoisoned indices are returned untouched.
    assert a[2] is data[2]


def test_selection_count_targets_and_seed(task, splits):
    train = splits.train
    n = len(train)
    for rate in (0.1, 0.05, 0.013):
        attack = BadNets(BadNetsConfig(poison_rate=rate, target=0), seed=0)
        sel = attack.select(task, train)
        assert len(sel) == round(rate * n)
        assert len(set(sel)) == len(sel) and sel == sorted(sel)
        assert all(train[i].y != 0 for i in sel), "all2one must not poison target-class samples"
    a = BadNets(BadNetsConfig(poison_rate=0.1), seed=0).select(task, train)
    assert a == BadNets(BadNetsConfig(poison_rate=0.1), seed=0).select(task, train)
    b = BadNets(BadNetsConfig(poison_rate=0.1), seed=1).select(task, train)
    assert a != b
    assert BadNets(BadNetsConfig(poison_rate=0.0), seed=0).select(task, train) == []
    target3 = BadNets(BadNetsConfig(poison_rate=0.1, target=3), seed=0).select(task, train)
    assert all(train[i].y != 3 for i in target3)


def test_all_to_one_labels(task, splits):
    attack = BadNets(BadNetsConfig(target=7), seed=0)
    p = attack.poison(task, splits.train)
    for i in p.indices[:20]:
        assert p[i].y == 7 and splits.train[i].y != 7


def test_all_to_all_labels(task, splits):
    attack = BadNets(BadNetsConfig(label_mode="all2all"), seed=0)
    p = attack.poison(task, splits.train)
    assert len(p.indices) == round(0.1 * len(splits.train))
    labels_seen = set()
    for i in p.indices:
        assert p[i].y == (splits.train[i].y + 1) % 10
        labels_seen.add(splits.train[i].y)
    assert 0 in labels_seen  # every class is eligible in all2all, the target class included
    trig, clean = attack.triggered_test(task, splits.test)
    assert len(clean) == len(splits.test)
    assert all(trig[i].y == (clean[i].y + 1) % 10 for i in range(0, len(clean), 17))


def test_badnets_changes_only_the_bottom_right_patch(task, splits):
    p = BadNets(BadNetsConfig(), seed=0).poison(task, splits.train)
    c, h, w = task.input_shape
    assert (c, h, w) == (1, 16, 16)
    changed_somewhere = False
    for i in p.indices[:30]:
        x0, x1 = splits.train[i].x, p[i].x
        assert x1.shape == x0.shape and x1.dtype == x0.dtype
        outside = torch.ones(h, w, dtype=torch.bool)
        outside[h - 3:, w - 3:] = False
        assert torch.equal(x1[:, outside], x0[:, outside])
        assert torch.all(x1[:, h - 3:, w - 3:] == 1.0)
        changed_somewhere |= not torch.equal(x0, x1)
    assert changed_somewhere


def test_badnets_corner_and_margin(task, splits):
    x0 = splits.train[0].x
    trig = BadNets(BadNetsConfig(corner="top_left", margin=1, patch_size=2, value=0.5)).trigger(task)
    x1 = trig.apply(splits.train[0], {}).x
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[1:3, 1:3] = True
    assert torch.all(x1[:, mask] == 0.5)
    assert torch.equal(x1[:, ~mask], x0[:, ~mask])
    with pytest.raises(Exception, match="does not fit"):
        BadNets(BadNetsConfig(patch_size=16, margin=1)).trigger(task)


def test_blend_is_convex_combination_with_pattern(task, splits):
    attack = Blend(BlendConfig(), seed=0)
    trig = attack.trigger(task)
    pattern = trig.pattern
    assert pattern.shape == (1, 16, 16)
    assert 0 <= float(pattern.min()) and float(pattern.max()) <= 1 and float(pattern.std()) > 0.1
    p = attack.poison(task, splits.train)
    for i in p.indices[:20]:
        x = splits.train[i].x
        torch.testing.assert_close(p[i].x, 0.8 * x + 0.2 * pattern, atol=1e-6, rtol=0)
    # The pattern is fixed by pattern_seed, independent of the run seed.
    assert torch.equal(Blend(BlendConfig(), seed=5).trigger(task).pattern, pattern)
    assert not torch.equal(Blend(BlendConfig(pattern_seed=1)).trigger(task).pattern, pattern)


def test_triggered_test_excludes_target_class(task, splits):
    attack = BadNets(BadNetsConfig(target=0), seed=0)
    trig, clean = attack.triggered_test(task, splits.test)
    n_target = sum(1 for s in splits.test if s.y == 0)
    assert n_target > 0
    assert len(clean) == len(trig) == len(splits.test) - n_target
    for i in range(len(clean)):
        assert clean[i].y != 0
        assert trig[i].y == 0
        assert trig[i].index == clean[i].index
    # Triggered test samples carry the trigger; the clean views are the original test samples.
    for i in range(0, len(clean), 50):
        assert torch.all(trig[i].x[:, -3:, -3:] == 1.0)
        assert clean[i] is splits.test[clean[i].index]


def test_clean_samples_untouched(task, splits):
    p = BadNets(seed=0).poison(task, splits.train)
    poisoned = set(p.indices)
    assert len(p) == len(splits.train)
    untouched = [i for i in range(len(p)) if i not in poisoned]
    assert len(untouched) == len(p) - len(poisoned)
    for i in untouched[::25]:
        s = p[i]
        assert s is splits.train[i] or (torch.equal(s.x, splits.train[i].x) and s.y == splits.train[i].y)
    # The clean split itself was not modified by poisoning.
    i = p.indices[0]
    x_before, y_before = splits.train[i].x.clone(), splits.train[i].y
    assert not torch.equal(p[i].x, x_before)
    assert torch.equal(splits.train[i].x, x_before) and splits.train[i].y == y_before


def test_no_attack_poisons_nothing(task, splits):
    attack = NoAttack(seed=0)
    p = attack.poison(task, splits.train)
    assert p.indices == []
    trig, clean = attack.triggered_test(task, splits.test)
    assert len(trig) == len(clean) == 0


def test_index_hash_stable(task, splits):
    p1 = BadNets(seed=0).poison(task, splits.train)
    p2 = BadNets(seed=0).poison(task, splits.train)
    assert p1.index_hash() == p2.index_hash()
    assert p1.index_hash() == hashlib.sha256(",".join(map(str, p1.indices)).encode()).hexdigest()
    assert BadNets(seed=1).poison(task, splits.train).index_hash() != p1.index_hash()
    # The hash describes the set: order and duplicates in the given indices do not matter.
    trig = BadNets().trigger(task)
    a = PoisonedDataset(splits.train, [5, 3, 9], trig, None, seed=0, split="train")
    b = PoisonedDataset(splits.train, [9, 3, 5, 3], trig, None, seed=0, split="train")
    assert a.indices == [3, 5, 9] and a.index_hash() == b.index_hash()


def test_attack_rejects_unsupported_modality(task, monkeypatch):
    from benchmark.errors import FipbenchError

    monkeypatch.setattr(type(task), "modality", "text")
    with pytest.raises(FipbenchError, match="does not support task"):
        ATTACKS.get("badnets")(seed=0).check_task(task)


def test_label_lists_need_no_decoding(task, splits):
    """Selection and metrics read `labels` from views; they must equal the labels of the decoded samples."""
    from attacks.badnets import BadNets, BadNetsConfig
    from tasks.base import labels_of

    attack = BadNets(BadNetsConfig(label_mode="all2all"), seed=0)
    poisoned = attack.poison(task, splits.train)
    assert poisoned.labels == [poisoned[i].y for i in range(len(poisoned))]
    triggered, clean = attack.triggered_test(task, splits.test)
    assert labels_of(triggered) == [triggered[i].y for i in range(len(triggered))]
    assert labels_of(clean) == [clean[i].y for i in range(len(clean))]
