"""User-facing errors: one line naming the problem and the fix.

Everything a user can get wrong (a name, a key, a file) raises `FipbenchError`; the CLI prints its message on
one line and exits with status 2, without a traceback.  Programming errors stay ordinary exceptions.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FipbenchError(Exception):
    """A problem with the user's input; `str(err)` is a single line that says how to fix it."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # force one line


class NotApplicable(FipbenchError):
    """A defense cannot run on this model: its architecture lacks what the method needs (e.g. Fine-Pruning's
    last conv stage, CLP's Conv-BatchNorm pairs).  The runner records the cell as skipped with this message as
    the reason, as it does for an unsupported modality, and the run goes on."""


class Diverged(FipbenchError):
    """Training left the finite numbers: a loss, a model output or a weight became NaN or infinite (an attack's
    training or a defense's).  Running the same spec again reproduces it, so the runner records the cell as
    failed with this message as the reason and the run goes on; any other error stops the run."""


def unknown_name(kind: str, name: str, known: Iterable[str], where: str = "") -> FipbenchError:
    """`unknown attack 'badnet' (did you mean 'badnets'?); known: badnets, blend`."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    loc = f" in {where}" if where else ""
    return FipbenchError(f"unknown {kind} {name!r}{loc}{hint}; known: {', '.join(known) or '(none)'}")
