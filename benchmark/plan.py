"""Cell selection and the run plan: `--only` / `--skip` filters and `--dry-run`'s cached/pending table.

A filter is `FIELD=PATTERN[,PATTERN...]` or a bare `PATTERN`.  Fields: task, dataset, model, attack, defense,
seed, artifact; attack and defense match the registry name or the matrix label, artifact the backdoored model's
content address (every defense cell of one trained model); patterns are shell globs (`badnets*`).
A bare pattern matches any field.  Several `--only` filters must all match (patterns within one are
alternatives); a cell matching any `--skip` filter is dropped.

    fipbench run paper --only task=point_cloud --only defense=fip,fast_fip --skip attack=pcba --dry-run
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Sequence

from benchmark.errors import FipbenchError, unknown_name
from benchmark.spec import RunSpec

FIELDS = ("task", "dataset", "model", "attack", "defense", "seed", "artifact")


@dataclasses.dataclass(frozen=True)
class CellFilter:
    field: str | None  # None: any field
    patterns: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, flag: str = "--only") -> CellFilter:
        field, sep, value = text.partition("=")
        if not sep:
            field, value = "", text
        field = field.strip()
        if field and field not in FIELDS:
            raise unknown_name(f"{flag} field", field, FIELDS, f"{flag} {text}")
        patterns = tuple(p.strip() for p in value.split(",") if p.strip())
        if not patterns:
            raise FipbenchError(f"{flag} {text!r}: no pattern; write FIELD=PATTERN, e.g. {flag} defense=fip")
        return cls(field or None, patterns)

    def values(self, spec: RunSpec) -> list[str]:
        """The strings of `spec` this filter looks at."""
        # callables: the artifact key resolves every config and hashes it, so only a filter that asks pays for it
        by_field = {"task": lambda: [spec.task], "dataset": lambda: [spec.dataset], "model": lambda: [spec.model],
                    "attack": lambda: [spec.attack.name, spec.attack.label],
                    "defense": lambda: [spec.defense.name, spec.defense.label], "seed": lambda: [str(spec.seed)],
                    "artifact": lambda: [spec.artifact_key()]}
        if self.field is not None:
            return by_field[self.field]()
        return [v for get in by_field.values() for v in get()]

    def matches(self, spec: RunSpec) -> bool:
        return any(fnmatch.fnmatchcase(v, p) for v in self.values(spec) for p in self.patterns)

    def __str__(self) -> str:
        return f"{self.field}={','.join(self.patterns)}" if self.field else ",".join(self.patterns)


def select(cells: Sequence[RunSpec], only: Iterable[str] = (), skip: Iterable[str] = ()) -> list[RunSpec]:
    """The cells that pass every `only` filter and no `skip` filter.  A filter that matches no cell of the
    matrix is an error (a typo would otherwise silently run nothing, or everything)."""
    only_f = [CellFilter.parse(t, "--only") for t in only]
    skip_f = [CellFilter.parse(t, "--skip") for t in skip]
    for flag, filters in (("--only", only_f), ("--skip", skip_f)):
        for f in filters:
            if not any(f.matches(c) for c in cells):
                seen = sorted({v for c in cells for v in f.values(c)})
                shown = ", ".join(seen[:12]) + (", ..." if len(seen) > 12 else "")
                raise FipbenchError(f"{flag} {f} matches no cell of this matrix; values there: {shown}")
    return [c for c in cells if all(f.matches(c) for f in only_f) and not any(f.matches(c) for f in skip_f)]


def plan_rows(cells: Sequence[RunSpec], store, cache) -> list[dict[str, str]]:
    """One row per cell: its status (done = a valid record exists, failed = a record of a failed cell, pending
    otherwise) and whether its attack artifact is cached, will be trained by this run, is shared with an earlier
    cell of the plan, or failed to train before (the cache remembers it; its cells fail without training)."""
    rows, planned = [], set()
    for spec in cells:
        key = spec.artifact_key()
        record = None if store is None else store.get(spec.cell_id())
        done = record is not None
        if cache.has(key):
            artifact = "cached"
        elif cache.failure(key) is not None:
            artifact = "failed"
        elif key in planned:
            artifact = "shared"
        else:
            artifact = "-" if done else "train"
        if not done:
            planned.add(key)
        status = "pending" if record is None else "failed" if record["status"] == "failed" else "done"
        rows.append({"status": status, "artifact": artifact, "task": spec.task,
                     "dataset": spec.dataset, "model": spec.model, "attack": spec.attack.label,
                     "defense": spec.defense.label, "seed": str(spec.seed), "cell_id": spec.cell_id()})
    return rows


def format_plan(rows: list[dict[str, str]]) -> str:
    cols = ["status", "artifact", "task", "dataset", "model", "attack", "defense", "seed", "cell_id"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) if rows else len(c) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in cols).rstrip() for r in rows]
    pending = sum(r["status"] == "pending" for r in rows)
    failed = sum(r["status"] == "failed" for r in rows)
    trains = sum(r["artifact"] == "train" for r in rows)
    lines.append(f"{len(rows)} cells: {len(rows) - pending} done{f' ({failed} failed)' if failed else ''}, "
                 f"{pending} pending; "
                 f"{trains} backdoored model{'' if trains == 1 else 's'} to train")
    return "\n".join(lines)
