"""Every registered defense, enrolled automatically: metadata, purification of a backdoored model from the clean
holdout only, a plain model of the same architecture back, a JSON-serialisable report, determinism by seed.

Each defense runs with its `smoke_overrides` (a few steps), so this checks behaviour and plumbing, not
purification quality; quality is measured by benchmarks/purification.py and the leaderboard.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from benchmark.registries import DEFENSES
from benchmark.rng import generator

NAMES = DEFENSES.names()


class Watched:
    """The holdout, recording which indices a defense reads (it must read nothing else: it gets nothing else)."""

    def __init__(self, data):
        self.data, self.read = data, set()

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        self.read.add(int(i))
        return self.data[i]

    @property
    def labels(self):
        return [s.y for s in self.data]


def build(name):
    cls = DEFENSES.get(name)
    return cls(cls.Config.from_dict(cls.smoke_overrides, f"{name}.smoke_overrides"))


@pytest.mark.parametrize("name", NAMES)
def test_metadata(name):
    cls = DEFENSES.get(name)
    assert cls.version >= 1 and cls.clean_data and cls.modalities
    if name != "none":
        assert cls.paper, f"{name}: state the paper reference"
    cls.Config.from_dict(cls.smoke_overrides)


@pytest.mark.parametrize("name", NAMES)
def test_purifies_into_a_plain_model_from_the_holdout_only(name, task, splits, backdoored_model, backdoor_attack):
    before = {k: v.clone() for k, v in backdoored_model.state_dict().items()}
    holdout = Watched(splits.holdout)
    defense = build(name)
    assert defense.unsupported_reason(task) is None
    out = defense.purify(backdoored_model, holdout, task, rng=generator(0, "defense", name))
    assert isinstance(out, torch.nn.Module)
    after = out.state_dict()
    assert {k: tuple(v.shape) for k, v in after.items()} == {k: tuple(v.shape) for k, v in before.items()}, \
        f"{name}: the purified model must have the backdoored model's architecture (fold any reparametrisation)"
    assert all(torch.isfinite(v.float()).all() for v in after.values())
    # A data-free defense looks at one sample at most (for the input shape); the others learn from the holdout.
    if defense.clean_data.startswith("none"):
        assert len(holdout.read) <= 1, f"{name} declares itself data-free but read {len(holdout.read)} samples"
    else:
        assert len(holdout.read) >= min(16, len(holdout)), f"{name} read only {len(holdout.read)} holdout samples"
    json.dumps(defense.report)  # goes into the record as is
    acc = task.metrics(out, splits.test)["acc"]
    triggered, clean = backdoor_attack.triggered_test(task, splits.test)
    asr = task.backdoor_metrics(out, triggered, clean)["asr"]
    assert math.isfinite(acc) and math.isfinite(asr)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights(name, task, splits, backdoored_model):
    a = build(name).purify(copy.deepcopy(backdoored_model), splits.holdout, task, rng=generator(0, "d", name))
    b = build(name).purify(copy.deepcopy(backdoored_model), splits.holdout, task, rng=generator(0, "d", name))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), f"{name}: {k} differs between two runs with one seed"
