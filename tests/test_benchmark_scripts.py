"""The benchmark scripts' cell plans are valid specs (they run for minutes, so only their plans are tested here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from _helpers import tiny_matrix

from benchmark.store import ResultStore
from tasks.base import FitConfig

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as when run as a file: its siblings import
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_fip_budget_plan_pairs_ft_and_fip_at_every_budget(monkeypatch):
    mod = _load("fip_budget", monkeypatch)
    args = mod.parse(["--seeds", "0", "1"])
    plan = mod.cells(args)
    assert len(plan) == len(args.seeds) * len(args.attacks) * len(mod.BUDGETS) * len(args.defenses)
    # FT and FIP get the identical fit budget within a row (seed, attack, budget), so the comparison is like
    # for like.
    budgets: dict[tuple, set] = {}
    for label, spec in plan:
        fit = spec.resolved()["defense"]["config"]["fit"]  # validates every config on the way
        budgets.setdefault((spec.seed, spec.attack.name, label), set()).add(tuple(sorted(fit.items())))
    assert all(len(fits) == 1 for fits in budgets.values()), budgets
    default = plan[0][1].resolved()["defense"]["config"]["fit"]
    assert FitConfig.from_dict(default, "fit") == FitConfig.from_dict(
        {"epochs": 1, "steps": 300, "batch_size": 64, "lr": 0.005, "momentum": 0.95, "weight_decay": 0.0,
         "schedule": "constant"}, "fit")


def test_purification_plan_gives_tuning_defenses_the_same_steps(monkeypatch):
    mod = _load("purification", monkeypatch)
    args = mod.parse(["--steps", "7", "--defenses", "finetune", "fip", "clp"])
    specs = {s.defense.name: s.resolved()["defense"]["config"] for s in mod.cells(args)}
    assert specs["finetune"]["fit"]["steps"] == specs["fip"]["fit"]["steps"] == 7
    assert "fit" not in specs["clp"]


def test_quick_preset_timer_reports_groups_and_total(monkeypatch, tmp_path, capsys):
    """The preset timer on a one-group, two-cell matrix: a line per group, the total and the verdict."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(tiny_matrix("[badnets]", "[none, {name: finetune, config: {fit: {steps: 2}}}]"))
    module = _load("quick_preset", monkeypatch)
    assert module.main(["--config", str(cfg), "--no-sharpness", "--target", "600", "--keep", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tiny: 2 cells, 1 groups")
    assert out[1].startswith("  image_classification/digits/small_cnn: 2 cells,")
    assert out[2].startswith("total: ") and out[2].endswith("target <= 600 s: met")
    assert (tmp_path / "results" / "leaderboard.html").is_file()
    assert module.main(["--config", str(cfg), "--executor", "rey"]) == 2


def _record(template: dict, attack: str, defense: str, seed: int, created: str, **metrics) -> dict:
    """A committed record re-labelled: another attack / defense / seed with the given metrics (fractions)."""
    rec = json.loads(json.dumps(template))
    rec["spec"].update(attack=attack, attack_label=attack, defense=defense, defense_label=defense, seed=seed)
    rec["cell_id"] = f"{attack}-{defense}-s{seed}-{created[-2:]}"
    rec["created"] = created
    rec["metrics"].update(metrics)
    return rec


def test_targets_judges_attacks_against_the_clean_model_and_defenses_against_the_backdoored_one(
        monkeypatch, tmp_path, capsys):
    mod = _load("targets", monkeypatch)
    template = json.loads(sorted((ROOT / "results" / "records").glob("image_classification-*.json"))[0].read_text())
    template.pop("digest")
    store = ResultStore(tmp_path)
    rows = [("none", "none", 0, "2026-01-01T00:00:01", dict(clean_before=0.95, asr_before=None, clean=0.95, asr=None)),
            # 180 of 200 triggered inputs, as float32 stores it: exactly at the 90 % bound, so met
            ("x", "none", 0, "2026-01-01T00:00:01", dict(clean_before=0.93, asr_before=0.8999999761581421)),
            ("x", "fip", 0, "2026-01-01T00:00:01", dict(clean_before=0.93, asr_before=0.9, clean=0.91, asr=0.04)),
            ("x", "finetune", 0, "2026-01-01T00:00:01", dict(clean_before=0.93, asr_before=0.9, clean=0.92,
                                                              asr=0.12)),
            ("y", "none", 0, "2026-01-01T00:00:01", dict(clean_before=0.91, asr_before=1.0)),  # 4 points under
            ("z", "fip", 0, "2026-01-01T00:00:01", dict(clean_before=0.95, asr_before=0.03, clean=0.94, asr=0.02)),
            # seed 1 has no clean model to judge against: the verdict says so for that seed, not for seed 0
            ("w", "none", 0, "2026-01-01T00:00:01", dict(clean_before=0.94, asr_before=1.0)),
            ("w", "none", 1, "2026-01-01T00:00:01", dict(clean_before=0.94, asr_before=1.0)),
            # an older record of the same cell, superseded by the newer one above
            ("x", "fip", 0, "2026-01-01T00:00:00", dict(clean_before=0.93, asr_before=0.9, clean=0.5, asr=0.9))]
    for attack, defense, seed, created, metrics in rows:
        store.put(_record(template, attack, defense, seed, created, **metrics))
    # FT with another budget on the same model: not FIP's twin, so it is left out of the FIP-against-FT pairing
    other = _record(template, "x", "finetune", 0, "2026-01-01T00:00:01", clean_before=0.93, asr_before=0.9,
                    clean=0.93, asr=0.0)
    other["spec"]["defense_label"], other["cell_id"] = "finetune-lr", "x-finetune-lr-s0-01"
    other["config"]["defense"]["config"]["fit"]["lr"] = 0.123
    store.put(other)
    attacks, defenses = mod.check(store.all())
    key = tuple(template["spec"][k] for k in ("task", "dataset", "model"))
    assert mod.verdict(attacks[(*key, "x")]) == "met"
    assert mod.verdict(attacks[(*key, "y")]) == "NOT met"
    assert mod.verdict(attacks[(*key, "w")]) == "met on 1 of 2 seeds (1 unjudged: no clean model)"
    assert mod.verdict(defenses[(*key, "x", "fip", "fip")]) == "met"
    assert mod.verdict(defenses[(*key, "x", "finetune", "finetune")]) == "NOT met"  # 12 % > the baselines' 10 %
    assert mod.verdict(defenses[(*key, "z", "fip", "fip")]) == "under the bound before the defense"
    pairs = mod.pairs(store.all())
    assert list(pairs) == [(*key, "x", "fip", "fip", "finetune")]  # same model, seed and fit config only
    (pair,) = pairs[(*key, "x", "fip", "fip", "finetune")]
    assert (pair.before, pair.fip, pair.ft) == (93.0, (91.0, 4.0), (92.0, 12.0))
    assert (pair.asr_gain, pair.extra_drop) == (8.0, 1.0)
    assert mod.main(["--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 of 4 settings met on every seed" in out and (tmp_path / "targets.md").read_text() in out
    assert "fip (every setting run): 1 of 1 judged rows met" in out
    assert "fip against FT: lower ASR in 1 of 1 paired runs (median +8.0 points of ASR, +1.0 clean points beyond " \
        "FT); lower ASR within 3 points of the backdoored model in 1 of 1." in out
    assert mod.main(["--results", str(tmp_path / "nowhere")]) == 2
    assert "no records under" in capsys.readouterr().err


def test_leaderboard_warns_when_one_backdoored_model_has_records_from_two_trainings(tmp_path, capsys):
    from benchmark import cli, leaderboard

    template = json.loads(sorted((ROOT / "results" / "records").glob("image_classification-*.json"))[0].read_text())
    template.pop("digest")
    store = ResultStore(tmp_path)
    # Three cells of one artifact key; the third was made from a re-training that came out 0.5 points apart.
    for defense, clean_before in (("none", 0.955), ("fip", 0.955), ("finetune", 0.96)):
        store.put(_record(template, "x", defense, 0, "2026-01-01T00:00:01", clean_before=clean_before,
                          asr_before=1.0))
    other = _record(template, "y", "none", 0, "2026-01-01T00:00:01", clean_before=0.9, asr_before=1.0)
    store.put({**other, "artifact_key": "another-model"})
    lines = leaderboard.mixed_artifacts(store.all())
    assert len(lines) == 1, lines
    assert f"backdoored model {template['artifact_key']}" in lines[0]
    assert "its 3 records come from 2 trainings (clean before 95.50 | 96.00)" in lines[0]
    assert lines[0].endswith(f"--force --only artifact={template['artifact_key']}")
    assert cli.main(["leaderboard", "--results", str(tmp_path)]) == 0
    assert capsys.readouterr().err == f"fipbench: warning: {lines[0]}\n"


def test_committed_tables_are_what_the_committed_records_produce(monkeypatch, tmp_path):
    # results/ is read by people, not only by the code: a record added or re-run without regenerating the
    # tables leaves the leaderboard and the targets report saying something the records do not.
    from benchmark import leaderboard

    results = ROOT / "results"
    fresh = leaderboard.write(ResultStore(results).all(), tmp_path, floor=leaderboard.floors(results))
    for key, path in fresh.items():
        # The PNG, HTML and TeX files render the same table, but their bytes also depend on the matplotlib and
        # pandas releases installed (unpinned), so only the plain-text ones are compared byte for byte.
        if path.suffix not in (".md", ".csv"):
            continue
        assert path.read_text() == (results / path.name).read_text(), \
            f"results/{path.name} is stale: run `fipbench leaderboard` and commit it"
    # ... and every backdoored model's records were made from one training of it (see mixed_artifacts).
    assert leaderboard.mixed_artifacts(ResultStore(results).all()) == []
    targets = _load("targets", monkeypatch)
    assert targets.main(["--out", str(tmp_path / "targets.md")]) == 0
    assert (tmp_path / "targets.md").read_text() == (results / "targets.md").read_text(), \
        "results/targets.md is stale: run `python benchmarks/targets.py` and commit it"


def test_asr_floor_scores_the_clean_model_on_each_attacks_triggered_test(monkeypatch, tmp_path):
    """The floor is the clean model's ASR on each attack's triggered test set (trained here although the matrix
    lists no `none`), next to the backdoored model's; the --seeds filter keeps only the seeds asked for."""
    from benchmark.registries import ATTACKS
    from benchmark.runner import Runner
    from benchmark.spec import load_matrix

    mod = _load("asr_floor", monkeypatch)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(tiny_matrix("[badnets, blend]", "[none, finetune]", epochs=3).replace("seeds: [0]", "seeds: [0, 1]"))
    args = ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]
    assert mod.main([str(cfg), "--seeds", "0", *args]) == 0
    rows = json.loads((tmp_path / "asr_floor_tiny.json").read_text())["rows"]
    assert [(r["attack"], r["seed"]) for r in rows] == [("badnets", 0), ("blend", 0)]
    assert "| badnets | 0 |" in (tmp_path / "asr_floor_tiny.md").read_text()

    # The same figures from the cached clean model, scored independently.
    spec = next(s for s in load_matrix(cfg).cells if s.seed == 0)
    clean_spec = mod.groups([spec], None)[0][0]
    assert mod.groups([clean_spec], None) == []  # a setting with no attack has no floor to measure
    runner = Runner(tmp_path / "scratch", tmp_path / "cache", sharpness=False)
    task = runner.task(clean_spec)
    clean, manifest = runner.artifact(clean_spec, task, ATTACKS.get("none")())  # cached: nothing trains
    assert manifest["spec"]["attack"]["name"] == "none"
    for row in rows:
        attack = ATTACKS.get(row["attack"])(seed=0)
        triggered, kept = attack.triggered_test(task, task.splits().test)
        assert task.backdoor_metrics(clean, triggered, kept)["asr"] == row["floor_asr"]
        assert row["asr"] > row["floor_asr"] and row["clean_model"] == manifest["metrics_before"]["acc"]
    assert mod.main([str(tmp_path / "missing.yaml"), *args]) == 2


def test_fip_trajectory_observes_without_disturbing_the_run(monkeypatch, tmp_path):
    """The trajectory's last point is what `fipbench run` records for the same cell (the observer only evaluates,
    between steps), step 0 is the backdoored model, and a second invocation reuses the stored runs."""
    from benchmark.runner import Runner

    mod = _load("fip_trajectory", monkeypatch)
    argv = ["--dataset", "digits", "--train", '{"epochs": 1, "batch_size": 64, "lr": 0.05}', "--attacks", "badnets",
            "--defenses", "fip", "--config", '{"fit": {"steps": 6}, "trace_every": 2}', "--every", "4",
            "--fisher-batch", "8", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]
    assert mod.main(argv) == 0
    (run,) = json.loads((tmp_path / "fip_trajectory.json").read_text())["rows"]
    assert [p["step"] for p in run["points"]] == [0, 4, 6]
    assert all(p["fisher_trace_test"] > 0 and p["fisher_trace_holdout"] > 0 for p in run["points"])
    spec = mod._common.spec(mod.parse(argv), "badnets", "fip", {"fit": {"steps": 6}, "trace_every": 2}, 0)
    (record,) = Runner(tmp_path / "records", tmp_path / "cache", sharpness=False).run([spec])
    m = record["metrics"]
    assert (run["points"][0]["acc"], run["points"][0]["asr"]) == (m["clean_before"], m["asr_before"])
    assert (run["points"][-1]["acc"], run["points"][-1]["asr"]) == (m["clean"], m["asr"])
    assert "| 0 | badnets | fip |" in (tmp_path / "fip_trajectory.md").read_text()
    assert (tmp_path / "fip_trajectory.png").stat().st_size > 0
    stored = list((tmp_path / "fip_trajectory" / "runs").glob("*.json"))
    assert len(stored) == 1
    monkeypatch.setattr(mod, "trajectory", lambda *a: pytest.fail("a stored run was recomputed"))
    assert mod.main(argv) == 0
    assert mod.main([*argv[:-2], "--out", str(tmp_path), "--config", "{bad"]) == 2
