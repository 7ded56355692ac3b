"""Wall time of a preset from scratch (fresh results and artifact cache): per task group and in total, against
the target of 10 minutes for the quick preset on 2 CPU cores (issue 9).

    python benchmarks/quick_preset.py                      # the quick preset, sharpness on, as `fipbench run`
    python benchmarks/quick_preset.py --executor processes # the same cells on a worker pool (total only)
    python benchmarks/quick_preset.py --config my.yaml --target 300

Prints one line per group and the total; writes nothing under results/ (everything goes to a temp folder,
or to --keep DIR).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.errors import FipbenchError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="quick", help="preset name or YAML matrix (default: quick)")
    p.add_argument("--executor", default="local", help="local (per-group figures) or processes / ray (total only)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, i.e. all cores)")
    p.add_argument("--no-sharpness", dest="sharpness", action="store_false")
    p.add_argument("--target", type=float, default=600.0, help="seconds (default: 600, issue 9)")
    p.add_argument("--keep", type=Path, help="results and cache here instead of a deleted temp folder")
    args = p.parse_args(argv)
    try:
        return _measure(args)
    except FipbenchError as err:
        print(f"quick_preset: error: {err}", file=sys.stderr)
        return 2


def _measure(args: argparse.Namespace) -> int:
    import torch

    from benchmark import leaderboard
    from benchmark.cli import resolve_config
    from benchmark.executors import ExecutorOptions
    from benchmark.registries import EXECUTORS
    from benchmark.runner import Runner
    from benchmark.spec import load_matrix, validate

    matrix = load_matrix(resolve_config(args.config))
    validate(matrix)
    executor = EXECUTORS.get(args.executor, "--executor")(ExecutorOptions(address="local"))
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="fipbench-quick-") as tmp:
        root = args.keep or Path(tmp)
        runner = Runner(root / "results", root / "cache", sharpness=args.sharpness, log=lambda msg: None)
        groups: dict[tuple[str, str, str], list] = {}
        for spec in matrix.cells:
            groups.setdefault((spec.task, spec.dataset, spec.model), []).append(spec)
        start = time.perf_counter()
        print(f"{matrix.name}: {len(matrix.cells)} cells, {len(groups)} groups, {torch.get_num_threads()} torch "
              f"threads, sharpness {'on' if args.sharpness else 'off'}, executor {args.executor}")
        if args.executor == "local":
            for (task, dataset, model), cells in groups.items():
                t0 = time.perf_counter()
                runner.run(cells, executor)
                print(f"  {task}/{dataset}/{model}: {len(cells)} cells, {time.perf_counter() - t0:7.1f} s")
        else:
            runner.run(matrix.cells, executor)
        leaderboard.write(runner.store.all(), root / "results")
        total = time.perf_counter() - start
    verdict = "met" if total <= args.target else "NOT met"
    print(f"total: {total:.1f} s ({total / 60:.1f} min), target <= {args.target:.0f} s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
