"""Aggregate records into the leaderboard: mean ± std over seeds, written under results/ as Markdown, CSV,
LaTeX (booktabs tables for papers) and a static HTML page (benchmark/site.py), with a ranking of the defenses
of each task by mean DER over its attacks."""

from __future__ import annotations

from pathlib import Path

from benchmark._io import atomic_write_bytes
from benchmark._schema import Record

KEYS = ["task", "dataset", "model", "attack", "defense"]
# column -> (record accessor, scale): rates are shown in percent
VALUES = {
    "clean": (lambda r: r["metrics"]["clean"], 100.0),
    "asr": (lambda r: r["metrics"]["asr"], 100.0),
    "ra": (lambda r: r["metrics"]["ra"], 100.0),
    "der": (lambda r: r["metrics"]["der"], 100.0),
    "defense_s": (lambda r: r["timings"]["defense_seconds"], 1.0),
    "tuned_params": (lambda r: r["defense_report"].get("tuned_params"), 1.0),
    # Sharpness on the fixed clean batch (see benchmark/_schema.py): before = backdoored, plain = purified.
    "eig_before": (lambda r: _sharp(r, "before", "hessian_max_eig"), 1.0),
    "eig": (lambda r: _sharp(r, "after", "hessian_max_eig"), 1.0),
    "trace_h_before": (lambda r: _sharp(r, "before", "hessian_trace"), 1.0),
    "trace_h": (lambda r: _sharp(r, "after", "hessian_trace"), 1.0),
    "trace_f_before": (lambda r: _sharp(r, "before", "fisher_trace"), 1.0),
    "trace_f": (lambda r: _sharp(r, "after", "fisher_trace"), 1.0),
}


NUMERIC = [*VALUES, "asr_floor"]  # asr_floor: a clean model's ASR on the attack's triggered test (`floors`)


def floors(results: Path) -> dict[str, float]:
    """{backdoored model's artifact key: ASR floor in %} from the results/asr_floor_*.json files that
    benchmarks/asr_floor.py writes (rows without an `artifact` key, from older runs, are skipped)."""
    import json

    out: dict[str, float] = {}
    for path in sorted(Path(results).glob("asr_floor_*.json")):
        try:
            rows = json.loads(path.read_text())["rows"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a floor table: no floors from it
        for row in rows:
            if isinstance(row, dict) and row.get("artifact") and row.get("floor_asr") is not None:
                out[row["artifact"]] = 100.0 * row["floor_asr"]
    return out


def _sharp(r: Record, when: str, key: str) -> float | None:
    s = r["metrics"].get(f"sharpness_{when}")  # type: ignore[misc]
    return None if not s else s.get(key)


def _arrow(before: float, after: float) -> str:
    if before != before or after != after:
        return "–"
    return f"{before:.0f} → {after:.0f}"


def latest(records: list[Record], statuses: tuple[str, ...] = ("ok",)) -> list[Record]:
    """The records of `statuses`, oldest first, only the newest per (task, dataset, model, attack label, defense
    label, seed): a cell re-run under a changed config leaves an older record with the same labels and seed,
    which must not be counted as if it were another seed (nor a failure that a later run mended)."""
    keep: dict[tuple, Record] = {}
    for r in sorted((r for r in records if r["status"] in statuses), key=lambda r: r["created"]):
        s = r["spec"]
        keep[(s["task"], s["dataset"], s["model"], s["attack_label"], s["defense_label"], s["seed"])] = r
    return sorted(keep.values(), key=lambda r: r["created"])


def mixed_artifacts(records: list[Record]) -> list[str]:
    """One line per backdoored model whose records disagree on its own metrics (clean / ASR / RA before the
    defense), i.e. cells made from two trainings of one artifact key.  Training is deterministic on one machine,
    but another CPU (or GPU) rounds differently and a re-trained model drifts by a point or so; a cell re-run
    after its cache was lost then sits next to siblings made from the other model, and the leaderboard's
    "before" columns and every comparison between defenses of that model are off by the drift."""
    groups: dict[str, list[Record]] = {}
    for r in latest(records):
        groups.setdefault(r["artifact_key"], []).append(r)
    lines = []
    for key, recs in groups.items():
        befores = {(r["metrics"]["clean_before"], r["metrics"]["asr_before"], r["metrics"]["ra_before"])
                   for r in recs}
        if len(befores) > 1:
            s = recs[0]["spec"]
            cleans = " | ".join(sorted({f"{100 * b[0]:.2f}" for b in befores}))
            lines.append(f"backdoored model {key} ({s['task']}/{s['dataset']}/{s['model']} {s['attack_label']} "
                         f"seed {s['seed']}): its {len(recs)} records come from {len(befores)} trainings "
                         f"(clean before {cleans}); re-run them together: "
                         f"fipbench run CONFIG --force --only artifact={key}")
    return lines


def frame(records: list[Record], floor: dict[str, float] | None = None):
    """One row per ok or failed record (the newest of each cell, see `latest`): keys, metric name, `failed`, the
    VALUES columns (scaled; empty for a failed cell) and `asr_floor` (from `floor`, by artifact key)."""
    import pandas as pd

    # A task's metric name is the same in all its records: any ok one of the (task, dataset) names it.
    metric_of = {(r["spec"]["task"], r["spec"]["dataset"]): r["metrics"]["metric_name"] for r in records
                 if r["status"] == "ok"}
    floor = floor or {}
    rows = []
    for r in latest(records, ("ok", "failed")):
        s = r["spec"]
        ok = r["status"] == "ok"
        # A failed cell has no metrics: it takes its task's metric name from an ok record, so that it joins its
        # siblings' row; "?" where none exists.
        metric = r["metrics"]["metric_name"] if ok else metric_of.get((s["task"], s["dataset"]), "?")
        row = {"task": s["task"], "dataset": s["dataset"], "model": s["model"], "attack": s["attack_label"],
               "defense": s["defense_label"], "seed": s["seed"], "metric": metric, "failed": not ok}
        for col, (get, scale) in VALUES.items():
            v = get(r) if ok else None
            row[col] = None if v is None else v * scale
        row["asr_floor"] = floor.get(r["artifact_key"]) if s["attack"] != "none" else None
        rows.append(row)
    return pd.DataFrame(rows, columns=KEYS + ["seed", "metric", "failed", *NUMERIC])


def aggregate(records: list[Record], floor: dict[str, float] | None = None):
    """Mean and std over seeds per (task, dataset, model, attack, defense), of the seeds that finished: `n`
    counts them, `failed` the seeds whose cell failed (their row has no values when no seed finished)."""
    return _aggregate(frame(records, floor))


def _aggregate(df):
    if df.empty:
        return df
    num = df[NUMERIC].apply(lambda c: c.astype(float))
    df = df[KEYS + ["metric", "failed"]].join(num)
    g = df.groupby(KEYS + ["metric"], sort=False, dropna=False)
    out = g[NUMERIC].mean().add_suffix("_mean").join(g[NUMERIC].std(ddof=0).add_suffix("_std"))
    out["failed"] = g["failed"].sum().astype(int)
    out["n"] = g.size() - out["failed"]
    return out.reset_index().sort_values(KEYS, kind="stable", ignore_index=True)


def failure_lines(records: list[Record]) -> list[str]:
    """One line per failure (the newest record of each label and seed): its reason, which names the cell, and
    for a backdoored model that failed to train the defenses of its cells."""
    by_reason: dict[str, list[str]] = {}
    for r in latest(records, ("ok", "failed")):
        if r["status"] == "failed":
            by_reason.setdefault(r["reason"] or "", []).append(r["spec"]["defense_label"])
    return [reason + (f" (its cells: {', '.join(sorted(defenses))})" if len(defenses) > 1 else "")
            for reason, defenses in sorted(by_reason.items())]


FAILED_NOTE = ("Recorded, not scored: a training diverged (the reason says whose); fipbench run CONFIG --force "
               "--only ... runs a cell again.")  # the Markdown and the HTML page alike


def failures(lines: list[str]) -> str:
    """The Markdown section listing `failure_lines`; empty when none failed."""
    if not lines:
        return ""
    return "\n".join(["", "## Failed cells", "", FAILED_NOTE, "", *(f"- {line}" for line in lines)]) + "\n"


def _seeds(n: int, failed: int) -> str:
    return f"{n} + {failed} failed" if failed else str(n)


def _pm(mean: float, std: float, digits: int) -> str:
    if mean != mean:  # NaN: no value (e.g. ASR without an attack)
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std == std and std > 0 else f"{mean:.{digits}f}"


def _rate_columns(part, unit: str) -> dict[str, list[str]]:
    """Clean metric, ASR, RA and DER as "mean ± std" strings, headed e.g. "ASR %" (unit "%")."""
    metric = part["metric"].iloc[0]
    return {f"{name} {unit}": [_pm(m, s, 2) if n else "failed"  # no seed finished: every one failed
                               for m, s, n in zip(part[f"{col}_mean"], part[f"{col}_std"], part["n"])]
            for name, col in ((f"clean {metric}", "clean"), ("ASR", "asr"), ("RA", "ra"), ("DER", "der"))}


def markdown(agg) -> str:
    if agg.empty:
        return "_no finished cells yet_\n"
    lines = []
    for (task, dataset, model), part in agg.groupby(["task", "dataset", "model"], sort=False):
        metric = part["metric"].iloc[0]
        table = part.assign(**_rate_columns(part, "%"), **{
            # the mean over the seeds that have one (a floor is measured per backdoored model)
            "ASR floor %": [_pm(m, s, 2) for m, s in zip(part.asr_floor_mean, part.asr_floor_std)],
            "defense s": [_pm(m, s, 1) for m, s in zip(part.defense_s_mean, part.defense_s_std)],
            "tuned params": [("–" if p != p else f"{int(p):,}") for p in part.tuned_params_mean],
            "λmax": [_arrow(b, a) for b, a in zip(part.eig_before_mean, part.eig_mean)],
            "Tr H": [_arrow(b, a) for b, a in zip(part.trace_h_before_mean, part.trace_h_mean)],
            "seeds": [_seeds(n, f) for n, f in zip(part.n, part.failed)],
        })[["attack", "defense", f"clean {metric} %", "ASR %", "ASR floor %", "RA %", "DER %", "defense s",
            "tuned params", "λmax", "Tr H", "seeds"]]
        lines += [f"## {task} — {dataset} — {model}", "", table.to_markdown(index=False), ""]
    return "\n".join(lines)


RANKED = ["der", "clean", "asr", "ra", "defense_s"]


def ranking(cells):
    """Per (task, dataset, model), from `frame`'s one row per cell: each defense's mean DER, clean, ASR, RA and
    time over the attacked cells, best DER first.  Defenses are compared on the same cells: the (attack, seed)
    pairs that every ranked defense of the group finished, so a defense whose training diverged on one seed is
    not ranked on its lucky seeds against others' every seed; the seeds of an attack are averaged first, then
    the attacks (as the leaderboard's rows).  `failed` counts a defense's failed attacked cells in the group
    (`cells` those its figures come from).  Where no cell is common to all, each defense's mean over its own
    finished cells is shown instead (`common` False: not comparable).  Cells without an attack (no ASR) do not
    count; a defense none of whose attacked cells finished is not ranked (`unranked`)."""
    import pandas as pd

    keys = ["task", "dataset", "model"]
    columns = [*keys, "rank", "defense", *RANKED, "attacks", "cells", "failed", "common"]
    if cells.empty:
        return pd.DataFrame(columns=columns)
    attacked = _attacked(cells.assign(**{c: cells[c].astype(float) for c in RANKED}))
    out = []
    for key, part in attacked.groupby(keys, sort=False):
        done = part[~part["failed"].astype(bool)]
        if done.empty:
            continue
        pairs = done.groupby("defense", sort=False)[["attack", "seed"]].apply(lambda d: set(zip(d.attack, d.seed)))
        common = set.intersection(*pairs)
        sel = done[[(a, s) in common for a, s in zip(done.attack, done.seed)]] if common else done
        per_attack = sel.groupby(["defense", "attack"], sort=False)[RANKED].mean()
        row = per_attack.groupby(level="defense", sort=False).mean()
        row["attacks"] = per_attack.groupby(level="defense", sort=False).size()
        row["cells"] = sel.groupby("defense", sort=False).size()
        row["failed"] = part[part["failed"].astype(bool)].groupby("defense").size().reindex(row.index).fillna(0)
        row = row.astype({"attacks": int, "cells": int, "failed": int}).assign(common=bool(common))
        row = row.reset_index().assign(**dict(zip(keys, key)))
        out.append(row.sort_values(["der", "clean"], ascending=False, kind="stable"))
    if not out:
        return pd.DataFrame(columns=columns)
    rank = pd.concat(out, ignore_index=True)
    rank["rank"] = rank.groupby(keys, sort=False).cumcount() + 1
    return rank.sort_values([*keys, "rank"], kind="stable", ignore_index=True)[columns]


def _attacked(cells):
    """The cells of attacks with an ASR in some finished cell of their group (a failed cell has none itself)."""
    has_asr = cells.groupby(["task", "dataset", "model", "attack"], sort=False)["asr"].transform(
        lambda c: c.astype(float).notna().any())
    return cells[has_asr.astype(bool)]


def unranked(cells) -> dict[tuple[str, str, str], list[str]]:
    """Per (task, dataset, model): the defenses with attacked cells, none of which finished (every one failed).
    These are exactly the defenses `ranking` leaves out, as it ranks every defense with a finished attacked cell."""
    keys = ["task", "dataset", "model"]
    if cells.empty:
        return {}
    attacked = _attacked(cells)
    all_failed = attacked.groupby([*keys, "defense"], sort=False)["failed"].agg(lambda f: f.astype(bool).all())
    out: dict[tuple[str, str, str], list[str]] = {}
    for (*key, defense), gone in all_failed.items():
        if gone:
            out.setdefault(tuple(key), []).append(defense)
    return {key: sorted(names) for key, names in out.items()}


def unranked_line(names: list[str]) -> str:
    return f"Not ranked, every attacked cell failed: {', '.join(sorted(names))}."


def ranking_markdown(rank, missing: dict[tuple[str, str, str], list[str]] | None = None) -> str:
    lines = ["# Defense ranking", "", "Per task/dataset/model, best DER first: each defense's mean over the attack × "
             "seed cells that every ranked defense finished there (the same cells for all; an attack's seeds "
             "averaged first). `failed`: the defense's cells there whose training diverged (see the leaderboard's "
             "Failed cells); they drop those cells for every defense.", ""]
    missing = missing or {}
    for (task, dataset, model), part in rank.groupby(["task", "dataset", "model"], sort=False):
        table = part.assign(**{c: part[c].map(lambda v: _pm(v, 0.0, 2)) for c in ("der", "clean", "asr", "ra")},
                            defense_s=part["defense_s"].map(lambda v: _pm(v, 0.0, 1)))
        table = table[["rank", "defense", "der", "clean", "asr", "ra", "defense_s", "attacks", "cells",
                       "failed"]].rename(columns={"der": "DER %", "clean": "clean %", "asr": "ASR %", "ra": "RA %",
                                                  "defense_s": "defense s"})
        over = (f"Over the {int(part['attacks'].iloc[0])} attack(s), {int(part['cells'].iloc[0])} attack × seed "
                f"cell(s), every defense here finished." if part["common"].all()
                else "No cell is common to every defense here: each row is its own cells' mean (not comparable).")
        gone = missing.get((task, dataset, model))
        lines += [f"## {task} — {dataset} — {model}", "", over, "", table.to_markdown(index=False), ""]
        if gone:
            lines += [unranked_line(gone), ""]
    return "\n".join(lines)


def latex(agg) -> str:
    """One booktabs table per (task, dataset, model): attack, defense, clean, ASR, RA, DER (mean ± std)."""
    if agg.empty:
        return "% no finished cells yet\n"
    out = ["% fipbench leaderboard: generated by `fipbench leaderboard`; needs \\usepackage{booktabs}", ""]
    for (task, dataset, model), part in agg.groupby(["task", "dataset", "model"], sort=False):
        metric = part["metric"].iloc[0]
        table = part.assign(**_rate_columns(part, "(%)"))[
            ["attack", "defense", f"clean {metric} (%)", "ASR (%)", "RA (%)", "DER (%)"]]
        body = table.to_latex(index=False, escape=True, column_format="llrrrr")
        body = body.replace("±", "$\\pm$").replace("–", "--")
        caption = f"{task} / {dataset} / {model}".replace("_", "\\_")
        out += ["\\begin{table}[t]", "\\centering", f"\\caption{{{caption}}}", body.rstrip(), "\\end{table}", ""]
    return "\n".join(out)


def write(records: list[Record], results: Path, floor: dict[str, float] | None = None) -> dict[str, Path]:
    """Write results/leaderboard.{md,csv,tex,html}, results/ranking.md and results/sharpness.png; returns
    their paths.  ASR floors: `floor`, else the asr_floor_*.json files in `results` (see `floors`)."""
    from benchmark import site

    results = Path(results)
    cells = frame(records, floors(results) if floor is None else floor)
    agg = _aggregate(cells)
    rank, missing = ranking(cells), unranked(cells)
    header = ("# fipbench leaderboard\n\nMean ± std over seeds. ASR: triggered non-target test inputs that hit "
              "the target; RA: triggered inputs still given their true label; DER: BackdoorBench's defense "
              "effectiveness rating. λmax / Tr H: the task loss's largest Hessian eigenvalue and Hessian trace on a "
              "fixed clean batch, backdoored → purified (`sharpness.png` plots λmax). ASR floor: a clean "
              "model's ASR on the same triggered test set (benchmarks/asr_floor.py), where measured; a defense "
              "is not expected below it. `ranking.md` ranks the "
              "defenses; `leaderboard.html` is the same with sortable tables and plots. Generated by "
              "`fipbench leaderboard`; do not edit.\n\n")
    paths = {"md": results / "leaderboard.md", "csv": results / "leaderboard.csv",
             "tex": results / "leaderboard.tex", "ranking": results / "ranking.md",
             "html": results / "leaderboard.html", "sharpness": results / "sharpness.png"}
    failed = failure_lines(records)
    atomic_write_bytes(paths["md"], (header + markdown(agg) + failures(failed)).encode())
    atomic_write_bytes(paths["csv"], agg.to_csv(index=False).encode())
    atomic_write_bytes(paths["tex"], latex(agg).encode())
    atomic_write_bytes(paths["ranking"], ranking_markdown(rank, missing).encode())
    atomic_write_bytes(paths["html"], site.page(agg, rank, failed, missing).encode())
    if not sharpness_plot(agg, paths["sharpness"]):
        del paths["sharpness"]
    return paths


def sharpness_plot(agg, path: Path) -> bool:
    """Bar chart of λmax per (attack, defense), backdoored (hatched) vs purified, one panel per task/dataset/
    model; False (no file) when no record has sharpness figures."""
    if agg.empty or agg["eig_mean"].isna().all():
        return False
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(agg.groupby(["task", "dataset", "model"], sort=False))
    fig, axes = plt.subplots(len(groups), 1, figsize=(max(6.0, 0.45 * max(len(p) for _, p in groups)),
                                                      3.2 * len(groups)), squeeze=False)
    for ax, ((task, dataset, model), part) in zip(axes[:, 0], groups):
        part = part[part["eig_mean"].notna()]
        xs = range(len(part))
        ax.bar([x - 0.2 for x in xs], part["eig_before_mean"], 0.4, label="backdoored", color="0.75", hatch="//")
        ax.bar([x + 0.2 for x in xs], part["eig_mean"], 0.4, label="after defense", color="tab:blue")
        ax.set_xticks(list(xs), [f"{a}\n{d}" for a, d in zip(part["attack"], part["defense"])], fontsize=7,
                      rotation=90)
        ax.set_ylabel("largest Hessian eigenvalue")
        ax.set_title(f"{task} / {dataset} / {model}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True
