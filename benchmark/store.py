"""The result store: one JSON record per finished cell, written atomically, read back with a schema check.

Each stored record carries `digest`, the sha256 of its canonical JSON without that field; a record whose
content does not match its digest (edited, truncated, bit-rotted) is not trusted: it counts as missing and
its cell is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from benchmark._io import atomic_write_json
from benchmark._schema import Record, check_record


class ResultStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.records = self.root / "records"

    def path(self, cell_id: str) -> Path:
        return self.records / f"{cell_id}.json"

    def get(self, cell_id: str) -> Record | None:
        """The record if present and valid; a corrupt or outdated one counts as missing (and is recomputed)."""
        path = self.path(cell_id)
        if not path.is_file():
            return None
        try:
            rec = json.loads(path.read_text())
            if not isinstance(rec, dict) or rec.pop("digest", None) != digest(rec):
                raise ValueError("content does not match its digest")
            return check_record(rec)
        except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as err:
            print(f"warning: ignoring invalid record {path} ({err}); the cell will be recomputed", file=sys.stderr)
            return None

    def put(self, record: Record) -> Path:
        check_record(record)
        path = self.path(record["cell_id"])
        body = {k: v for k, v in record.items() if k != "digest"}
        atomic_write_json(path, {**body, "digest": digest(body)})
        return path

    def all(self) -> list[Record]:
        out = []
        for path in sorted(self.records.glob("*.json")):
            rec = self.get(path.stem)
            if rec is not None:
                out.append(rec)
        return out


def digest(record: dict) -> str:
    """sha256 of the record's canonical JSON (sorted keys, no whitespace), `digest` itself excluded."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
