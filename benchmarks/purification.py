"""The purification benchmark: one backdoored model, one clean holdout, one machine, one run; every defense.

For each defense: wall time of `purify`, seconds per step (where it trains), peak memory during `purify`
(benchmark/memory.py), tuned-parameter count, clean accuracy, ASR and DER.  Tuning defenses (those with a `fit`
budget: finetune, fip, fast_fip, ...) get the same number of steps (--steps) so their times compare per step;
the others run at their own paper budgets.  Prints a table, checks the issue's targets and writes
results/purification.md and results/purification.json (the cells' records go to results/purification/, away
from the leaderboard's records).

    .venv/bin/python benchmarks/purification.py                       # mnist5k / small_cnn / badnets
    .venv/bin/python benchmarks/purification.py --model preact_resnet18 --dataset cifar10 --device cuda

Not a test: it takes minutes (every defense at its real budget).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import _common  # a sibling file (the scripts run as files); it puts the repository on sys.path
from benchmark.registries import DEFENSES
from benchmark.spec import RunSpec

# (slower, faster, target factor, what the issue asks)
TARGETS = [("fip", "finetune", 2.0, "FIP ≤ 2× vanilla FT wall time per step"),
           ("fip", "fast_fip", 3.0, "Fast FIP ≥ 3× faster than FIP"),
           ("anp", "fip", 5.0, "FIP ≥ 5× faster than ANP"),
           ("i_bau", "fip", 5.0, "FIP ≥ 5× faster than I-BAU"),
           ("ft_sam", "fip", 5.0, "FIP ≥ 5× faster than FT-SAM")]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_model_args(p)
    p.add_argument("--attack", default="badnets")
    p.add_argument("--defenses", nargs="*", help="default: every registered defense")
    p.add_argument("--steps", type=int, default=300, help="step budget of every tuning defense (default 300)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def cells(args: argparse.Namespace) -> list[RunSpec]:
    out = []
    for name in args.defenses or DEFENSES.names():
        cls = DEFENSES.get(name)
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        config = {"fit": {"steps": args.steps}} if "fit" in fields else {}
        out.append(_common.spec(args, args.attack, name, config, args.seed))
    return out


def table(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        if r["status"] != "ok":
            rows.append({"defense": r["spec"]["defense"], "skipped": f"{r['status']}: {r['reason']}"})
            continue
        m, t, rep = r["metrics"], r["timings"], r["defense_report"]
        steps = rep.get("steps")
        rows.append({"defense": r["spec"]["defense"], "seconds": t["defense_seconds"], "steps": steps,
                     "s_per_step": t["defense_seconds"] / steps if steps else None,
                     "peak_mb": t["cuda_peak_mb"] if t["cuda_peak_mb"] is not None else t["max_rss_mb"],
                     "tuned_params": rep.get("tuned_params"), "acc": m["clean"], "asr": m["asr"], "der": m["der"],
                     "acc_before": m["clean_before"], "asr_before": m["asr_before"]})
    return rows


def markdown(rows: list[dict], args: argparse.Namespace, device: str) -> str:
    def f(v, spec):
        return "–" if v is None else format(v, spec)

    lines = [f"# Purification benchmark: {args.dataset} / {args.model} / {args.attack} (seed {args.seed}, {device})",
             "", f"Tuning defenses: {args.steps} steps each. Peak memory: resident set during purify (CPU) or "
             "CUDA peak. Produced by `python benchmarks/purification.py " + " ".join(sys.argv[1:]) + "`.", "",
             "| defense | wall s | steps | s/step | peak MB | tuned params | clean acc % | ASR % | DER % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['defense']} | {r['skipped']} |||||||| ")
            continue
        lines.append(f"| {r['defense']} | {r['seconds']:.1f} | {f(r['steps'], 'd')} | {f(r['s_per_step'], '.3f')} | "
                     f"{r['peak_mb']:.0f} | {f(r['tuned_params'], ',')} | {100 * r['acc']:.2f} | "
                     f"{100 * r['asr']:.2f} | {100 * r['der']:.1f} |")
    if rows and "acc_before" in rows[0]:
        lines += ["", f"Backdoored model: clean acc {100 * rows[0]['acc_before']:.2f} %, "
                      f"ASR {100 * rows[0]['asr_before']:.2f} %."]
    lines += ["", "Targets (issue 4):", ""] + [f"- {line}" for line in target_lines(rows)]
    return "\n".join(lines) + "\n"


def target_lines(rows: list[dict]) -> list[str]:
    by = {r["defense"]: r for r in rows if "skipped" not in r}
    out = []
    for slow, fast, factor, what in TARGETS:
        if slow not in by or fast not in by:
            out.append(f"{what}: not measured ({slow if slow not in by else fast} not run)")
            continue
        per_step = slow == "fip" and fast == "finetune" or slow == "fip" and fast == "fast_fip"
        key = "s_per_step" if per_step and by[slow]["s_per_step"] and by[fast]["s_per_step"] else "seconds"
        ratio = by[slow][key] / max(by[fast][key], 1e-9)
        if fast == "finetune":  # the target is an upper bound on FIP's cost
            ok = ratio <= factor
            out.append(f"{what}: FIP/FT = {ratio:.2f}× ({key}) -> {'met' if ok else 'NOT met'}")
        else:
            ok = ratio >= factor
            quality = ""
            if fast == "fip":
                better = by["fip"]["asr"] <= by[slow]["asr"] and by["fip"]["acc"] >= by[slow]["acc"]
                quality = (f"; ASR {100 * by['fip']['asr']:.1f} vs {100 * by[slow]['asr']:.1f}, acc "
                           f"{100 * by['fip']['acc']:.1f} vs {100 * by[slow]['acc']:.1f} -> FIP "
                           f"{'equal or better' if better else 'NOT equal or better'}")
                ok = ok and better
            out.append(f"{what}: {slow}/{fast} = {ratio:.2f}× ({key}){quality} -> {'met' if ok else 'NOT met'}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # force: every timing comes from this one run.
    records = _common.run(args, lambda: cells(args), "purification", force=True)
    if records is None:
        return 2
    rows = table(records)
    _common.write(args, "purification", markdown(rows, args, args.device), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
