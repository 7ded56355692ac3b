"""End-to-end smoke test of the engine: a tiny matrix through the CLI writes valid records and a leaderboard."""

from __future__ import annotations

import json

from benchmark._schema import check_record
from _helpers import tiny_matrix

from benchmark.cli import main

TINY = tiny_matrix("[badnets]", "[none, {name: finetune, config: {fit: {steps: 3}}}]", epochs=2)


def test_tiny_matrix_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("FIPBENCH_PROGRESS", "0")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    args = ["run", str(cfg), "--results", str(tmp_path / "results"), "--cache", str(tmp_path / "cache")]
    assert main(args) == 0
    records = sorted((tmp_path / "results" / "records").glob("*.json"))
    assert len(records) == 2
    for path in records:
        rec = check_record(json.loads(path.read_text()))
        assert rec["status"] == "ok"
        assert 0.0 <= rec["metrics"]["clean"] <= 1.0
        assert rec["metrics"]["asr"] is not None
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one artifact shared by both defenses
    board = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "badnets" in board and "finetune" in board
    # A second run recomputes nothing.
    before = {p.name: p.read_text() for p in records}
    assert main(args) == 0
    assert {p.name: p.read_text() for p in records} == before
