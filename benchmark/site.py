"""The static HTML leaderboard (results/leaderboard.html): one self-contained file, no server, no network.

Per task/dataset/model: the defense ranking and the full table (both sortable: click a header; a link
`leaderboard.html?sort=asr` opens every table sorted by that column, `&desc=1` descending), ASR against the
clean metric per defense (one point per attack), defense run time, and λmax before/after.  The plots are
matplotlib SVG inlined in the page (text kept as text, fixed ids: the same records give the same file).
"""

from __future__ import annotations

import html
import io
import math
from typing import Any

# (key, header, column of the aggregate, digits): the full per-cell table
CELL_COLUMNS = [
    ("attack", "attack", "attack", None), ("defense", "defense", "defense", None),
    ("clean", "clean %", "clean_mean", 2), ("asr", "ASR %", "asr_mean", 2),
    ("asr_floor", "ASR floor %", "asr_floor_mean", 2), ("ra", "RA %", "ra_mean", 2),
    ("der", "DER %", "der_mean", 2), ("defense_s", "defense s", "defense_s_mean", 1),
    ("tuned_params", "tuned params", "tuned_params_mean", 0), ("eig_before", "λmax before", "eig_before_mean", 0),
    ("eig", "λmax after", "eig_mean", 0), ("seeds", "seeds", "n", 0), ("failed", "failed seeds", "failed", 0),
]
RANK_COLUMNS = [
    ("rank", "rank", "rank", 0), ("defense", "defense", "defense", None), ("der", "DER %", "der", 2),
    ("clean", "clean %", "clean", 2), ("asr", "ASR %", "asr", 2), ("ra", "RA %", "ra", 2),
    ("defense_s", "defense s", "defense_s", 1), ("attacks", "attacks", "attacks", 0),
    ("cells", "cells", "cells", 0), ("failed", "failed cells", "failed", 0),
]

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:22px} h2{font-size:18px;margin-top:36px;border-bottom:1px solid #ccc} h3{font-size:15px}
table.lb{border-collapse:collapse;margin:8px 0 16px} table.lb th,table.lb td{padding:3px 9px;border-bottom:1px solid #e4e4e4}
table.lb th{cursor:pointer;background:#f4f4f4;user-select:none;white-space:nowrap} table.lb td.num{text-align:right}
table.lb th[aria-sort=ascending]::after{content:" ▲"} table.lb th[aria-sort=descending]::after{content:" ▼"}
.plots{display:flex;flex-wrap:wrap;gap:12px} figure.plot{margin:0} figure.plot svg{max-width:100%;height:auto}
"""

# Sorting: numbers compare by data-value (a missing value sorts last either way), text alphabetically.
SCRIPT = """
function sortTable(table, col, desc) {
  const body = table.tBodies[0], rows = Array.from(body.rows);
  const key = r => { const c = r.cells[col], v = c.dataset.value; return v === undefined ? c.textContent : v; };
  const numeric = table.tHead.rows[0].cells[col].dataset.numeric === "1";
  rows.sort((a, b) => {
    let x = key(a), y = key(b);
    if (numeric) { x = x === "" ? NaN : +x; y = y === "" ? NaN : +y;
      if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y); return desc ? y - x : x - y; }
    return desc ? y.localeCompare(x) : x.localeCompare(y);
  });
  rows.forEach(r => body.appendChild(r));
  Array.from(table.tHead.rows[0].cells).forEach((th, i) =>
    th.setAttribute("aria-sort", i === col ? (desc ? "descending" : "ascending") : "none"));
  table.dataset.sorted = table.tHead.rows[0].cells[col].dataset.key + (desc ? ":desc" : ":asc");
}
document.querySelectorAll("table.lb").forEach(table => {
  Array.from(table.tHead.rows[0].cells).forEach((th, i) => th.addEventListener("click", () =>
    sortTable(table, i, th.getAttribute("aria-sort") === "ascending")));
});
const params = new URLSearchParams(location.search);
if (params.get("sort")) document.querySelectorAll("table.lb").forEach(table => {
  const i = Array.from(table.tHead.rows[0].cells).findIndex(th => th.dataset.key === params.get("sort"));
  if (i >= 0) sortTable(table, i, params.get("desc") === "1");
});
document.body.dataset.tables = document.querySelectorAll("table.lb").length;
document.body.dataset.plots = Array.from(document.querySelectorAll("figure.plot svg"))
  .filter(svg => svg.getBoundingClientRect().width > 0).length;
document.body.dataset.ready = "1";
"""


def _cell(value: Any, digits: int | None) -> str:
    if digits is None:
        return f"<td>{html.escape(str(value))}</td>"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td class="num" data-value="">–</td>'
    text = f"{int(round(value)):,}" if digits == 0 else f"{value:.{digits}f}"
    return f'<td class="num" data-value="{float(value)!r}">{text}</td>'


def _table(df, columns, kind: str) -> str:
    head = "".join(f'<th data-key="{k}" data-numeric="{int(d is not None)}" aria-sort="none">{html.escape(h)}</th>'
                   for k, h, _, d in columns)
    rows = "".join("<tr>" + "".join(_cell(row[c], d) for _, _, c, d in columns) + "</tr>"
                   for _, row in df.iterrows())
    return f'<table class="lb" data-kind="{kind}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG is inlined in HTML


def _plots(part, metric: str) -> list[tuple[str, str]]:
    """(caption, svg) for one task/dataset/model: ASR vs clean scatter, run time, sharpness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "fipbench"})
    out = []
    attacked = part[part["asr_mean"].notna()]
    defenses = list(dict.fromkeys(part["defense"]))
    colors = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(defenses)}
    if not attacked.empty:
        fig, ax = plt.subplots(figsize=(5.2, 3.8))
        for d in defenses:
            sel = attacked[attacked["defense"] == d]
            if not sel.empty:
                ax.scatter(sel["clean_mean"], sel["asr_mean"], label=d, color=colors[d], s=28)
        ax.set_xlabel(f"clean {metric} (%)")
        ax.set_ylabel("ASR (%)")
        ax.set_ylim(-3, 103)
        ax.legend(fontsize=7, loc="best")
        ax.set_title("ASR vs clean metric (one point per attack)", fontsize=9)
        fig.tight_layout()
        out.append(("ASR against the clean metric per defense", _svg(fig)))
    timed = part[part["defense"] != "none"].groupby("defense", sort=False)["defense_s_mean"].mean()
    if not timed.empty:
        fig, ax = plt.subplots(figsize=(5.2, 0.5 + 0.32 * len(timed)))
        ax.barh(list(timed.index), list(timed.values), color=[colors[d] for d in timed.index])
        ax.set_xlabel("defense wall time (s, mean over attacks)")
        ax.invert_yaxis()
        fig.tight_layout()
        out.append(("Defense run time", _svg(fig)))
    # Median over attacks: one very sharp backdoor (LIRA's λmax is ~40x the others') would swamp a mean.
    sharp = part[part["eig_mean"].notna()].groupby("defense", sort=False)[["eig_before_mean", "eig_mean"]].median()
    if not sharp.empty:
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        xs = range(len(sharp))
        ax.bar([x - 0.2 for x in xs], sharp["eig_before_mean"], 0.4, label="backdoored", color="0.75", hatch="//")
        ax.bar([x + 0.2 for x in xs], sharp["eig_mean"], 0.4, label="after defense", color="tab:blue")
        ax.set_xticks(list(xs), list(sharp.index), fontsize=7, rotation=30)
        ax.set_ylabel("largest Hessian eigenvalue\n(median over attacks)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        out.append(("Sharpness (λmax) before and after", _svg(fig)))
    return out


def page(agg, rank, failed: list[str] = (), missing: dict[tuple[str, str, str], list[str]] | None = None) -> str:
    """The whole page; `failed`: one line per failed cell (benchmark.leaderboard.failure_lines), listed last;
    `missing`: per group, the defenses not ranked because every attacked cell failed (leaderboard.unranked)."""
    from benchmark.leaderboard import unranked_line

    parts = ["<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>fipbench leaderboard</title>",
             f"<style>{STYLE}</style></head><body><h1>fipbench leaderboard</h1>",
             "<p>Mean over seeds. ASR: triggered non-target test inputs that hit the target; RA: triggered inputs "
             "still given their true answer; DER: BackdoorBench's defense effectiveness rating (50 = no change). "
             "Click a column header to sort. Generated by <code>fipbench leaderboard</code>.</p>"]
    if agg.empty:
        parts.append("<p><em>no finished cells yet</em></p>")
    for (task, dataset, model), part in agg.groupby(["task", "dataset", "model"], sort=False):
        title = html.escape(f"{task} — {dataset} — {model}")
        parts.append(f'<section data-task="{html.escape(task)}"><h2>{title}</h2>')
        ranked = rank[(rank["task"] == task) & (rank["dataset"] == dataset) & (rank["model"] == model)]
        if not ranked.empty:
            parts.append("<h3>Defense ranking (mean over the attack × seed cells every defense finished)</h3>"
                         + _table(ranked, RANK_COLUMNS, "ranking"))
        gone = (missing or {}).get((task, dataset, model))
        if gone:
            parts.append(f'<p class="unranked">{html.escape(unranked_line(gone))}</p>')
        plots = _plots(part, part["metric"].iloc[0])
        parts.append('<div class="plots">' + "".join(
            f'<figure class="plot">{svg}<figcaption>{html.escape(cap)}</figcaption></figure>' for cap, svg in plots)
            + "</div>")
        parts.append("<h3>All cells</h3>" + _table(part, CELL_COLUMNS, "cells") + "</section>")
    if failed:
        from benchmark.leaderboard import FAILED_NOTE

        parts.append(f'<section id="failed"><h2>Failed cells</h2><p>{html.escape(FAILED_NOTE)}</p><ul>'
                     + "".join(f"<li>{html.escape(line)}</li>" for line in failed) + "</ul></section>")
    parts.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "\n".join(parts)
