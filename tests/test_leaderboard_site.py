"""The leaderboard outputs: Markdown, CSV, LaTeX, the defense ranking, and the static HTML page opened in
headless Chromium (Debian's chromium, installed by .ci/run): tables and plots render, sorting works, and a
screenshot is a real picture.  Without chromium the browser tests skip, unless the test set-up promised it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _helpers import need_test_tool

from benchmark import leaderboard
from benchmark import site as site_module
from benchmark.site import CELL_COLUMNS
from benchmark.store import ResultStore

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a root, offline, headless run (no sandbox; no background connections to refuse).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=5000"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(paths, aggregate, ranking) for the committed records' leaderboard written to a temp folder."""
    records = ResultStore(REPO_ROOT / "results").all()
    assert records, "the committed results/ has no records"
    out = tmp_path_factory.mktemp("site")
    paths = leaderboard.write(records, out)
    agg = leaderboard.aggregate(records)
    return paths, agg, leaderboard.ranking(leaderboard.frame(records))


def _browser():
    need_test_tool("chromium", CHROMIUM is not None, "bash scripts/setup.sh --test, or apt-get install chromium")
    return CHROMIUM


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_browser(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


def test_all_formats_are_written(site):
    paths, agg, rank = site
    assert {"md", "csv", "tex", "ranking", "html"} <= set(paths)
    groups = agg.groupby(["task", "dataset", "model"]).ngroups
    tex = paths["tex"].read_text()
    assert tex.count("\\begin{tabular}") == groups and tex.count("\\toprule") == groups
    assert "\\_" in tex and "±" not in tex  # escaped underscores; ± written as $\\pm$
    assert paths["ranking"].read_text().count("## ") == rank.groupby(["task", "dataset", "model"]).ngroups


def test_ranking_orders_by_mean_der_over_the_cells_every_defense_finished(site):
    _, agg, rank = site
    for _, part in rank.groupby(["task", "dataset", "model"]):
        assert list(part["rank"]) == list(range(1, len(part) + 1))
        assert list(part["der"]) == sorted(part["der"], reverse=True)
    # every defense of a group is ranked on the same cells: the (attack, seed) pairs all of them finished
    cells = leaderboard.frame(ResultStore(REPO_ROOT / "results").all())
    for (task, dataset, model), part in rank.groupby(["task", "dataset", "model"]):
        group = cells[(cells.task == task) & (cells.dataset == dataset) & (cells.model == model)]
        group = group[group.attack.isin(set(group[group.asr.notna()].attack))]
        done = group[~group.failed.astype(bool)]
        pairs = {d: set(zip(x.attack, x.seed)) for d, x in done.groupby("defense")}
        common = set.intersection(*pairs.values())
        assert part["common"].all() and set(part.defense) == set(pairs)
        for one in part.itertuples():
            mine = done[(done.defense == one.defense).to_numpy() & [p in common for p in zip(done.attack, done.seed)]]
            assert one.der == pytest.approx(mine.groupby("attack").der.mean().mean())
            assert one.cells == len(common) and one.attacks == len({a for a, _ in common})
            assert one.failed == int(group[group.defense == one.defense].failed.sum())
    images = rank[(rank.task == "image_classification") & (rank.dataset == "mnist5k") & (rank.model == "small_cnn")]
    assert len(images) == 14 and set(images.attacks) == {1}  # the baselines ran BadNets only: all compared on it


def test_a_defense_failing_on_one_seed_is_ranked_on_the_others_common_cells():
    """A diverged seed drops that (attack, seed) cell for every defense, so no defense is ranked on its lucky seeds
    against the others' every seed; the failure is counted, and a defense with no finished cell is listed apart."""
    import pandas as pd

    def cell(attack, defense, seed, der, failed=False):
        v = None if failed else der
        return {"task": "t", "dataset": "d", "model": "m", "attack": attack, "defense": defense, "seed": seed,
                "metric": "acc", "failed": failed, "clean": v, "asr": None if failed else 100.0 - (der or 0),
                "ra": v, "der": v, "defense_s": v, **{k: None for k in leaderboard.NUMERIC
                                                      if k not in {"clean", "asr", "ra", "der", "defense_s"}}}

    cells = pd.DataFrame([
        cell("a", "steady", 0, 60.0), cell("a", "steady", 1, 20.0),      # finished on both seeds
        cell("a", "lucky", 0, 70.0), cell("a", "lucky", 1, None, True),   # diverged on seed 1
        cell("b", "steady", 0, 52.0), cell("b", "lucky", 0, 40.0),
        cell("a", "broken", 0, None, True), cell("a", "broken", 1, None, True),
        cell("none", "steady", 0, None),  # a clean model's cell: no ASR, not ranked on
    ])
    cells.loc[8, ["asr", "der"]] = None
    rank = leaderboard.ranking(cells)
    got = {r.defense: (r.rank, r.der, r.attacks, r.cells, r.failed) for r in rank.itertuples()}
    # Over (a, 0) and (b, 0): steady (60 + 52) / 2 = 56, lucky (70 + 40) / 2 = 55.  Averaging each defense over
    # its own finished seeds would rank lucky first: 55 against steady's ((60 + 20) / 2 + 52) / 2 = 46.
    assert got == {"steady": (1, 56.0, 2, 2, 0), "lucky": (2, 55.0, 2, 2, 1)}
    missing = leaderboard.unranked(cells)
    assert missing == {("t", "d", "m"): ["broken"]}
    text = leaderboard.ranking_markdown(rank, missing)
    assert "Over the 2 attack(s), 2 attack × seed cell(s)" in text and "every attacked cell failed: broken" in text
    # the HTML page names it beside the group's ranking table too
    page = site_module.page(leaderboard._aggregate(cells), rank, [], missing)
    ranking_table = page.index('data-kind="ranking"')
    assert page.index("Not ranked, every attacked cell failed: broken.") > ranking_table


def test_page_is_self_contained(site):
    text = site[0]["html"].read_text()
    assert not re.search(r"""(src|href)=["']https?://""", text), "the page must not fetch anything"
    assert text.count("<svg") >= 3 and "<script>" in text


def test_page_renders_in_headless_chromium(site, tmp_path):
    paths, agg, rank = site
    url = paths["html"].resolve().as_uri() + "?sort=asr"
    dom = _chromium(["--dump-dom", url], tmp_path).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body))
    assert attrs.get("ready") == "1", "the page's script did not run"
    groups = agg.groupby(["task", "dataset", "model"]).ngroups
    n_ranked = rank.groupby(["task", "dataset", "model"]).ngroups
    assert int(attrs["tables"]) == groups + n_ranked
    assert int(attrs["plots"]) == paths["html"].read_text().count("<svg") >= 3  # every plot has a size
    # ?sort=asr sorted every cells table by its ASR column, ascending, missing values last.
    col = [key for key, *_ in CELL_COLUMNS].index("asr")
    tables = re.findall(r'<table class="lb" data-kind="cells" data-sorted="([^"]*)">(.*?)</table>', dom, re.S)
    assert len(tables) == groups
    for sorted_by, table in tables:
        assert sorted_by == "asr:asc"
        rows = re.findall(r"<tbody>(.*?)</tbody>", table, re.S)[0].split("</tr>")[:-1]
        values = [re.search(r'data-value="([^"]*)"', re.findall(r"<td[^>]*>", row)[col]).group(1) for row in rows]
        numbers = [float(v) for v in values if v]
        assert numbers == sorted(numbers) and all(values[:len(numbers)]), "ascending, missing values last"


def test_screenshot_shows_tables_and_plots(site, tmp_path):
    from PIL import Image

    shot = tmp_path / "page.png"
    _chromium(["--window-size=1300,2600", f"--screenshot={shot}", site[0]["html"].resolve().as_uri()], tmp_path)
    img = Image.open(shot).convert("L")
    assert img.size == (1300, 2600)
    hist = img.histogram()
    dark = sum(hist[:100]) / (img.size[0] * img.size[1])
    assert 0.002 < dark < 0.5, f"page looks blank or broken ({dark:.4f} dark pixels)"
    # The header row's grey background (#f4f4f4) is drawn: the tables are styled, not raw text.
    assert hist[0xF4] > 1000


def test_asr_floor_column_comes_from_the_floor_tables_by_artifact_key(tmp_path):
    """benchmarks/asr_floor.py's JSON rows carry the backdoored model's artifact key; the leaderboard shows that
    floor beside the ASR of every cell of that model and nowhere else (old rows without a key, other files and
    unreadable ones give no floor)."""
    import json

    rec = json.loads(sorted((REPO_ROOT / "results" / "records").glob("object_detection-baddet_oda-none-*.json"))[0]
                     .read_text())
    rec.pop("digest")
    store = ResultStore(tmp_path)
    store.put(rec)
    other = json.loads(json.dumps(rec))
    other["spec"].update(attack="baddet_rma", attack_label="baddet_rma")
    other.update(artifact_key="another-model", cell_id="rma-none")
    store.put(other)
    rows = [{"artifact": rec["artifact_key"], "floor_asr": 0.102}, {"attack": "baddet_rma", "floor_asr": 0.5},
            {"artifact": "unknown-model", "floor_asr": 0.9}]
    (tmp_path / "asr_floor_det.json").write_text(json.dumps({"args": {}, "rows": rows}))
    (tmp_path / "asr_floor_broken.json").write_text("{not json")
    assert leaderboard.floors(tmp_path) == {rec["artifact_key"]: pytest.approx(10.2), "unknown-model": 90.0}
    paths = leaderboard.write(store.all(), tmp_path)
    agg = leaderboard.aggregate(store.all(), leaderboard.floors(tmp_path)).set_index("attack")
    assert agg.loc["baddet_oda", "asr_floor_mean"] == pytest.approx(10.2)
    assert agg.loc["baddet_rma", "asr_floor_mean"] != agg.loc["baddet_rma", "asr_floor_mean"]  # NaN: no floor
    lines = paths["md"].read_text().splitlines()
    cells = [[c.strip() for c in line.split("|")] for line in lines if line.startswith("| attack") or
             line.startswith("| baddet_")]
    col = cells[0].index("ASR floor %")
    assert [(row[1], row[col]) for row in cells[1:]] == [("baddet_oda", "10.20"), ("baddet_rma", "–")]
    assert "ASR floor %" in paths["html"].read_text()
