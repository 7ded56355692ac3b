"""Assertions shared by several test modules (imported as `_helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import pytest
import torch

from benchmark.errors import FipbenchError
from benchmark.registries import DEFENSES
from benchmark.rng import generator


def one_line_error(fn, *args, match: str | None = None, **kw) -> str:
    """`fn(*args, **kw)` raises a FipbenchError (matching `match`) whose message is one line; returns it."""
    with pytest.raises(FipbenchError, match=match) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def assert_defense_runs(task, model: torch.nn.Module, attack, name: str, test: Sequence) -> None:
    """Defense `name` (with its smoke overrides) runs on a copy of `model`: same state-dict keys and shapes,
    finite weights, finite clean and backdoor metrics on `test`.  Whether it purifies is measured by the
    configs and benchmarks at real budgets, not by this smoke test."""
    cls = DEFENSES.get(name)
    defense = cls(cls.Config.from_dict(cls.smoke_overrides))
    before = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    out = defense.purify(copy.deepcopy(model), task.splits().holdout, task, rng=generator(0, "defense", name))
    assert {k: tuple(v.shape) for k, v in out.state_dict().items()} == before
    assert all(torch.isfinite(v.float()).all() for v in out.state_dict().values())
    triggered, clean = attack.triggered_test(task, test)
    assert math.isfinite(task.metrics(out, test)[task.metric_name])
    assert math.isfinite(task.backdoor_metrics(out, triggered, clean)["asr"])


def need_test_tool(name: str, available: bool, install: str) -> None:
    """Skip a test whose optional tool (Ray, chromium) is missing, unless `scripts/setup.sh --test` set this
    venv up (it leaves `<venv>/fipbench-test-tools`) or FIPBENCH_CI=1: then the tool's absence is a failure."""
    import os
    import sys
    from pathlib import Path

    if available:
        return
    if (Path(sys.prefix) / "fipbench-test-tools").exists() or os.environ.get("FIPBENCH_CI") == "1":
        pytest.fail(f"{name} is missing although the test set-up promised it; {install}")
    pytest.skip(f"{name} not installed ({install})")


def tiny_matrix(attacks: str, defenses: str, *, epochs: int = 1, dataset: str = "digits", name: str = "tiny") -> str:
    """A one-group matrix YAML on the small CNN, for runs that take seconds: `attacks` and `defenses` are YAML
    lists, e.g. tiny_matrix("[badnets]", "[none, {name: finetune, config: {fit: {steps: 2}}}]")."""
    return (f"name: {name}\nseeds: [0]\ngroups:\n  - task: image_classification\n    dataset: {dataset}\n"
            f"    model: small_cnn\n    task_config: {{holdout_fraction: 0.05}}\n"
            f"    train: {{epochs: {epochs}, batch_size: 64, lr: 0.05}}\n"
            f"    attacks: {attacks}\n    defenses: {defenses}\n")


def briefly_backdoored(task, attack_name: str, arch: str, n_train: int, fit) -> tuple[torch.nn.Module, object]:
    """(model in eval mode, attack): `arch` fitted with `fit` on the attack's poisoning of the first `n_train`
    training samples, seeds 0 — enough for a defense to run on, not a working backdoor."""
    from torch.utils.data import Subset

    from benchmark.registries import ATTACKS

    attack = ATTACKS.get(attack_name)()
    train = Subset(task.splits().train, range(n_train))
    model = task.build_model(arch, generator(0, "init"))
    task.fit(model, attack.poison(task, train), fit, generator=generator(0, "train"))
    return model.eval(), attack
