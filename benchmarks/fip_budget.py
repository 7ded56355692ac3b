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
import sys

import _common  # a sibling file (the scripts run as files); it puts the repository on sys.path
from benchmark.spec import RunSpec

# (label, fit overrides) applied to both FT and FIP; the first is fipbench's default (TuningConfig.fit).
BUDGETS: list[tuple[str, dict]] = [
    ("default: lr 0.005 constant, 300 steps", {}),
    ("lr 0.01 cosine, 600 steps", {"lr": 0.01, "schedule": "cosine", "steps": 600}),
    ("lr 0.02 cosine, 600 steps", {"lr": 0.02, "schedule": "cosine", "steps": 600}),
]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_model_args(p)
    p.add_argument("--attacks", nargs="*", default=["badnets", "blend"])
    p.add_argument("--defenses", nargs="*", default=["finetune", "fip"])
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    return p.parse_args(argv)


def cells(args: argparse.Namespace) -> list[tuple[str, RunSpec]]:
    out = []
    for seed in args.seeds:
        for attack in args.attacks:
            for label, fit in BUDGETS:
                for defense in args.defenses:
                    out.append((label, _common.spec(args, attack, defense, {"fit": fit} if fit else {}, seed)))
    return out


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    seeds = ", ".join(map(str, args.seeds))
    lines = [f"# FIP vs vanilla FT across optimisation budgets: {args.dataset} / {args.model} (seeds {seeds})", "",
             "Produced by `python benchmarks/fip_budget.py " + " ".join(sys.argv[1:]) + "`. SGD, momentum 0.95, no "
             "weight decay, batches of 64 from the clean holdout in every row; FIP with its default η_F = 0.5, "
             "η_r = 1, trace term every 5 steps. Clean accuracy and ASR on the test split, which nothing here "
             "tunes on.",
             "", "| seed | attack | budget | defense | clean acc % | ASR % | DER % | wall s |",
             "|---:|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["acc"] is None:  # a failed cell (its training diverged): the reason instead of figures
            lines.append(f"| {r['seed']} | {r['attack']} | {r['budget']} | {r['defense']} | failed: {r['reason']} |||")
            continue
        lines.append(f"| {r['seed']} | {r['attack']} | {r['budget']} | {r['defense']} | {100 * r['acc']:.1f} | "
                     f"{100 * r['asr']:.1f} | {100 * r['der']:.1f} | {r['seconds']:.0f} |")
    befores = {(r["seed"], r["attack"], r["acc_before"], r["asr_before"]) for r in rows if r["acc"] is not None}
    lines += [""] + [f"Backdoored model ({a}, seed {seed}): clean acc {100 * acc:.1f} %, ASR {100 * asr:.1f} %."
                     for seed, a, acc, asr in sorted(befores)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    labelled = cells(args)
    # Finished cells are reused (no force): the script resumes.
    records = _common.run(args, lambda: [spec for _, spec in labelled], "fip_budget", force=False)
    if records is None:
        return 2
    rows = []
    for (label, spec), rec in zip(labelled, records):
        if rec["status"] != "ok":
            rows.append({"seed": spec.seed, "attack": spec.attack.label, "budget": label,
                         "defense": spec.defense.label, "acc": None, "reason": rec["reason"]})
            continue
        m = rec["metrics"]
        rows.append({"seed": spec.seed, "attack": spec.attack.label, "budget": label, "defense": spec.defense.label,
                     "fit": rec["config"]["defense"]["config"]["fit"], "acc": m["clean"], "asr": m["asr"],
                     "der": m["der"], "seconds": rec["timings"]["defense_seconds"],
                     "acc_before": m["clean_before"], "asr_before": m["asr_before"]})
    _common.write(args, "fip_budget", markdown(rows, args), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
