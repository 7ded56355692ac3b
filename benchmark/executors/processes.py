"""Cells in a pool of worker processes on this machine (no cluster, no extra package).

    fipbench run quick --executor processes                   # one 1-thread worker per CPU core
    fipbench run paper --executor processes --cpus-per-cell 4  # cores // 4 workers of 4 threads

Small models use a second core poorly inside one cell (a 2-thread step of the quick preset's CNN is ~1.6x a
1-thread one), so two 1-thread cells side by side finish more work.  Workers are spawned (not forked: torch
and its thread pools are not fork-safe) and each computes a cell exactly as `fipbench run --threads N` would
in one process; the driver alone writes records.  A worker that dies breaks the pool: the cells that finished
are kept, and rerunning the command resumes the rest.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from collections.abc import Iterator, Sequence

from benchmark.errors import FipbenchError
from benchmark.executors import (
    ExecutorOptions,
    run_cell_on_worker,
    run_scheduled,
)
from benchmark.registries import EXECUTORS


@EXECUTORS.register("processes")
class ProcessExecutor:
    def __init__(self, options: ExecutorOptions = ExecutorOptions()):
        self.options = options

    def workers(self) -> int:
        return self.options.workers or max(1, (os.cpu_count() or 1) // max(1, self.options.cpus_per_cell))

    def execute(self, runner, specs: Sequence) -> Iterator[tuple]:
        if not specs:
            return
        threads = self.options.cpus_per_cell
        options = runner.worker_options()
        workers = min(self.workers(), len(specs))
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

        def outcome(future: cf.Future, spec):
            try:
                return future.result()
            except cf.process.BrokenProcessPool:
                raise FipbenchError(f"a worker process died while running {spec.describe()} (out of memory?); "
                                    f"finished cells are saved, rerun the command to resume") from None

        def wait_one(futures: list) -> cf.Future:
            done, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
            return next(f for f in futures if f in done)  # submission order among the finished: deterministic

        try:
            runner.log(f"          {workers} worker processes, {threads} thread(s) each")
            yield from run_scheduled(runner, specs, lambda spec: pool.submit(run_cell_on_worker, options, spec,
                                                                             threads), wait_one, outcome)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
