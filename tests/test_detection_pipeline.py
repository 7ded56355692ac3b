"""Detection end to end: every defense either runs on a detector through `task.loss` alone or declares why it
cannot (and the runner records the reason); a BadDet cell goes through the runner with sharpness figures."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from attacks.base import Subset
from benchmark.registries import ATTACKS, DEFENSES
from benchmark.rng import generator
from tasks.base import FitConfig


@pytest.fixture(scope="module")
def det_backdoored(det_task):
    """small_fcos after a few GMA-poisoned steps: plumbing only, not a working backdoor."""
    attack = ATTACKS.get("baddet_gma")()
    train = Subset(det_task.splits().train, range(128))
    model = det_task.build_model("small_fcos", generator(0, "init"))
    det_task.fit(model, attack.poison(det_task, train), FitConfig(steps=4, batch_size=32, lr=0.002,
                 optimizer="adam"), generator=generator(0, "train"))
    return model.eval(), attack


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_runs_on_a_detector_or_says_why_not(name, det_task, det_backdoored):
    cls = DEFENSES.get(name)
    defense = cls(cls.Config.from_dict(cls.smoke_overrides))
    reason = defense.unsupported_reason(det_task)
    if reason is not None:
        assert "detection" in reason and name in reason
        return
    model, attack = det_backdoored
    before = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    holdout = Subset(det_task.splits().holdout, range(40))
    out = defense.purify(copy.deepcopy(model), holdout, det_task, rng=generator(0, "defense", name))
    assert {k: tuple(v.shape) for k, v in out.state_dict().items()} == before
    assert all(torch.isfinite(v.float()).all() for v in out.state_dict().values())
    json.dumps(defense.report)
    test = Subset(det_task.splits().test, range(40))
    assert math.isfinite(det_task.metrics(out, test)["map50"])
    triggered, clean = attack.triggered_test(det_task, test)
    assert 0 <= det_task.backdoor_metrics(out, triggered, clean)["asr"] <= 1


def test_core_defenses_apply_to_detection(det_task):
    for name in ("none", "finetune", "fip", "fast_fip", "ft_sam"):
        assert DEFENSES.get(name)().unsupported_reason(det_task) is None, name


def test_a_detection_cell_runs_through_the_runner(tmp_path):
    from benchmark.runner import Runner
    from benchmark.spec import Component, RunSpec

    runner = Runner(tmp_path / "results", tmp_path / "cache", log=lambda _: None)
    cells = [RunSpec(task="object_detection", dataset="shapes", model="small_fcos",
                     attack=Component("baddet_oda", "baddet_oda", {}), defense=Component(d, d, cfg), seed=0,
                     task_config={"holdout_fraction": 0.02}, train={"steps": 6, "batch_size": 32, "lr": 0.002,
                                                                    "optimizer": "adam"})
             for d, cfg in [("none", {}), ("fast_fip", {"fit": {"steps": 3, "batch_size": 16}})]]
    records = runner.run(cells)
    assert [r["status"] for r in records] == ["ok", "ok"]
    m = records[1]["metrics"]
    assert m["metric_name"] == "map50" and 0 <= m["clean"] <= 1 and 0 <= m["asr"] <= 1
    assert set(m["sharpness_after"]) == {"hessian_max_eig", "hessian_trace", "fisher_trace"}
    assert records[1]["defense_report"]["tuned_params"] < 0.05 * sum(
        p.numel() for p in runner.task(cells[0]).build_model("small_fcos").parameters())
    skipped = runner.run([RunSpec(task="object_detection", dataset="shapes", model="small_fcos",
                                  attack=cells[0].attack, defense=Component("nad", "nad", {}), seed=0,
                                  task_config=cells[0].task_config, train=cells[0].train)])
    assert skipped[0]["status"] == "skipped" and "detection" in skipped[0]["reason"]
