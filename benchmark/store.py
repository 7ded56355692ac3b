"""The result store: one JSON record per finished cell, written atomically, read back with a schema check."""

from __future__ import annotations

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
            return check_record(json.loads(path.read_text()))
        except (ValueError, json.JSONDecodeError) as err:
            print(f"warning: ignoring invalid record {path} ({err}); the cell will be recomputed", file=sys.stderr)
            return None

    def put(self, record: Record) -> Path:
        check_record(record)
        path = self.path(record["cell_id"])
        atomic_write_json(path, record)
        return path

    def all(self) -> list[Record]:
        out = []
        for path in sorted(self.records.glob("*.json")):
            rec = self.get(path.stem)
            if rec is not None:
                out.append(rec)
        return out
