"""Cells whose training diverges (an attack's or a defense's) are recorded as failed and the run goes on: the
records, the cache's memory of a model that failed to train, resume, --dry-run and the leaderboard's list.
(The processes executor on the same case: tests/test_executors.py.)"""

from __future__ import annotations

import torch
from _helpers import tiny_matrix

from benchmark.cli import main
from benchmark.store import ResultStore


def _diverging_matrix() -> str:
    """Two backdoored models: one whose training diverges at lr 1e30 (two defense cells) and one that trains,
    with a defense that diverges (fine-tuning at lr 1e30) beside `none`."""
    bad = tiny_matrix("[{name: badnets, label: badnets-hot}]", "[none, {name: finetune, config: {fit: {steps: 2}}}]"
                      ).replace("lr: 0.05", "lr: 1.0e+30")
    good = tiny_matrix("[badnets]", "[none, {name: finetune, label: ft_nan, config: {fit: {steps: 3, lr: 1.0e+30}}}]")
    return bad + good[good.index("  - task:"):].replace("epochs: 1", "epochs: 2")


def test_diverged_trainings_are_recorded_as_failed_and_the_run_goes_on(tmp_path, capsys):
    # Input-aware all-to-all on mnist5k seed 1 reached loss NaN late in training; its NaN model was cached and
    # every defense cell of it then recorded 10 % accuracy (FIP failed outright on NaN probabilities); later
    # the error stopped the whole run.  Now each such cell is a "failed" record and the other cells finish.
    (tmp_path / "m.yaml").write_text(_diverging_matrix())
    argv = ["run", str(tmp_path / "m.yaml"), "--results", str(tmp_path / "r"), "--cache", str(tmp_path / "c"),
            "--no-sharpness"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "3 of 4 cells failed" in err
    assert out.count("training backdoored model") == 2  # the diverged model's second cell did not train it again
    assert "failed to train before; delete" in out
    records = ResultStore(tmp_path / "r").all()
    by = {(r["spec"]["defense_label"], r["spec"]["attack_label"]): r for r in records}
    assert [r["status"] for r in records].count("failed") == 3 and by[("none", "badnets")]["status"] == "ok"
    for label in ("none", "finetune"):
        r = by[(label, "badnets-hot")]
        assert r["metrics"] is None and r["timings"] is None
        assert "training the backdoored model diverged (train badnets-hot: loss nan at step" in r["reason"]
        assert "lower train.lr or set train.grad_clip" in r["reason"] and "\n" not in r["reason"]
    ft = by[("ft_nan", "badnets")]
    assert "the defense diverged (" in ft["reason"] and "loss nan at step" in ft["reason"]
    assert ft["timings"]["defense_seconds"] > 0 and ft["artifact_key"] == by[("none", "badnets")]["artifact_key"]
    bad_key = by[("none", "badnets-hot")]["artifact_key"]
    assert (tmp_path / "c" / bad_key / "failed.json").is_file()
    assert not (tmp_path / "c" / bad_key / "manifest.json").exists()  # nothing that outputs NaN was cached
    md = (tmp_path / "r" / "leaderboard.md").read_text()
    assert "## Failed cells" in md and md.count("training the backdoored model diverged") == 1
    assert "lower train.lr or set train.grad_clip (its cells: finetune, none)" in md
    page = (tmp_path / "r" / "leaderboard.html").read_text()
    assert '<section id="failed"><h2>Failed cells</h2>' in page and page.count("<li>") == 2
    ft_row = next(line for line in md.splitlines() if line.startswith("| badnets") and "ft_nan" in line)
    assert ft_row.count("| failed ") == 4 and "0 + 1 failed" in ft_row  # clean, ASR, RA, DER; no seed finished
    assert main([*argv, "--dry-run"]) == 0
    plan = capsys.readouterr().out.splitlines()
    assert plan[-1] == "4 cells: 4 done (3 failed), 0 pending; 0 backdoored models to train"
    assert sum(line.split()[:2] == ["failed", "failed"] for line in plan) == 2  # status, artifact columns
    # Resumed: the failed cells stand like finished ones (the same spec fails the same way); still exit 1.
    assert main(argv) == 1
    out, _ = capsys.readouterr()
    assert "4 of 4 cells already have records (cached; 3 of them failed" in out and "training backdoored" not in out


def test_a_defense_that_leaves_non_finite_weights_is_a_failed_cell(tmp_path, monkeypatch):
    # A defense with its own loop (not Task.fit) can end with NaN weights; scoring them would record argmax
    # over NaN logits as accuracy and ASR.
    from defenses.none import NoDefense

    def nan_purify(self, model, clean, task, *, rng):
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return model

    monkeypatch.setattr(NoDefense, "purify", nan_purify)
    (tmp_path / "m.yaml").write_text(tiny_matrix("[badnets]", "[none]"))
    assert main(["run", str(tmp_path / "m.yaml"), "--results", str(tmp_path / "r"), "--cache", str(tmp_path / "c"),
                 "--no-sharpness"]) == 1
    (record,) = ResultStore(tmp_path / "r").all()
    assert record["status"] == "failed" and record["metrics"] is None
    assert "the defense diverged (weights not finite after the defense)" in record["reason"]
