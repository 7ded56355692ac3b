"""The issues' quality targets, checked against the committed records: which attack settings and which defense
runs meet them, per seed.  It trains nothing; it reads results/records/ (the same records the leaderboard
aggregates; a cell recorded twice under one label and seed counts with its newest record, as there).

    .venv/bin/python benchmarks/targets.py [--results results] [--task image_classification]

Targets (the task issues' "what it must show"; clean metric in points: top-1 %, mAP@0.5 %, BLEU):
- attack: ASR >= `attack_asr` with the backdoored model's clean metric at most `attack_drop` points under the
  clean model trained the same way (attack `none`, same task config, training config and seed);
- FIP / Fast FIP (every run of the `fip` and `fast_fip` registry names, whatever its label): ASR <= `fip_asr`
  with a drop of at most `fip_drop` points from the backdoored model it purified;
- any other defense: ASR <= `baseline_asr` with the same drop bound as FIP.
A defense run on a backdoored model whose ASR was already under the bound is not judged ("under the bound
before the defense": CLB and BppAttack on mnist5k).
A cell recorded as failed (its training diverged, see benchmark/runner.py) fails its target: a backdoored
model that did not train fails the attack's, a defense that diverged fails the defense's; both show "failed".
A setting or defense row is "met" when every seed it was run on meets the target, "met on k of n seeds" when
some do.  Issue 2's stricter bar for BadNets and Blend on the quick preset (ASR >= 95 % within 2 points) is
not applied here.

Beside the absolute targets it sets FIP and Fast FIP against fine-tuning at the same budget: every FIP-family
run is paired with each `finetune` run on the same backdoored model (artifact key) and seed whose `fit` config is
identical (optimiser, lr, schedule, steps, batch), so the two differ only by FIP's regularisers.  Per pair: the
ASR FIP removes beyond FT and the clean points it costs beyond FT.  Writes results/targets.md and prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from statistics import median
from pathlib import Path

from _common import REPO

from benchmark._io import atomic_write_bytes
from benchmark.leaderboard import latest
from benchmark.store import ResultStore


@dataclasses.dataclass(frozen=True)
class Target:
    attack_asr: float  # % at least
    attack_drop: float  # points at most, backdoored vs clean model
    fip_asr: float  # % at most
    fip_drop: float  # points at most, purified vs backdoored model
    baseline_asr: float  # % at most


TARGETS = {  # from issues 3 (image), 5 (detection), 6 (video), 7 (point cloud), 8 (text)
    "image_classification": Target(90, 3, 5, 3, 10),
    "object_detection": Target(80, 5, 10, 5, 10),
    "video_recognition": Target(90, 3, 5, 3, 10),
    "point_cloud": Target(90, 3, 5, 3, 10),
    "language_generation": Target(90, 3, 10, 3, 10),
}
FIP_FAMILY = {"fip", "fast_fip"}


@dataclasses.dataclass(frozen=True)
class Run:
    """One seed of one cell, clean metric and ASR in points (None: the cell failed)."""
    seed: int
    clean: float | None
    asr: float | None
    verdict: bool | None  # None: nothing to judge, `note` says why
    note: str = ""


def _canon(value) -> str:
    return json.dumps(value, sort_keys=True)


def _group(r: dict) -> tuple:
    """What makes two backdoored models comparable with one clean model: task, data, model, training, seed."""
    s = r["spec"]
    return (s["task"], s["dataset"], s["model"], _canon(r["config"]["task"]), _canon(r["config"]["train"]), s["seed"])


def _pts(x: float | None) -> float | None:
    # Rates are ratios of counts stored as float32 (180/200 reads 0.89999998): rounding to 1e-4 points keeps an
    # ASR of exactly 90 % at 90, far below any difference between two counts.
    return None if x is None else round(100.0 * x, 4)


def check(records: list[dict]) -> tuple[dict, dict]:
    """(attack rows, defense rows): {(task, dataset, model, attack label[, defense label, defense name]): [Run
    per seed]}."""
    records = latest(records, ("ok", "failed"))
    clean_ref = {_group(r): _pts(r["metrics"]["clean_before"]) for r in records
                 if r["spec"]["attack"] == "none" and r["status"] == "ok"}
    attacks: dict[tuple, dict[int, Run]] = defaultdict(dict)
    defenses: dict[tuple, list[Run]] = defaultdict(list)
    for r in records:
        s, m = r["spec"], r["metrics"]
        t = TARGETS.get(s["task"])
        if t is None or s["attack"] == "none":
            continue
        key = (s["task"], s["dataset"], s["model"], s["attack_label"])
        if r["status"] == "failed":
            if r["timings"] is None:  # the backdoored model's training diverged: no defense ran
                attacks[key][s["seed"]] = Run(s["seed"], None, None, False, "failed")
            elif s["defense"] != "none":
                defenses[(*key, s["defense_label"], s["defense"])].append(Run(s["seed"], None, None, False, "failed"))
            continue
        before, asr_before = _pts(m["clean_before"]), _pts(m["asr_before"])
        ref = clean_ref.get(_group(r))
        ok = None if ref is None or asr_before is None else \
            asr_before >= t.attack_asr and ref - before <= t.attack_drop
        # the same backdoored model under every defense of this seed
        attacks[key][s["seed"]] = Run(s["seed"], before, asr_before, ok, "" if ref is not None else "no clean model")
        if s["defense"] == "none" or m["asr"] is None:
            continue
        bound = t.fip_asr if s["defense"] in FIP_FAMILY else t.baseline_asr
        after, asr = _pts(m["clean"]), _pts(m["asr"])
        # A defense is not credited with an ASR the backdoored model was already under.
        ok = asr <= bound and before - after <= t.fip_drop if asr_before > bound else None
        defenses[(*key, s["defense_label"], s["defense"])].append(
            Run(s["seed"], after, asr, ok, "" if ok is not None else "under the bound before the defense"))
    return ({k: sorted(v.values(), key=lambda x: x.seed) for k, v in attacks.items()},
            {k: sorted(v, key=lambda x: x.seed) for k, v in defenses.items()})


@dataclasses.dataclass(frozen=True)
class Pair:
    """One seed of one backdoored model purified by a FIP-family run and by FT with the identical fit budget."""
    seed: int
    before: float  # clean metric of the backdoored model, points
    fip: tuple[float, float]  # (clean, ASR) after FIP
    ft: tuple[float, float]  # (clean, ASR) after FT

    @property
    def asr_gain(self) -> float:  # points of ASR FIP removes beyond FT (> 0: FIP lower)
        return self.ft[1] - self.fip[1]

    @property
    def extra_drop(self) -> float:  # clean points FIP costs beyond FT (> 0: FIP lower)
        return self.ft[0] - self.fip[0]


def _twin(r: dict) -> tuple:
    """What a FIP run and its FT twin share: the backdoored model (artifact key; its attack label too), the seed
    and the fit budget."""
    s = r["spec"]
    return r["artifact_key"], s["attack_label"], s["seed"], _canon(r["config"]["defense"]["config"]["fit"])


def pairs(records: list[dict]) -> dict[tuple, list[Pair]]:
    """{(task, dataset, model, attack label, FIP label, FIP name, FT label): [Pair per seed]}, ok records only."""
    records = latest(records)
    fits: dict[tuple, list[dict]] = defaultdict(list)  # _twin -> FT records
    for r in records:
        if r["spec"]["defense"] == "finetune" and r["metrics"]["asr"] is not None:
            fits[_twin(r)].append(r)
    out: dict[tuple, list[Pair]] = defaultdict(list)
    for r in records:
        s, m = r["spec"], r["metrics"]
        if s["defense"] not in FIP_FAMILY or m["asr"] is None:
            continue
        for ft in fits.get(_twin(r), []):
            fm = ft["metrics"]
            out[(s["task"], s["dataset"], s["model"], s["attack_label"], s["defense_label"], s["defense"],
                 ft["spec"]["defense_label"])].append(
                Pair(s["seed"], _pts(m["clean_before"]), (_pts(m["clean"]), _pts(m["asr"])),
                     (_pts(fm["clean"]), _pts(fm["asr"]))))
    return {k: sorted(v, key=lambda x: x.seed) for k, v in out.items()}


def paired_markdown(rows: dict[tuple, list[Pair]], t: Target) -> list[str]:
    """The FIP-against-FT section of one task (empty when no run has an FT twin)."""
    if not rows:
        return []
    lines = ["", "FIP against FT at the same budget (identical `fit` config, same backdoored model and seed; "
             "ASR removed beyond FT / clean points lost beyond FT, per seed):", "",
             "| dataset | model | attack | FIP run | FT run | FIP after | FT after | ASR removed beyond FT | "
             "clean lost beyond FT |", "|---|---|---|---|---|---|---|---|---|"]
    for (_, d, mo, a, fl, _, tl), ps in sorted(rows.items()):
        fip, ft = (" \\| ".join(f"{clean:.1f} / {asr:.1f}" for clean, asr in col)
                   for col in ([p.fip for p in ps], [p.ft for p in ps]))
        gain, extra = (" \\| ".join(f"{v:+.1f}" for v in col)
                       for col in ([p.asr_gain for p in ps], [p.extra_drop for p in ps]))
        lines.append(f"| {d} | {mo} | {a} | {fl} | {tl} | {fip} | {ft} | {gain} | {extra} |")
    for fam in sorted(FIP_FAMILY):
        ps = [p for k, v in rows.items() if k[5] == fam for p in v]
        if not ps:
            continue
        lower = sum(p.asr_gain > 0 for p in ps)
        # FIP's own target with "below FT's ASR" in place of the absolute ASR bound
        kept = sum(p.asr_gain > 0 and p.before - p.fip[0] <= t.fip_drop for p in ps)
        lines += ["", f"{fam} against FT: lower ASR in {lower} of {len(ps)} paired runs (median "
                  f"{median(p.asr_gain for p in ps):+.1f} points of ASR, {median(p.extra_drop for p in ps):+.1f}"
                  f" clean points beyond FT); lower ASR within {t.fip_drop:g} points of the backdoored model "
                  f"in {kept} of {len(ps)}."]
    return lines


def verdict(runs: list[Run]) -> str:
    known = [x.verdict for x in runs if x.verdict is not None]
    if not known:
        return runs[0].note
    met = sum(known)
    if met == len(runs):
        return "met"
    # the note of the seeds left unjudged, not of the first seed (which may have been judged)
    unjudged = [x for x in runs if x.verdict is None]
    judged = f" ({len(unjudged)} unjudged: {unjudged[0].note})" if unjudged else ""
    return ("NOT met" if met == 0 else f"met on {met} of {len(runs)} seeds") + judged


def _cell(runs: list[Run]) -> str:
    return " \\| ".join("failed" if x.clean is None else f"{x.clean:.1f} / {x.asr:.1f}" for x in runs)


def markdown(attacks: dict, defenses: dict, task: str | None = None, paired: dict | None = None) -> str:
    lines = ["# Targets", "", "Produced by `python benchmarks/targets.py` from results/records/; clean metric / "
             "ASR in points, one entry per seed (seed order), see the script's docstring for the targets.", ""]
    for name, t in TARGETS.items():
        rows = sorted(k for k in attacks if k[0] == name)
        if (task and name != task) or not rows:
            continue
        met = sum(verdict(attacks[k]) == "met" for k in rows)
        lines += [f"## {name}", "",
                  f"Attacks (ASR >= {t.attack_asr:g} %, within {t.attack_drop:g} points of the clean model): "
                  f"{met} of {len(rows)} settings met on every seed.", "",
                  "| dataset | model | attack | seeds | backdoored | target |", "|---|---|---|---:|---|---|"]
        lines += [f"| {d} | {m} | {a} | {len(attacks[k])} | {_cell(attacks[k])} | {verdict(attacks[k])} |"
                  for k in rows for (_, d, m, a) in [k]]
        drows = sorted(k for k in defenses if k[0] == name)
        lines += ["", f"Defenses (FIP / Fast FIP: ASR <= {t.fip_asr:g} %, others <= {t.baseline_asr:g} %; "
                  f"drop <= {t.fip_drop:g} points from the backdoored model):", "",
                  "| dataset | model | attack | defense | after | target |", "|---|---|---|---|---|---|"]
        lines += [f"| {d} | {m} | {a} | {df} | {_cell(defenses[k])} | {verdict(defenses[k])} |"
                  for k in drows for (_, d, m, a, df, _) in [k]]
        for fam in sorted(FIP_FAMILY):
            mine = [k for k in drows if k[5] == fam]
            judged = [k for k in mine if any(x.verdict is not None for x in defenses[k])]
            lines += ["", f"{fam} (every setting run): {sum(verdict(defenses[k]) == 'met' for k in judged)} of "
                      f"{len(judged)} judged rows met on every seed."]
        lines += paired_markdown({k: v for k, v in (paired or {}).items() if k[0] == name}, t)
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=REPO / "results", help="holds records/ (default: results)")
    p.add_argument("--task", choices=sorted(TARGETS), help="one task only")
    p.add_argument("--out", type=Path, help="where to write the Markdown (default: RESULTS/targets.md)")
    args = p.parse_args(argv)
    if not (args.results / "records").is_dir():
        print(f"targets: error: no records under {args.results / 'records'}; run `fipbench run` first",
              file=sys.stderr)
        return 2
    records = ResultStore(args.results).all()
    text = markdown(*check(records), task=args.task, paired=pairs(records))
    print(text)
    atomic_write_bytes(args.out or args.results / "targets.md", text.encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
