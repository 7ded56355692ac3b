"""Per-step wall time and tuned-parameter count of FIP, Fast FIP and vanilla fine-tuning, one process, one
machine, same model, same holdout.  Prints a Markdown table; not a test.

    .venv/bin/python benchmarks/fip_step_time.py [--dataset mnist5k] [--models small_cnn preact_resnet18] [--steps 20]

Each defense runs `--steps` optimisation steps on the dataset's defense holdout (trace term every step, so that the
per-step figure is the cost of FIP's full objective; with the default trace_every=5 it is amortised).
"""

from __future__ import annotations

import argparse
import copy
import os

import torch

from benchmark.registries import DEFENSES, TASKS
from benchmark.rng import generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--models", nargs="+", default=["small_cnn", "preact_resnet18"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    os.environ.setdefault("FIPBENCH_PROGRESS", "0")

    task_cls = TASKS.get("image_classification")
    task = task_cls(args.dataset, task_cls.Config(holdout_fraction=0.05), device=args.device)
    holdout = task.splits().holdout
    print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.dataset} holdout {len(holdout)}, batch {args.batch_size}, {args.steps} steps\n")
    print("| model | defense | tuned params | % of all | s/step | vs FIP |")
    print("|---|---|---:|---:|---:|---:|")
    for arch in args.models:
        base = task.build_model(arch, generator(0, "init"))
        total = sum(p.numel() for p in base.parameters())
        rows = {}
        for name in ("finetune", "fip", "fast_fip"):
            cls = DEFENSES.get(name)
            overrides = {"fit": {"steps": args.steps, "batch_size": args.batch_size}}
            if name != "finetune":
                overrides["trace_every"] = 1
            defense = cls(cls.Config.from_dict(overrides))
            defense.purify(copy.deepcopy(base), holdout, task, rng=generator(0, name))
            rows[name] = (defense.report["tuned_params"], defense.report["fit_seconds"] / args.steps)
        for name, (tuned, per_step) in rows.items():
            print(f"| {arch} | {name} | {tuned:,} | {100 * tuned / total:.3f} | {per_step:.4f} | "
                  f"{rows['fip'][1] / per_step:.2f}x |")


if __name__ == "__main__":
    main()
