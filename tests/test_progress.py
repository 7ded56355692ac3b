"""benchmark.progress: the plain progress lines written when stderr is not a terminal."""

from __future__ import annotations

import pytest

from benchmark.progress import log_ticker, progress_bar


def test_log_ticker_writes_a_line_per_interval(capsys):
    now = [0.0]
    tick = log_ticker("train badnets", 10, "loss", every=60.0, clock=lambda: now[0])
    for step in range(10):
        now[0] = 25.0 * (step + 1)  # 25 s per step: a line at steps 3 (75 s), 6 (150 s) and 9 (225 s)
        tick(1.0 / (step + 1))
    lines = capsys.readouterr().err.splitlines()
    assert [line.strip() for line in lines] == [
        "train badnets: 3/10 (30 %), loss 0.333, 1:15 elapsed, ~2:55 left",
        "train badnets: 6/10 (60 %), loss 0.167, 2:30 elapsed, ~1:40 left",
        "train badnets: 9/10 (90 %), loss 0.111, 3:45 elapsed, ~0:25 left",
    ]


def test_short_loops_print_nothing(capsys, monkeypatch):
    monkeypatch.delenv("FIPBENCH_PROGRESS", raising=False)  # captured stderr is not a terminal: log mode
    with progress_bar("fit", 5) as tick:
        for _ in range(5):
            tick(0.5)
    assert capsys.readouterr().err == ""


def test_interval_from_the_environment(capsys, monkeypatch):
    monkeypatch.delenv("FIPBENCH_PROGRESS", raising=False)
    monkeypatch.setenv("FIPBENCH_PROGRESS_SECONDS", "1e-9")
    with progress_bar("fit", 3, figure="max |δ|") as tick:
        for _ in range(3):
            tick(0.25)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and err[-1].strip().startswith("fit: 3/3 (100 %), max |δ| 0.250, 0:00 elapsed")
    monkeypatch.setenv("FIPBENCH_PROGRESS", "0")  # off, whatever the interval
    with progress_bar("fit", 3) as tick:
        tick(0.25)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("raw", ["soon", "0", "-5"])
def test_bad_interval_is_a_one_line_error(monkeypatch, raw):
    monkeypatch.delenv("FIPBENCH_PROGRESS", raising=False)
    monkeypatch.setenv("FIPBENCH_PROGRESS_SECONDS", raw)
    with pytest.raises(ValueError, match=r"^FIPBENCH_PROGRESS_SECONDS=.*unset it or give e\.g\. 30$"):
        with progress_bar("fit", 3):
            pass
