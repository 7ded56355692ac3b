"""The ASR floor: the attack success rate a CLEAN model gets on each attack's triggered test set.

A defense cannot be expected to push ASR below what a model that never saw the backdoor scores, and on some
settings that is far from 0: a trigger that covers part of an object makes a clean detector miss it (BadDet
ODA counts a miss as a success), a visible trigger can push a clean classifier toward the target class.  A
leaderboard ASR is only read correctly next to its floor.

For every (task, dataset, model, task config, training config, seed) of a run matrix, the script takes the
clean model (attack `none`) and each attack's backdoored model from the artifact cache (training what is
missing, exactly as `fipbench run` would, so the cells of that config then reuse them), restores each
attack's learned trigger state with its backdoored model, and scores the clean model on that attack's
triggered test set with the task's own backdoor metrics.  Nothing is selected or tuned.

    .venv/bin/python benchmarks/asr_floor.py configs/detection_attacks.yaml [--seeds 0 1] [--cache DIR]

Writes results/asr_floor_<config name>.md and .json and prints the table: per attack and seed, the clean
model's ASR and RA (the floor) next to the backdoored model's ASR.  `fipbench leaderboard` reads the .json files
of its results folder and shows each row's floor beside its ASR (matched by the backdoored model's artifact key,
so a floor measured for another training or task config is never shown).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import _common
from _common import REPO

from benchmark.errors import Diverged, FipbenchError
from benchmark.spec import Component, RunSpec, load_matrix

NONE = Component("none", "none", {})


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a run matrix (YAML), e.g. configs/detection_attacks.yaml")
    p.add_argument("--seeds", type=int, nargs="*", help="only these seeds (default: the matrix's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", type=Path)
    p.add_argument("--cache", type=Path, default=REPO / ".fipbench" / "artifacts")
    p.add_argument("--out", type=Path, default=REPO / "results")
    return p.parse_args(argv)


def groups(specs: list[RunSpec], seeds: list[int] | None) -> list[tuple[RunSpec, list[RunSpec]]]:
    """(the clean model's spec, one spec per attack label) for every model setting and seed of the matrix."""
    out: dict[str, tuple[RunSpec, dict[str, RunSpec]]] = {}
    for s in specs:
        if seeds is not None and s.seed not in seeds:
            continue
        clean = dataclasses.replace(s, attack=NONE, defense=NONE)
        entry = out.setdefault(clean.artifact_key(), (clean, {}))  # the clean model's address names the setting
        if s.attack.name != "none":
            entry[1].setdefault(s.attack.label, dataclasses.replace(s, defense=NONE))
    return [(clean, list(attacks.values())) for clean, attacks in out.values() if attacks]  # no attack: no floor


def floors(args: argparse.Namespace) -> list[dict]:
    from benchmark.runner import Runner

    matrix = load_matrix(args.config)
    # Records go to a scratch store: this script writes no leaderboard cells, it only shares the artifact cache.
    runner = Runner(args.out / "asr_floor", args.cache, data_root=args.data_root, device=args.device,
                    sharpness=False)
    rows = []
    for clean_spec, attack_specs in groups(list(matrix.cells), args.seeds):
        task = runner.task(clean_spec)
        clean_model, clean_manifest = runner.artifact(clean_spec, task, runner.attack(clean_spec))
        metric = task.metric_name
        for spec in attack_specs:
            # `artifact` (the backdoored model's address, as in its records) is how the leaderboard finds the floor
            row = {"task": spec.task, "dataset": spec.dataset, "model": spec.model, "attack": spec.attack.label,
                   "seed": spec.seed, "artifact": spec.artifact_key(), "metric": metric,
                   "clean_model": clean_manifest["metrics_before"][metric]}
            attack = runner.attack(spec)
            attack.check_task(task)
            try:
                # Loading (or training) the backdoored model restores the attack's learned trigger state.
                _, manifest = runner.artifact(spec, task, attack)
            except Diverged as err:
                rows.append({**row, "failed": str(err)})
                continue
            floor = runner.evaluate(task, attack, clean_model)
            before = manifest["metrics_before"]
            rows.append({**row, "floor_asr": floor.get("asr"), "floor_ra": floor.get("ra"),
                         "backdoored": before[metric], "asr": before.get("asr")})
    return rows


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _command(args: argparse.Namespace) -> str:
    """The arguments that decide the figures (not where the cache and output live)."""
    seeds = "" if args.seeds is None else " --seeds " + " ".join(map(str, args.seeds))
    return f"{args.config}{seeds}"


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"# ASR floor: a clean model on each attack's triggered test set ({Path(args.config).name})", "",
             f"Produced by `python benchmarks/asr_floor.py {_command(args)}`; % (the clean metric "
             "in the task's unit: top-1 %, mAP@0.5 %, BLEU). A defense's ASR is read against the floor: a "
             "clean model scores it without any backdoor. The clean and backdoored columns are the models this run "
             "used (from the cache, or trained by it), which can differ from the committed records' by the "
             "cross-host / thread-count drift (README).", "",
             "| task | dataset | model | attack | seed | clean model | floor ASR (clean model) | floor RA | "
             "backdoored | backdoored ASR |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        head = f"| {r['task']} | {r['dataset']} | {r['model']} | {r['attack']} | {r['seed']} | {_pct(r['clean_model'])}"
        if "failed" in r:
            lines.append(f"{head} | backdoored model failed to train: {r['failed']} ||||")
        else:
            lines.append(f"{head} | {_pct(r['floor_asr'])} | {_pct(r['floor_ra'])} | {_pct(r['backdoored'])} | "
                         f"{_pct(r['asr'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        rows = floors(args)
    except FipbenchError as err:
        print(f"asr_floor: error: {err}", file=sys.stderr)
        return 2
    _common.write(args, f"asr_floor_{Path(args.config).stem}", markdown(rows, args), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
