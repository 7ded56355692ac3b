"""Sharpness in records, in the leaderboard (column + plot) and through `fipbench sharpness MODEL`."""

from __future__ import annotations

import pytest

from benchmark.cli import main
from benchmark.store import ResultStore
from defenses.fisher import sharpness

TINY = """
name: tiny-sharp
seeds: [0]
groups:
  - task: image_classification
    dataset: digits
    model: small_cnn
    task_config: {holdout_fraction: 0.05}
    train: {epochs: 2, batch_size: 64, lr: 0.05}
    attacks: [badnets]
    defenses: [none, {name: finetune, config: {fit: {steps: 20, lr: 0.05}}}]
"""
KEYS = {"hessian_max_eig", "hessian_trace", "fisher_trace"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharp")
    (root / "m.yaml").write_text(TINY)
    assert main(["run", str(root / "m.yaml"), "--results", str(root / "r"), "--cache", str(root / "c")]) == 0
    return root


def test_records_carry_sharpness_before_and_after(run):
    recs = {r["spec"]["defense"]: r for r in ResultStore(run / "r").all()}
    for rec in recs.values():
        m = rec["metrics"]
        assert set(m["sharpness_before"]) == KEYS and set(m["sharpness_after"]) == KEYS
        assert m["sharpness_before"]["hessian_max_eig"] > 0 and m["sharpness_before"]["fisher_trace"] > 0
    # `none` leaves the model alone: the same figures (same probes) before and after.
    none = recs["none"]["metrics"]
    assert none["sharpness_after"] == pytest.approx(none["sharpness_before"], rel=1e-4)
    # Both cells share one artifact, so one "before".
    assert recs["finetune"]["metrics"]["sharpness_before"] == none["sharpness_before"]
    assert recs["finetune"]["metrics"]["sharpness_after"] != none["sharpness_after"]


def test_leaderboard_has_a_sharpness_column_and_plot(run):
    text = (run / "r" / "leaderboard.md").read_text()
    assert "λmax" in text and "Tr H" in text and " → " in text
    png = (run / "r" / "sharpness.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "eig_before_mean" in (run / "r" / "leaderboard.csv").read_text().splitlines()[0]


def test_no_sharpness_flag_records_none(tmp_path):
    (tmp_path / "m.yaml").write_text(TINY.replace("finetune, config: {fit: {steps: 20, lr: 0.05}}",
                                                  "finetune, config: {fit: {steps: 1}}"))
    assert main(["run", str(tmp_path / "m.yaml"), "--results", str(tmp_path / "r"), "--cache",
                 str(tmp_path / "c"), "--no-sharpness"]) == 0
    for rec in ResultStore(tmp_path / "r").all():
        assert rec["metrics"]["sharpness_before"] is None and rec["metrics"]["sharpness_after"] is None
    assert not (tmp_path / "r" / "sharpness.png").exists()


def test_cli_on_an_artifact_and_on_a_weights_file(run, capsys, task):
    (artifact,) = [d for d in (run / "c").iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert main(["sharpness", artifact.name, "--cache", str(run / "c")]) == 0
    out = capsys.readouterr().out
    assert all(k in out for k in KEYS)
    assert main(["sharpness", str(artifact / "model.safetensors"), "--dataset", "digits", "--arch", "small_cnn",
                 "--batch-size", "32", "--split", "test"]) == 0
    assert "on 32 test samples" in capsys.readouterr().out
    assert main(["sharpness", str(artifact / "model.safetensors")]) == 2  # needs --dataset/--arch
    assert "--dataset and --arch" in capsys.readouterr().err


def test_sharpness_counts_frozen_parameters_too(task, splits, backdoored_model):
    from benchmark.rng import generator

    ref = sharpness(backdoored_model, splits.holdout, task, generator=generator(0, "s"), batch_size=32)
    for p in list(backdoored_model.parameters())[:3]:
        p.requires_grad_(False)
    again = sharpness(backdoored_model, splits.holdout, task, generator=generator(0, "s"), batch_size=32)
    assert again == pytest.approx(ref, rel=1e-5)
    assert not any(p.requires_grad for p in list(backdoored_model.parameters())[:3])  # left as found
