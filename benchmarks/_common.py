"""What the benchmark scripts share: the backdoored-model arguments, the cell spec, running the cells through the
Runner (one-line error on bad input) and writing the Markdown + JSON results atomically."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the scripts run as files (python benchmarks/x.py), not as modules
    sys.path.insert(0, str(REPO))

from benchmark._io import atomic_write_bytes  # noqa: E402
from benchmark.errors import FipbenchError  # noqa: E402
from benchmark.spec import Component, RunSpec  # noqa: E402


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Where the backdoored model comes from and where the cells run; defaults: the quick preset's model."""
    p.add_argument("--task", default="image_classification")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--holdout-fraction", type=float, default=0.05)
    p.add_argument("--train", default='{"epochs": 10, "batch_size": 64, "lr": 0.05}',
                   help="backdoor-training config as JSON (default: the quick preset's, so its artifacts are reused)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--data-root", type=Path)
    p.add_argument("--cache", type=Path, default=REPO / ".fipbench" / "artifacts")
    p.add_argument("--out", type=Path, default=REPO / "results")


def spec(args: argparse.Namespace, attack: str, defense: str, config: dict[str, Any], seed: int) -> RunSpec:
    return RunSpec(task=args.task, dataset=args.dataset, model=args.model,
                   attack=Component(attack, attack, {}), defense=Component(defense, defense, config), seed=seed,
                   task_config={"holdout_fraction": args.holdout_fraction}, train=json.loads(args.train))


def run(args: argparse.Namespace, plan: Callable[[], Sequence[RunSpec]], name: str, *,
        force: bool) -> list[dict] | None:
    """The records of the cells `plan()` returns (written under results/<name>/, away from the leaderboard), or
    None after printing a one-line error (an unknown name raises while planning or running).  Sharpness is off:
    it is not part of what these scripts measure."""
    import torch

    from benchmark.runner import Runner

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        runner = Runner(args.out / name, args.cache, data_root=args.data_root, device=args.device, force=force,
                        sharpness=False)
        return runner.run(plan())
    except FipbenchError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return None


def write(args: argparse.Namespace, name: str, text: str, rows: list[dict]) -> None:
    """Prints the table and writes results/<name>.md and results/<name>.json (the rows and the arguments)."""
    print(text)
    atomic_write_bytes(args.out / f"{name}.md", text.encode())
    atomic_write_bytes(args.out / f"{name}.json", json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1).encode())
