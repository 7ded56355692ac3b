"""`--executor ray`: a local Ray cluster with 2 CPUs (`ray start --head`) runs a small matrix; its records equal
an in-process run of the same seeds (same thread count), and a worker that dies mid-cell (the toy plugin's
`crash_once` kills its process the first time) costs only that cell, which Ray runs again.

Ray is an optional extra: without it these tests skip, unless `scripts/setup.sh --test` installed it."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import need_test_tool, tiny_matrix

from benchmark.store import ResultStore



def _matrix(marker) -> str:
    return tiny_matrix("[badnets, blend]", "[none, {name: finetune, config: {fit: {steps: 5}}}, "
                       f"{{name: crash_once, config: {{marker: {marker}}}}}]", name="ray")


def _ray_bin() -> str:
    import importlib.util

    need_test_tool("ray", importlib.util.find_spec("ray") is not None,
                   "bash scripts/setup.sh --test, or pip install -e '.[ray]'")
    return str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster(plugin_env):
    """(address, env) of a fresh 2-CPU Ray head whose workers see the repo and the toy plugin."""
    ray = _ray_bin()
    # RAY_AUTH_MODE=token: a driver given an explicit address sends the cluster's token only with it.  The token
    # itself is given (head and driver share the env): Ray >= 2.5x no longer creates one on a fresh machine.
    env = {**plugin_env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    port = _free_port()
    started = subprocess.run([ray, "start", "--head", "--num-cpus", "2", "--port", str(port),
                              "--include-dashboard=false", "--disable-usage-stats"],
                             env=env, capture_output=True, text=True, timeout=180)
    if started.returncode:
        pytest.fail(f"`ray start --head` failed: {(started.stderr or started.stdout).strip().splitlines()[-1:]}")
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


def _run(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "benchmark.cli", "run", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_ray_run_equals_in_process_run_and_survives_a_dead_worker(ray_cluster, tmp_path):
    address, env = ray_cluster
    marker = tmp_path / "crashed-once"
    (tmp_path / "m.yaml").write_text(_matrix(marker))
    common = ["m.yaml", "--cache", "cache", "--no-sharpness"]

    on_ray = _run([*common, "--results", "ray", "--executor", "ray", "--ray-address", address,
                   "--cpus-per-cell", "1"], env, tmp_path)
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    assert marker.exists(), "crash_once never ran"  # a worker died in its first attempt ...
    ray_records = {r["cell_id"]: r for r in ResultStore(tmp_path / "ray").all()}
    assert len(ray_records) == 6  # ... and the cell was run again, not lost

    # The same matrix in one process (fresh artifact cache, 1 thread like a 1-CPU Ray task).
    local = _run(["m.yaml", "--cache", "cache-local", "--no-sharpness", "--results", "local", "--threads", "1"],
                 env, tmp_path)
    assert local.returncode == 0, local.stderr[-3000:]
    local_records = {r["cell_id"]: r for r in ResultStore(tmp_path / "local").all()}
    assert set(local_records) == set(ray_records)
    for cid, rec in ray_records.items():
        assert rec["metrics"] == local_records[cid]["metrics"], cid
        assert rec["config_hash"] == local_records[cid]["config_hash"]
        assert rec["poisoned_index_hash"] == local_records[cid]["poisoned_index_hash"]


def test_no_cluster_is_a_one_line_error(tmp_path, subprocess_env):
    _ray_bin()
    (tmp_path / "m.yaml").write_text(tiny_matrix("[badnets]", "[none]"))
    out = _run(["m.yaml", "--results", "r", "--executor", "ray", "--ray-address", f"127.0.0.1:{_free_port()}"],
               subprocess_env, tmp_path)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("fipbench: error: no Ray cluster at --ray-address") and "ray start --head" in last
    assert not (tmp_path / "r").exists()
