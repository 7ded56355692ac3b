"""Executors: where the cells of a run execute.  The driver (`Runner.run`) alone writes records; an executor
only turns pending cells into records, in any order, and yields each as it finishes.

    local      one after another in this process (the default)
    processes  in a pool of worker processes on this machine, `cpus_per_cell` threads each
    ray        as Ray tasks on a Ray cluster (`pip install -e '.[ray]'`), see benchmark/executors/ray.py

Cells of one attack artifact share its backdoored model: an executor that runs cells concurrently lets the
first cell of an artifact finish (and cache the model) before it starts the others (`run_scheduled`).
A cell computes the same numbers wherever it runs, given the same torch thread count (`cpus_per_cell` on a
worker, `--threads` in process).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from benchmark._schema import Record
    from benchmark.runner import Runner
    from benchmark.spec import RunSpec


@dataclasses.dataclass(frozen=True)
class ExecutorOptions:
    address: str = "auto"  # Ray: cluster address ("auto": the running cluster; "local": a private one)
    cpus_per_cell: int = 1  # CPUs a cell reserves; also its torch intra-op threads
    gpus_per_cell: float = 0.0  # GPUs a cell reserves (Ray; fractional shares allowed)
    retries: int = 2  # times a cell whose worker died is run again (Ray)
    workers: int | None = None  # processes: pool size (default: CPU cores // cpus_per_cell)


class Executor(Protocol):
    def __init__(self, options: ExecutorOptions): ...

    def execute(self, runner: Runner, specs: Sequence[RunSpec]) -> Iterator[tuple[RunSpec, Record]]: ...


def by_artifact(specs: Sequence[RunSpec]) -> dict[str, list[RunSpec]]:
    """Pending cells grouped by attack-artifact key, in matrix order (the first of each group trains it)."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.artifact_key(), []).append(spec)
    return groups


_WORKER_RUNNERS: dict[str, Any] = {}  # per worker process: Runner by options, so a worker's cells reuse data


def run_cell_on_worker(options: dict[str, Any], spec: RunSpec, threads: int) -> Record:
    """One cell's record, computed on a worker process (which writes nothing but the attack artifact)."""
    import torch

    from benchmark.runner import Runner

    torch.set_num_threads(threads)
    key = repr(sorted(options.items()))
    if key not in _WORKER_RUNNERS:
        _WORKER_RUNNERS[key] = Runner(log=lambda msg: None, **options)
    return _WORKER_RUNNERS[key].run_cell(spec)


def run_scheduled(runner: Runner, specs: Sequence[RunSpec], submit: Callable[[RunSpec], Hashable],
                  wait_one: Callable[[list[Hashable]], Hashable],
                  outcome: Callable[[Hashable, RunSpec], Record]) -> Iterator[tuple[RunSpec, Record]]:
    """Run `specs` concurrently through `submit` (-> a handle), yielding each (spec, record) as `wait_one`
    reports a handle finished and `outcome` turns it into a record (or raises).

    The first cell of each attack artifact starts at once; its siblings once it has finished (the artifact is
    then cached).  After an error no new cell starts; the cells already running finish and are yielded (their
    records are kept), then the first error is raised."""
    waiting = by_artifact(specs)
    running: dict[Hashable, RunSpec] = {}
    error: BaseException | None = None
    done = 0

    def start(spec: RunSpec) -> None:
        running[submit(spec)] = spec
        runner.log(f"          queued  {spec.describe()}")

    for key, group in waiting.items():
        batch = group if runner.cache.has(key) else group[:1]
        for spec in batch:
            start(spec)
        waiting[key] = group[len(batch):]
    while running:
        handle = wait_one(list(running))
        spec = running.pop(handle)
        try:
            record = outcome(handle, spec)
        except Exception as err:
            error = error or err
            waiting.clear()
            continue
        done += 1
        runner.log(f"[{done}/{len(specs)}] finished {spec.describe()}")
        yield spec, record
        for sibling in waiting.pop(spec.artifact_key(), []):  # none after an error: `waiting` was cleared
            start(sibling)
    if error is not None:
        raise error
