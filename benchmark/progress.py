"""Progress for every training loop.  On a terminal: a rich progress bar.  Otherwise (a log file, nohup, CI, a
pool or Ray worker): one plain line on stderr at most every FIPBENCH_PROGRESS_SECONDS (default 60) while a
loop runs, so that a long run written to a log still shows where it is; loops shorter than that print nothing.
FIPBENCH_PROGRESS=0 turns both off.  Progress is a display setting, so it is not part of any config (and of no
cache key)."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator

DEFAULT_SECONDS = 60.0


def _interval() -> float:
    raw = os.environ.get("FIPBENCH_PROGRESS_SECONDS", "")
    try:
        value = float(raw) if raw else DEFAULT_SECONDS
    except ValueError:
        raise ValueError(f"FIPBENCH_PROGRESS_SECONDS={raw!r} is not a number of seconds; "
                         f"unset it or give e.g. 30") from None
    if not value > 0:
        raise ValueError(f"FIPBENCH_PROGRESS_SECONDS={raw!r} must be > 0; unset it or give e.g. 30")
    return value


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def log_ticker(desc: str, total: int, figure: str, every: float,
               clock: Callable[[], float] = time.monotonic) -> Callable[[float], None]:
    """A tick function that writes `desc: done/total (pct %), figure value, elapsed, ~left` to stderr once at
    least `every` seconds have passed since the loop started or since its last line."""
    start = last = clock()
    done = 0

    def tick(value: float) -> None:
        nonlocal done, last
        done += 1
        now = clock()
        if now - last < every:
            return
        last = now
        elapsed = now - start
        left = elapsed / done * (total - done) if total > 0 else math.nan
        pct = f" ({100 * done / total:.0f} %)" if total > 0 else ""
        eta = f", ~{_clock(left)} left" if math.isfinite(left) else ""
        print(f"          {desc}: {done}/{total}{pct}, {figure} {value:.3f}, {_clock(elapsed)} elapsed{eta}",
              file=sys.stderr, flush=True)

    return tick


@contextlib.contextmanager
def progress_bar(desc: str, total: int, enabled: bool = True,
                 figure: str = "loss") -> Iterator[Callable[[float], None]]:
    """`with progress_bar(desc, total) as tick: ... tick(value)` once per step; `figure` names the value shown."""
    if not enabled or os.environ.get("FIPBENCH_PROGRESS") == "0":
        yield lambda value: None
        return
    if not sys.stderr.isatty():
        yield log_ticker(desc, total, figure, _interval())
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn(figure + " {task.fields[loss]:.3f}"), TimeRemainingColumn(), transient=True) as bar:
        tid = bar.add_task(desc, total=total, loss=float("nan"))
        yield lambda loss: bar.update(tid, advance=1, loss=loss)
