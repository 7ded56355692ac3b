"""Executors: the shared scheduler (artifact order, errors) with fake workers, and the processes executor
against an in-process run of the same cells.  (The Ray executor: tests/test_ray_executor.py.)"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
from _helpers import tiny_matrix

from benchmark.executors import run_scheduled
from benchmark.spec import parse_matrix
from benchmark.store import ResultStore

MATRIX = {"name": "m", "groups": [{"task": "image_classification", "dataset": "digits", "model": "small_cnn",
                                   "attacks": ["badnets", "blend"], "defenses": ["none", "finetune", "fip"]}]}


def _fake_runner(cached: set[str] = frozenset()):
    logs: list[str] = []
    return SimpleNamespace(cache=SimpleNamespace(has=lambda key: key in cached), log=logs.append), logs


def test_siblings_start_once_their_artifact_exists():
    specs = parse_matrix(MATRIX, "m.yaml").cells
    runner, _ = _fake_runner()
    started: list[str] = []
    handles: dict[int, object] = {}

    def submit(spec):
        started.append(f"{spec.attack.label}/{spec.defense.label}")
        handles[len(handles)] = spec
        return len(handles) - 1

    order = [spec for spec, _ in run_scheduled(runner, specs, submit, lambda hs: hs[0],
                                               lambda h, spec: {"cell": h})]
    # First the artifact-training cell of each attack; a sibling only after its first cell finished.
    assert started[:2] == ["badnets/none", "blend/none"]
    assert started.index("badnets/finetune") > 1 and started.index("blend/finetune") > 1
    assert len(order) == len(specs) == len(started) == 6


def test_cached_artifacts_start_all_their_cells_at_once():
    specs = parse_matrix(MATRIX, "m.yaml").cells
    runner, _ = _fake_runner({specs[0].artifact_key()})
    started = []
    run = run_scheduled(runner, specs, lambda spec: started.append(spec) or len(started) - 1, lambda hs: hs[0],
                        lambda h, spec: {})
    next(run)
    assert [s.attack.label for s in started[:4]] == ["badnets", "badnets", "badnets", "blend"]


def test_an_error_stops_new_cells_but_keeps_the_running_ones():
    specs = parse_matrix(MATRIX, "m.yaml").cells
    runner, _ = _fake_runner({s.artifact_key() for s in specs})  # all six start at once
    by_handle = {}

    def submit(spec):
        by_handle[len(by_handle)] = spec
        return len(by_handle) - 1

    def outcome(h, spec):
        if h == 1:
            raise ValueError("cell 1 failed")
        return {"h": h}

    got = []
    with pytest.raises(ValueError, match="cell 1 failed"):
        for _, record in run_scheduled(runner, specs, submit, lambda hs: hs[0], outcome):
            got.append(record["h"])
    assert got == [0, 2, 3, 4, 5]  # every cell already running finished and was handed back


def test_processes_executor_equals_an_in_process_run(tmp_path, subprocess_env):
    (tmp_path / "m.yaml").write_text(tiny_matrix("[badnets, blend]", "[none, {name: finetune, config: {fit: {steps: 5}}}]"))

    def run(*extra):
        out = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "m.yaml", "--no-sharpness", *extra],
                             env=subprocess_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    log = run("--results", "pool", "--cache", "c1", "--executor", "processes", "--workers", "2")
    assert "2 worker processes, 1 thread(s) each" in log
    run("--results", "serial", "--cache", "c2", "--threads", "1")
    metrics = lambda name: {r["cell_id"]: r["metrics"] for r in ResultStore(tmp_path / name).all()}  # noqa: E731
    assert len(metrics("pool")) == 4 and metrics("pool") == metrics("serial")


def test_processes_executor_records_a_diverged_training_and_finishes_the_rest(tmp_path, subprocess_env):
    # The case that once took a whole processes run down: one backdoored model's training diverges (lr 1e30).
    hot = tiny_matrix("[{name: badnets, label: badnets-hot}]", "[none, finetune]").replace("lr: 0.05", "lr: 1.0e+30")
    fine = tiny_matrix("[badnets]", "[none]")
    (tmp_path / "m.yaml").write_text(hot + fine[fine.index("  - task:"):])
    out = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "m.yaml", "--no-sharpness", "--executor",
                          "processes", "--workers", "2"], env=subprocess_env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "2 of 3 cells failed" in out.stderr
    status = {(r["spec"]["attack_label"], r["spec"]["defense_label"]): r["status"]
              for r in ResultStore(tmp_path / "results").all()}
    assert status == {("badnets-hot", "none"): "failed", ("badnets-hot", "finetune"): "failed",
                      ("badnets", "none"): "ok"}
    assert len(list((tmp_path / ".fipbench" / "artifacts").glob("*/failed.json"))) == 1
