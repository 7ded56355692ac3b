"""What happens along a purification run: clean accuracy and ASR on the test split every few steps, next to what
the defender can see (the task loss and accuracy on the clean holdout it trains on), and the Fisher trace on
that holdout and on clean test images.

fipbench reports a defense's last iterate and selects nothing on test data.  The FIP authors' released script
instead evaluates the test split every 500 of its 2,000 steps and saves every checkpoint (defenses/fip.py).  On
fipbench's models FIP's trace steps kick the model (clean accuracy falls, then recovers), so the last iterate and
the best point of the run can differ a lot.  This script measures that gap: whether a run passes through a
state that meets the issue's target (ASR <= 5 % within 3 points of the backdoored model's clean accuracy) that
its last iterate misses, and whether anything the defender can see (holdout figures) would find it.  It is a
diagnostic: the test figures it prints never feed back into the run, and nothing here changes a default.

    .venv/bin/python benchmarks/fip_trajectory.py --threads 1 --seeds 0 &   # one process per core: ~15 min
    .venv/bin/python benchmarks/fip_trajectory.py --threads 1 --seeds 1       # each, plus training the models
    .venv/bin/python benchmarks/fip_trajectory.py --seeds 0 1                 # the tables, from the stored runs

The run is the one `fipbench run` makes for the same cell (same model, holdout, generators; the observer only
evaluates, in eval mode, between steps): on the same backdoored model its last point is the cell's record.
Writes results/<name>.{md,json,png} (default name fip_trajectory); each run is kept under results/<name>/runs/
(so the script resumes, and processes running other seeds can share the directory, as above); backdoored
models are cached under --cache as for every cell.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import _common  # a sibling file (the scripts run as files); it puts the repository on sys.path
import torch
from benchmark._io import atomic_write_json
from benchmark.config import stable_hash
from benchmark.errors import FipbenchError
from benchmark.rng import generator
from benchmark.runner import Runner
from defenses.fisher import differentiable, fisher_trace
from tasks.base import Hook, Sample, Task

ASR_BOUND, DROP_BOUND = 0.05, 0.03  # issue 2's FIP target
POINT_VERSION = 3  # what a stored point holds; part of a stored run's key


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_model_args(p)
    p.add_argument("--attacks", nargs="*", default=["badnets", "blend"])
    p.add_argument("--defenses", nargs="*", default=["fip", "finetune", "fast_fip"])
    p.add_argument("--config", default="{}", help="defense config overrides as JSON, applied to every defense")
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--every", type=int, default=10, help="evaluate every N steps")
    p.add_argument("--fisher-batch", type=int, default=128, help="samples for Tr(F), holdout and test (0: none)")
    p.add_argument("--name", default="fip_trajectory", help="results/<name>.{md,json,png}")
    return p.parse_args(argv)


class Observer(Hook):
    """Scores the model at step 0 and every `every` steps (and the last); restores train mode afterwards."""

    def __init__(self, every: int, score):
        self.every, self.score, self.points = every, score, []

    def on_fit_start(self, model, task) -> None:
        self._score(model, 0)

    def on_step_end(self, model, step: int) -> None:
        if step % self.every == 0 or step == self.total_steps:
            self._score(model, step)

    def _score(self, model, step: int) -> None:
        was_training = model.training
        self.points.append(self.score(model, step))
        model.train(was_training)


def scorer(runner: Runner, task: Task, attack, args: argparse.Namespace):
    holdout, test = task.splits().holdout, task.splits().test
    # Tr(F) of the true Fisher (labels drawn from the model, as FIP's T; the empirical one mostly follows the
    # loss).  On the holdout, which a tuning defense fits (FT drives it towards 0 there), and on clean test images,
    # where no defense trained.
    fixed = {"holdout": [holdout[i] for i in range(min(args.fisher_batch, len(holdout)))],
             "test": [test[i] for i in range(min(args.fisher_batch, len(test)))]}
    holdout_batch = task.to_device(task.collate(list(holdout)))  # the whole holdout, for its loss

    def score(model: torch.nn.Module, step: int) -> dict:
        with torch.no_grad():
            metrics = runner.evaluate(task, attack, model)
            model.eval()
            hold_loss = float(task.loss(model, holdout_batch))
        hold_acc = task.metrics(model, holdout)[task.metric_name]
        point = {"step": step, "acc": metrics[task.metric_name], "asr": metrics.get("asr"),
                 "holdout_loss": hold_loss, "holdout_acc": hold_acc}
        # Every floating-point weight, frozen or not, so that FT, FIP and Fast FIP compare (Fast FIP's shifts δ
        # aside: its layers' `original` weights carry the same gradient as the plain weights).
        params = [p for n, p in model.named_parameters() if p.is_floating_point() and not n.endswith(".delta")]
        with differentiable(params):
            for split, samples in fixed.items():
                point[f"fisher_trace_{split}"] = model_fisher_trace(model, samples, task, params) if samples else None
        return point

    return score


def model_fisher_trace(model: torch.nn.Module, samples: list[Sample], task: Task, params: list) -> float:
    """Tr of the true Fisher over `samples`: one label per sample drawn from the model (the same uniform stream
    at every call), then the per-sample squared gradient norms."""
    model.eval()
    batch = task.to_device(task.collate(samples))
    drawn = task.sample_model_labels(model, batch, generator(0, "trajectory-fisher-labels"))["y"].tolist()
    return fisher_trace(model, [dataclasses.replace(s, y=y) for s, y in zip(samples, drawn)], task, params)


def trajectory(runner: Runner, spec, args: argparse.Namespace) -> dict:
    task, attack = runner.task(spec), runner.attack(spec)
    model, manifest = runner.artifact(spec, task, attack)
    defense = runner.defense(spec)
    observer = Observer(args.every, scorer(runner, task, attack, args))
    plain_fit = task.fit

    def observed_fit(*a, hooks=(), **kw):  # the defense's own hooks first, then the observer
        return plain_fit(*a, hooks=[*hooks, observer], **kw)

    task.fit = observed_fit  # an instance attribute: this task object only, removed below
    start = time.perf_counter()
    try:
        purified = runner.purify(spec, defense, task, copy.deepcopy(model))
    finally:
        del task.fit
    seconds = time.perf_counter() - start
    final = runner.evaluate(task, attack, purified)
    before = manifest["metrics_before"]
    return {"seed": spec.seed, "attack": spec.attack.label, "defense": spec.defense.label,
            "config": spec.resolved()["defense"]["config"], "acc_before": before[task.metric_name],
            "asr_before": before.get("asr"), "acc": final[task.metric_name], "asr": final.get("asr"),
            "seconds": seconds, "points": observer.points}


def meets(point: dict, acc_before: float) -> bool:
    return point["asr"] <= ASR_BOUND and acc_before - point["acc"] <= DROP_BOUND


def summary(run: dict) -> dict:
    """The last point, the best target-meeting point (highest acc), the lowest-ASR point, and the point a
    defender would pick by holdout loss alone (the lowest), as (step, acc, asr)."""
    pts = run["points"][1:]  # step 0 is the backdoored model
    ok = [p for p in pts if meets(p, run["acc_before"])]

    def brief(p: dict | None):
        return None if p is None else (p["step"], p["acc"], p["asr"])
    return {"last": brief(pts[-1]), "met_at": [p["step"] for p in ok],
            "best_met": brief(max(ok, key=lambda p: p["acc"], default=None)),
            "min_asr": brief(min(pts, key=lambda p: (p["asr"], -p["acc"]))),
            "holdout_pick": brief(min(pts, key=lambda p: p["holdout_loss"]))}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _cell(b: tuple | None) -> str:
    return "–" if b is None else f"{_pct(b[1])} / {_pct(b[2])} @ {b[0]}"


def _trace(point: dict) -> str:
    return "–" if point.get("fisher_trace_test") is None else f"{point['fisher_trace_test']:.0f}"


def markdown(runs: list[dict], args: argparse.Namespace) -> str:
    lines = [f"# Purification trajectories: {args.dataset} / {args.model}", "",
             "Produced by `python benchmarks/fip_trajectory.py " + " ".join(sys.argv[1:]) + "`. Clean accuracy % / "
             f"ASR % on the test split @ step, evaluated every {args.every} steps of each defense's default budget "
             "(plus overrides " + args.config + "). Target: ASR ≤ 5 % within 3 points of the backdoored model. "
             "'holdout pick': the point with the lowest task loss on the clean holdout (what a defender could "
             "select on); 'steps meeting': how many evaluated points meet the target; Tr F: the Fisher trace (labels "
             f"drawn from the model) over {args.fisher_batch} clean test images, at the start → at the last point.",
             "",
             "| seed | attack | defense | backdoored | last iterate | best point meeting the target | steps meeting "
             "| lowest ASR | holdout pick | Tr F (test) |", "|---:|---|---|---|---|---|---:|---|---|---|"]
    for r in runs:
        s = summary(r)
        lines.append(f"| {r['seed']} | {r['attack']} | {r['defense']} | {_pct(r['acc_before'])} / "
                     f"{_pct(r['asr_before'])} | {_cell(s['last'])} | {_cell(s['best_met'])} | "
                     f"{len(s['met_at'])} of {len(r['points']) - 1} | {_cell(s['min_asr'])} | "
                     f"{_cell(s['holdout_pick'])} | {_trace(r['points'][0])} → {_trace(r['points'][-1])} |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(7, 2.2 * len(runs)), squeeze=False, sharex=True)
    for ax, r in zip(axes[:, 0], runs):
        steps = [p["step"] for p in r["points"]]
        ax.plot(steps, [100 * p["acc"] for p in r["points"]], label="test acc %")
        ax.plot(steps, [100 * p["asr"] for p in r["points"]], label="test ASR %")
        ax.plot(steps, [100 * p["holdout_acc"] for p in r["points"]], ":", label="holdout acc %")
        ax.axhline(100 * ASR_BOUND, color="grey", lw=0.5)
        ax.set_title(f"seed {r['seed']} {r['attack']} / {r['defense']}", fontsize=8)
        ax.set_ylim(-2, 102)
    axes[0, 0].legend(fontsize=7, loc="center right")
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        overrides = json.loads(args.config)
        runner = Runner(args.out / args.name, args.cache, data_root=args.data_root, device=args.device,
                        sharpness=False)
        runs = []
        for seed in args.seeds:
            for attack in args.attacks:
                for defense in args.defenses:
                    spec = _common.spec(args, attack, defense, overrides, seed)
                    # One file per run: an interrupted script resumes, and processes running other seeds
                    # (e.g. one per core) fill the same directory.
                    key = stable_hash([spec.resolved(), args.every, args.fisher_batch, POINT_VERSION])
                    path = args.out / args.name / "runs" / f"{seed}-{attack}-{defense}-{key}.json"
                    if not path.exists():
                        atomic_write_json(path, trajectory(runner, spec, args))
                    runs.append(json.loads(path.read_text()))
                    s = summary(runs[-1])
                    print(f"seed {seed} {attack} / {defense}: last {s['last']}, meets at {s['met_at']}", flush=True)
    except (FipbenchError, json.JSONDecodeError) as err:
        print(f"{args.name}: error: {err}", file=sys.stderr)
        return 2
    # The last point is the model the defense returns (Fast FIP's folded back up to float rounding): a gap means
    # the observer disturbed the run.
    off = [r for r in runs if abs(r["points"][-1]["acc"] - r["acc"]) > 0.002 or not math.isfinite(r["acc"])]
    if off:
        print(f"{args.name}: warning: last point differs from the returned model in {len(off)} runs", file=sys.stderr)
    _common.write(args, args.name, markdown(runs, args), runs)
    plot(runs, args.out / f"{args.name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
