"""The default executor: cells one after another in this process, in matrix order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from benchmark.executors import ExecutorOptions
from benchmark.registries import EXECUTORS


@EXECUTORS.register("local")
class LocalExecutor:
    def __init__(self, options: ExecutorOptions = ExecutorOptions()):
        self.options = options

    def execute(self, runner, specs: Sequence) -> Iterator[tuple]:
        for i, spec in enumerate(specs, 1):
            runner.log(f"[{i}/{len(specs)}] running {spec.describe()}")
            yield spec, runner.run_cell(spec)
