"""Cells as Ray tasks on a Ray cluster (optional extra: `pip install -e '.[ray]'`).

    ray start --head --num-cpus 8                  # on the head node; workers: ray start --address HEAD:6379
    fipbench run paper --executor ray --cpus-per-cell 2 --gpus-per-cell 1

Each cell is one task reserving `cpus_per_cell` CPUs (also its torch intra-op threads, so a cell computes the
same numbers as `fipbench run --threads N` in one process) and `gpus_per_cell` GPUs.  The driver alone writes
records, as each task returns; a worker that dies (killed, out of memory, node lost) loses only its cell, which
Ray runs again up to `retries` times.  An error raised by a cell itself (a missing dataset, a bad config) is
not retried: the driver waits for the cells already running, keeps their records, and reports the error.

Ray 2.5x clusters use token authentication: a driver given an explicit `--ray-address` sends the token only
with RAY_AUTH_MODE=token set (`auto` finds it by itself).

The attack-artifact cache and the dataset root must be paths every node can read and write (a shared
filesystem on a multi-node cluster; on one machine, the local paths).  The first cell of each artifact trains
and caches the backdoored model; the artifact's other cells are submitted when it has finished.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from benchmark.errors import FipbenchError
from benchmark.executors import (
    ExecutorOptions,
    run_cell_on_worker,
    run_scheduled,
)
from benchmark.registries import EXECUTORS


def _reachable(address: str, timeout: float = 5.0) -> bool:
    """Whether something accepts TCP connections at HOST:PORT (ray://HOST:PORT for Ray Client)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


@EXECUTORS.register("ray")
class RayExecutor:
    def __init__(self, options: ExecutorOptions = ExecutorOptions()):
        self.options = options

    def _connect(self):
        try:
            import ray
        except ImportError:
            raise FipbenchError("--executor ray needs Ray: pip install -e '.[ray]' (or pip install ray)") from None
        if ray.is_initialized():
            return ray, False
        # Workers inherit the driver's progress setting; everything else they read from the options.
        env = {k: v for k, v in os.environ.items()
               if k in ("FIPBENCH_PROGRESS", "FIPBENCH_PROGRESS_SECONDS", "FIPBENCH_DATA")}
        kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False}
        address = self.options.address
        if address not in ("auto", "local") and not _reachable(address):  # Ray itself retries for minutes
            raise FipbenchError(f"no Ray cluster at --ray-address {address} (nothing listens there); start one "
                                f"with `ray start --head`, or pass --ray-address local for a private one")
        try:
            if address == "local":  # a private single-node cluster for this run
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except ConnectionError as err:
            raise FipbenchError(f"no Ray cluster at --ray-address {address} ({err}); start one with "
                                f"`ray start --head` (with token authentication, set RAY_AUTH_MODE=token here too), "
                                f"or pass --ray-address local for a private one") from None
        return ray, True

    def execute(self, runner, specs: Sequence) -> Iterator[tuple]:
        if not specs:
            return
        ray, started = self._connect()
        try:
            yield from self._schedule(ray, runner, specs)
        finally:
            if started:
                ray.shutdown()

    def _schedule(self, ray, runner, specs: Sequence) -> Iterator[tuple]:
        opts = self.options
        task = ray.remote(run_cell_on_worker).options(
            num_cpus=opts.cpus_per_cell, num_gpus=opts.gpus_per_cell, max_retries=opts.retries,
            retry_exceptions=False)
        worker_options = runner.worker_options()

        def outcome(ref, spec):
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as err:  # the cell's own error (not retried): re-raise it
                raise (getattr(err, "cause", None) or err) from None
            except ray.exceptions.RayError as err:  # retries exhausted: the worker died every time
                raise FipbenchError(f"cell {spec.describe()} failed on Ray {opts.retries + 1} times "
                                    f"({type(err).__name__}); see the Ray logs, then rerun to resume") from None

        yield from run_scheduled(runner, specs, lambda spec: task.remote(worker_options, spec, opts.cpus_per_cell),
                                 lambda refs: ray.wait(refs, num_returns=1)[0][0], outcome)
