"""The result record: one JSON file per finished cell under results/records/.  This module is the schema.

Bump SCHEMA_VERSION when a field changes meaning; `check_record` refuses records of other versions (they are
recomputed, not misread).  On disk a record also carries `digest` (benchmark/store.py), the sha256 of the rest.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

SCHEMA_VERSION = 2  # 2: metrics.sharpness_before / sharpness_after


class SpecRecord(TypedDict):
    task: str
    dataset: str
    model: str
    attack: str  # registry name
    attack_label: str  # display label from the matrix (e.g. "badnets-a2a")
    defense: str
    defense_label: str
    seed: int


class Versions(TypedDict):
    fipbench: str
    task: int
    attack: int
    defense: int
    schema: int


class Metrics(TypedDict):
    metric_name: str  # the task's clean metric: "acc" (top-1), "map50", "bleu", ...
    clean: float  # clean metric after the defense, on the clean test split
    clean_before: float  # same, on the backdoored model
    asr: float | None  # attack success rate after the defense (None for attack "none")
    asr_before: float | None
    ra: float | None  # robust accuracy: triggered inputs still given their true answer
    ra_before: float | None
    der: float | None  # BackdoorBench's defense effectiveness rating, in [0, 1]
    extra: dict[str, float]  # the task's other clean metrics after the defense
    # Sharpness of the task loss on a fixed clean batch (the first 128 holdout samples; see
    # defenses.fisher.sharpness): {"hessian_max_eig", "hessian_trace", "fisher_trace"}; None when the run was
    # started with --no-sharpness.
    sharpness_before: dict[str, float] | None  # the backdoored model
    sharpness_after: dict[str, float] | None  # the purified model


class Timings(TypedDict):
    defense_seconds: float  # wall time of defense.purify
    attack_train_seconds: float  # wall time to train the backdoored model (from its manifest)
    max_rss_mb: float  # peak resident memory during purify (Linux; elsewhere the process peak), see benchmark/memory.py
    cuda_peak_mb: float | None  # peak CUDA memory during purify, when on GPU


class Environment(TypedDict):
    torch: str
    python: str
    platform: str
    device: str
    git_commit: str | None
    # What decides floating-point rounding, so that a re-trained model's drift can be traced to its host (records
    # from before 2026-12-05 lack them): CPU model, torch's CPU kernel ISA ("AVX2", "AVX512", ...), intra-op threads.
    cpu: NotRequired[str]
    cpu_capability: NotRequired[str]
    threads: NotRequired[int]


class Record(TypedDict):
    schema_version: int
    cell_id: str
    artifact_key: str
    # ok: metrics and timings; skipped: the defense does not apply (modality, architecture); failed: the attack's
    # or the defense's training diverged (timings only when the defense ran).  Neither of the last two has metrics.
    status: Literal["ok", "skipped", "failed"]
    reason: str | None  # why a cell was skipped or failed (one line)
    spec: SpecRecord
    config: dict[str, Any]  # resolved configs of task, train, attack, defense (defaults filled in)
    config_hash: str
    versions: Versions
    metrics: Metrics | None
    defense_report: dict[str, Any]  # tuned_params, steps, ... as reported by the defense
    timings: Timings | None
    environment: Environment
    poisoned_index_hash: str | None  # None only where the attack failed before it poisoned anything
    created: str  # ISO-8601 UTC




def check_record(rec: Any) -> Record:
    """Structural check of a loaded record; raises ValueError naming the first bad field."""
    if not isinstance(rec, dict):
        raise ValueError("record is not a JSON object")
    if rec.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"schema_version {rec.get('schema_version')!r} != {SCHEMA_VERSION}")
    _check_typed(rec, Record, "record")
    _check_typed(rec["spec"], SpecRecord, "spec")
    _check_typed(rec["versions"], Versions, "versions")
    if rec["status"] not in ("ok", "skipped", "failed"):
        raise ValueError(f"status {rec['status']!r} is not ok, skipped or failed")
    if rec["status"] != "ok" and not isinstance(rec["reason"], str):
        raise ValueError(f"a {rec['status']!r} record needs its reason")
    if rec["status"] == "ok":
        if rec["metrics"] is None or rec["timings"] is None:
            raise ValueError("an 'ok' record needs metrics and timings")
        _check_typed(rec["metrics"], Metrics, "metrics")
        _check_typed(rec["timings"], Timings, "timings")
    return rec  # type: ignore[return-value]


def _check_typed(obj: Any, td: type, where: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is not an object")
    missing = [k for k in td.__annotations__ if k not in obj]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
