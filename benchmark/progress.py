"""Progress bars for every training loop (rich).  Shown only when stderr is a terminal and FIPBENCH_PROGRESS
is not "0"; progress is a display setting, so it is not part of any config (and of no cache key)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(desc: str, total: int, enabled: bool = True,
                 figure: str = "loss") -> Iterator[Callable[[float], None]]:
    """`with progress_bar(desc, total) as tick: ... tick(value)` once per step; `figure` names the value shown."""
    if not enabled or not sys.stderr.isatty() or os.environ.get("FIPBENCH_PROGRESS") == "0":
        yield lambda loss: None
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
