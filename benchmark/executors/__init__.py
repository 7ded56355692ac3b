"""Executors: where the cells of a run execute.  The driver (`Runner.run`) alone writes records; an executor
only turns pending cells into records, in any order, and yields each as it finishes.

    local   one after another in this process (the default)
    ray     as Ray tasks on a Ray cluster (`pip install -e '.[ray]'`), see benchmark/executors/ray.py

Cells of one attack artifact share its backdoored model: an executor that runs cells concurrently must let the
first cell of an artifact finish (and cache the model) before it starts the others (`by_artifact` helps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

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


class Executor(Protocol):
    def __init__(self, options: ExecutorOptions): ...

    def execute(self, runner: Runner, specs: Sequence[RunSpec]) -> Iterator[tuple[RunSpec, Record]]: ...


def by_artifact(specs: Sequence[RunSpec]) -> dict[str, list[RunSpec]]:
    """Pending cells grouped by attack-artifact key, in matrix order (the first of each group trains it)."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.artifact_key(), []).append(spec)
    return groups
