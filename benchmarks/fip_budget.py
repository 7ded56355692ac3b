"""FIP's sensitivity to its optimisation budget, against vanilla fine-tuning at the same budgets.

Issue 2 asks FIP to bring ASR to ≤ 5 % within 3 points of clean accuracy; at fipbench's default budget (the FIP
authors' optimiser: SGD lr 0.005, momentum 0.95, constant lr; 300 steps of 64 instead of their 2,000 of 128) it
does not.  This script measures how FIP and FT respond to the budget (learning rate, schedule, steps) on the same
backdoored models, so that the default can be judged and a user can see the trade-off.  It is a measurement, not a
tuning loop: nothing here changes fipbench's defaults, and choosing a default from these test-set figures would be
the test-set selection fipbench refuses elsewhere (see defenses/fip.py).

    .venv/bin/python benchmarks/fip_budget.py --threads 2 --seeds 0 1   # ~30 min on 2 CPU cores

Writes results/fip_budget.{md,json}; the cells' records go to results/fip_budget/ (away from the leaderboard).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmark._io import atomic_write_bytes  # noqa: E402
from benchmark.errors import FipbenchError  # noqa: E402
from benchmark.spec import Component, RunSpec  # noqa: E402

# (label, fit overrides) applied to both FT and FIP; the first is fipbench's default (TuningConfig.fit).
BUDGETS: list[tuple[str, dict]] = [
    ("default: lr 0.005 constant, 300 steps", {}),
    ("lr 0.01 cosine, 600 steps", {"lr": 0.01, "schedule": "cosine", "steps": 600}),
    ("lr 0.02 cosine, 600 steps", {"lr": 0.02, "schedule": "cosine", "steps": 600}),
]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--attacks", nargs="*", default=["badnets", "blend"])
    p.add_argument("--defenses", nargs="*", default=["finetune", "fip"])
    p.add_argument("--holdout-fraction", type=float, default=0.05)
    p.add_argument("--train", default='{"epochs": 10, "batch_size": 64, "lr": 0.05}',
                   help="backdoor-training config as JSON (default: the quick preset's, so its artifacts are reused)")
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--data-root", type=Path)
    p.add_argument("--cache", type=Path, default=REPO / ".fipbench" / "artifacts")
    p.add_argument("--out", type=Path, default=REPO / "results")
    return p.parse_args(argv)


def cells(args: argparse.Namespace) -> list[tuple[str, RunSpec]]:
    out = []
    for seed in args.seeds:
        for attack in args.attacks:
            for label, fit in BUDGETS:
                for defense in args.defenses:
                    config = {"fit": fit} if fit else {}
                    out.append((label, RunSpec(
                        task="image_classification", dataset=args.dataset, model=args.model,
                        attack=Component(attack, attack, {}), defense=Component(defense, defense, config), seed=seed,
                        task_config={"holdout_fraction": args.holdout_fraction}, train=json.loads(args.train))))
    return out


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    seeds = ", ".join(map(str, args.seeds))
    lines = [f"# FIP vs vanilla FT across optimisation budgets: {args.dataset} / {args.model} (seeds {seeds})", "",
             "Produced by `python benchmarks/fip_budget.py " + " ".join(sys.argv[1:]) + "`. SGD, momentum 0.95, no "
             "weight decay, batches of 64 from the clean holdout in every row; FIP with its default η_F = 0.5, "
             "η_r = 1, trace term every 5 steps. Clean accuracy and ASR on the test split, which nothing here tunes on.",
             "", "| seed | attack | budget | defense | clean acc % | ASR % | DER % | wall s |",
             "|---:|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['attack']} | {r['budget']} | {r['defense']} | {100 * r['acc']:.1f} | {100 * r['asr']:.1f} | "
                     f"{100 * r['der']:.1f} | {r['seconds']:.0f} |")
    befores = {(r["seed"], r["attack"], r["acc_before"], r["asr_before"]) for r in rows}
    lines += [""] + [f"Backdoored model ({a}, seed {seed}): clean acc {100 * acc:.1f} %, ASR {100 * asr:.1f} %."
                     for seed, a, acc, asr in sorted(befores)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    from benchmark.runner import Runner

    if args.threads:
        torch.set_num_threads(args.threads)
    labelled = cells(args)
    try:
        runner = Runner(args.out / "fip_budget", args.cache, data_root=args.data_root, device=args.device,
                        sharpness=False)
        records = runner.run([spec for _, spec in labelled])  # finished cells are reused: the script resumes
    except FipbenchError as err:
        print(f"fip_budget: error: {err}", file=sys.stderr)
        return 2
    rows = []
    for (label, spec), rec in zip(labelled, records):
        m = rec["metrics"]
        rows.append({"seed": spec.seed, "attack": spec.attack.label, "budget": label, "defense": spec.defense.label,
                     "fit": rec["config"]["defense"]["config"]["fit"], "acc": m["clean"], "asr": m["asr"],
                     "der": m["der"], "seconds": rec["timings"]["defense_seconds"],
                     "acc_before": m["clean_before"], "asr_before": m["asr_before"]})
    text = markdown(rows, args)
    print(text)
    atomic_write_bytes(args.out / "fip_budget.md", text.encode())
    atomic_write_bytes(args.out / "fip_budget.json", json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                                "rows": rows}, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
