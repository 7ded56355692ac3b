"""A Ctrl-C that lands while a safetensors file loads must stay a KeyboardInterrupt (exit 130, "run again to
resume"), never turn into the one-line "not a valid safetensors file" error (exit 2)."""

from __future__ import annotations

import random
import signal
import time

import pytest
import torch
from safetensors.torch import save_file

from benchmark._io import interrupts_deferred
from benchmark.cache import read_state
from benchmark.errors import FipbenchError

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="POSIX signals")


def _interrupted_loads(path, loads: int) -> dict[str, int]:
    """Load `path` `loads` times, each hit by one Ctrl-C at a random moment inside the load; count how each
    load ended.  A one-shot SIGALRM timer marks the moment (the kernel delivers it even while safetensors'
    Rust code holds the GIL, which a sender thread could not) and its handler raises SIGINT there, so the
    SIGINT handler runs inside safetensors' callback as a real Ctrl-C would.  Both handlers act only while a
    load is under way, so a signal that arrives after a load finished cannot break the counting itself."""
    armed = False
    counts = {"ok": 0, "interrupt": 0, "error": 0}

    def on_alarm(signum, frame):
        if armed:
            signal.raise_signal(signal.SIGINT)

    def on_interrupt(signum, frame):
        if armed:
            raise KeyboardInterrupt

    started = time.perf_counter()
    for _ in range(3):
        read_state(path)
    duration = (time.perf_counter() - started) / 3
    rng = random.Random(0)
    previous = signal.signal(signal.SIGINT, on_interrupt), signal.signal(signal.SIGALRM, on_alarm)
    try:
        for _ in range(loads):
            outcome = "ok"
            try:
                armed = True
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-5, duration))
                read_state(path)
            except KeyboardInterrupt:
                outcome = "interrupt"
            except FipbenchError:
                outcome = "error"
            finally:
                armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
            counts[outcome] += 1
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGALRM, previous[1])
    return counts


def test_ctrl_c_during_a_safetensors_load_stays_an_interrupt(tmp_path):
    # Many small tensors: safetensors calls back into Python once per tensor, the window the bug needed
    # (unguarded, about half of such interrupts came out as a ValueError, i.e. a FipbenchError here).
    path = tmp_path / "model.safetensors"
    save_file({f"w{i}": torch.randn(32, 32) for i in range(300)}, str(path))
    counts = _interrupted_loads(path, loads=300)
    assert counts["error"] == 0, counts
    assert counts["interrupt"] > 50, counts  # the interrupts did land inside the loads


def test_the_guard_delivers_a_held_interrupt_when_the_block_ends():
    # Python's own Ctrl-C handler, whatever this process inherited: a job started in the background
    # (`cmd &` in a script) inherits SIGINT ignored, and the guard rightly drops an ignored interrupt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                signal.raise_signal(signal.SIGINT)
                held = True  # reached: the interrupt waited for the block to end
        assert held
        with interrupts_deferred():  # nothing pending: nothing raised
            pass
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_guard_keeps_an_ignored_interrupt_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # restored, and nothing raised
    finally:
        signal.signal(signal.SIGINT, previous)
