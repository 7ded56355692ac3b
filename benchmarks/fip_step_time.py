"""Per-step wall time and tuned-parameter count of FIP, Fast FIP and vanilla fine-tuning, one process, one
machine, same model, same holdout.  Prints a Markdown table; not a test.

    .venv/bin/python benchmarks/fip_step_time.py [--dataset mnist5k] [--models small_cnn preact_resnet18] [--steps 20]
    .venv/bin/python benchmarks/fip_step_time.py --dataset cifar10 --data-root ~/data --device cuda --batch-size 128

Each defense runs `--steps` optimisation steps on the dataset's defense holdout (trace term every step, so that the
per-step figure is the cost of FIP's full objective; `--trace-every 5`, the defenses' default, amortises it).
`fast_fip factorized` is Fast FIP with `factorized: true` (see defenses/_spectral.py).  On a GPU each
defense first runs `--warmup` untimed steps (cuDNN's algorithm search, kernel compilation); `Task.fit` reads the
loss every step, which synchronises, so the wall time is the GPU's.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import torch

from benchmark.registries import DEFENSES, TASKS
from benchmark.rng import generator


# row label -> (registered defense, config beyond the step budget)
ROWS = {"finetune": ("finetune", {}), "fip": ("fip", {}), "fast_fip": ("fast_fip", {}),
        "fast_fip factorized": ("fast_fip", {"factorized": True})}


def _defense(row: str, steps: int, batch_size: int, trace_every: int):
    """Row `row`'s defense at `steps` steps of `batch_size`, FIP's trace term every `trace_every` steps."""
    name, extra = ROWS[row]
    cls = DEFENSES.get(name)
    if name != "finetune":
        extra = {**extra, "trace_every": trace_every}
    return cls(cls.Config.from_dict({"fit": {"steps": steps, "batch_size": batch_size}, **extra}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--models", nargs="+", default=["small_cnn", "preact_resnet18"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-root", type=Path, default=None, help="root of a real dataset's local files")
    parser.add_argument("--trace-every", type=int, default=1, help="FIP's trace term every k steps (default: 1, "
                        "the full objective's cost; the defenses' default is 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per defense first (GPU only)")
    args = parser.parse_args()
    os.environ.setdefault("FIPBENCH_PROGRESS", "0")

    task_cls = TASKS.get("image_classification")
    task = task_cls(args.dataset, task_cls.Config(holdout_fraction=0.05), data_root=args.data_root,
                    device=args.device)
    holdout = task.splits().holdout
    name = torch.cuda.get_device_name(task.device) if task.device.type == "cuda" else "cpu"
    print(f"device: {args.device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.dataset} holdout {len(holdout)}, batch {args.batch_size}, {args.steps} steps, trace term every "
          f"{args.trace_every}\n")
    print("| model | defense | tuned params | % of all | s/step | vs FIP |")
    print("|---|---|---:|---:|---:|---:|")
    for arch in args.models:
        base = task.build_model(arch, generator(0, "init"))
        total = sum(p.numel() for p in base.parameters())
        rows = {}
        for name, (registered, _) in ROWS.items():  # rng by registered name: both Fast FIP rows see the same batches
            if args.warmup and task.device.type == "cuda":
                warm = _defense(name, args.warmup, args.batch_size, args.trace_every)
                warm.purify(copy.deepcopy(base), holdout, task, rng=generator(0, registered))
            defense = _defense(name, args.steps, args.batch_size, args.trace_every)
            defense.purify(copy.deepcopy(base), holdout, task, rng=generator(0, registered))
            rows[name] = (defense.report["tuned_params"], defense.report["fit_seconds"] / args.steps)
        for name, (tuned, per_step) in rows.items():
            print(f"| {arch} | {name} | {tuned:,} | {100 * tuned / total:.3f} | {per_step:.4f} | "
                  f"{rows['fip'][1] / per_step:.2f}x |")


if __name__ == "__main__":
    main()
