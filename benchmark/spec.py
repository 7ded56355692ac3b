"""Run specs and the YAML run matrix.

A matrix file lists groups; each group fixes (task, dataset, model, task_config, train) and crosses its
attacks with its defenses and the seeds.  One `RunSpec` is one benchmark cell.

    name: quick
    seeds: [0]
    groups:
      - task: image_classification
        dataset: digits
        model: small_cnn
        task_config: {holdout_fraction: 0.05}
        train: {epochs: 30, lr: 0.05}            # backdoor training (tasks.base.FitConfig)
        attacks: [none, badnets, {name: badnets, label: badnets-a2a, config: {label_mode: all2all}}]
        defenses: [none, finetune, fip, {name: fast_fip, config: {eta_f: 0.5}}]

Everything is validated when the file is loaded: unknown keys, unknown names (with close matches), bad values,
duplicate labels; each problem is one line naming the file and the entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from benchmark.config import stable_hash
from benchmark.errors import FipbenchError, unknown_name
from benchmark.registries import ATTACKS, DATASETS, DEFENSES, MODELS, TASKS

MATRIX_KEYS = ("name", "seeds", "groups", "description", "include")
GROUP_KEYS = ("task", "dataset", "model", "task_config", "train", "attacks", "defenses", "seeds")
ENTRY_KEYS = ("name", "label", "config")


@dataclasses.dataclass(frozen=True)
class Component:
    """An attack or defense entry: registry name, display label, raw config overrides."""

    name: str
    label: str
    config: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class RunSpec:
    task: str
    dataset: str
    model: str
    attack: Component
    defense: Component
    seed: int
    task_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def resolved(self) -> dict[str, Any]:
        """Every config with defaults filled in, plus component versions: what identifies a result."""
        task_cls, attack_cls, defense_cls = (TASKS.get(self.task), ATTACKS.get(self.attack.name),
                                             DEFENSES.get(self.defense.name))
        from tasks.base import FitConfig

        return {
            "task": {"name": self.task, "dataset": self.dataset, "model": self.model, "version": task_cls.version,
                     "config": task_cls.Config.from_dict(self.task_config, "task_config").to_dict()},
            "train": FitConfig.from_dict(self.train, "train").to_dict(),
            "attack": {"name": self.attack.name, "version": attack_cls.version,
                       "config": attack_cls.Config.from_dict(self.attack.config, f"attack {self.attack.label}").to_dict()},
            "defense": {"name": self.defense.name, "version": defense_cls.version,
                        "config": defense_cls.Config.from_dict(self.defense.config,
                                                               f"defense {self.defense.label}").to_dict()},
            "seed": self.seed,
        }

    def artifact_key(self) -> str:
        """Content address of the backdoored model: everything but the defense."""
        r = self.resolved()
        return stable_hash({k: r[k] for k in ("task", "train", "attack", "seed")})

    def cell_id(self) -> str:
        r = self.resolved()
        return f"{self.task}-{self.attack.label}-{self.defense.label}-s{self.seed}-{stable_hash(r, 12)}"

    def describe(self) -> str:
        return (f"{self.task}/{self.dataset}/{self.model} attack={self.attack.label} "
                f"defense={self.defense.label} seed={self.seed}")


@dataclasses.dataclass(frozen=True)
class Matrix:
    name: str
    cells: tuple[RunSpec, ...]
    source: str


def load_matrix(path: str | Path, _stack: tuple[Path, ...] = ()) -> Matrix:
    path = Path(path)
    if not path.is_file():
        raise FipbenchError(f"config {str(path)!r} not found; pass a YAML matrix file or a preset name "
                            f"(see configs/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise FipbenchError(f"{path}: malformed YAML{at} ({getattr(err, 'problem', err)}); fix the syntax") from None
    return parse_matrix(data, str(path), _stack=(*_stack, path.resolve()))


def _included(data: Mapping[str, Any], where: str, stack: tuple[Path, ...]) -> list[RunSpec]:
    """Cells of the matrices listed under `include:` (paths relative to the including file), each with its
    own seeds, in order."""
    entries = data.get("include") or []
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise FipbenchError(f"{where}: 'include' must be a list of matrix file paths, got {entries!r}")
    cells: list[RunSpec] = []
    for entry in entries:
        path = (Path(where).parent / entry).resolve()
        if path in stack:
            raise FipbenchError(f"{where}: include {entry!r} includes itself (cycle); remove it")
        if not path.is_file():
            raise FipbenchError(f"{where}: included matrix {entry!r} not found (looked for {path})")
        cells.extend(load_matrix(path, stack).cells)
    return cells


def parse_matrix(data: Any, where: str, _stack: tuple[Path, ...] = ()) -> Matrix:
    if not isinstance(data, Mapping):
        raise FipbenchError(f"{where}: a matrix must be a mapping with keys {', '.join(MATRIX_KEYS)}")
    _check_keys(data, MATRIX_KEYS, "matrix key", where)
    seeds = _seeds(data.get("seeds", [0]), where)
    cells: list[RunSpec] = _included(data, where, _stack) if "include" in data else []
    groups = data.get("groups", [] if cells else None)
    if not isinstance(groups, list) or not (groups or cells):
        raise FipbenchError(f"{where}: 'groups' must be a non-empty list of task groups (or give 'include')")
    for gi, group in enumerate(groups):
        gw = f"{where} groups[{gi}]"
        if not isinstance(group, Mapping):
            raise FipbenchError(f"{gw}: each group must be a mapping with keys {', '.join(GROUP_KEYS)}")
        _check_keys(group, GROUP_KEYS, "group key", gw)
        for key in ("task", "dataset", "model", "attacks", "defenses"):
            if key not in group:
                raise FipbenchError(f"{gw}: missing required key {key!r}")
        for reg, key in ((TASKS, "task"), (DATASETS, "dataset"), (MODELS, "model")):
            if group[key] not in reg:
                raise unknown_name(reg.kind, str(group[key]), reg.names(), gw)
        attacks = _components(group["attacks"], ATTACKS, f"{gw} attacks")
        defenses = _components(group["defenses"], DEFENSES, f"{gw} defenses")
        for mapping_key in ("task_config", "train"):
            if not isinstance(group.get(mapping_key, {}), Mapping):
                raise FipbenchError(f"{gw}: {mapping_key!r} must be a mapping")
        # A group's own `seeds` replace the matrix's (e.g. more seeds for the one setting a claim rests on).
        for seed in _seeds(group["seeds"], gw) if "seeds" in group else seeds:
            for attack in attacks:
                for defense in defenses:
                    cells.append(RunSpec(task=group["task"], dataset=group["dataset"], model=group["model"],
                                         attack=attack, defense=defense, seed=seed,
                                         task_config=dict(group.get("task_config") or {}),
                                         train=dict(group.get("train") or {})))
    return Matrix(name=str(data.get("name", Path(where).stem)), cells=tuple(cells), source=where)


def validate(matrix: Matrix) -> None:
    """Build every config once (imports the components): catches bad keys and values before any training."""
    seen: dict[str, str] = {}
    for spec in matrix.cells:
        try:
            cid = spec.cell_id()
        except FipbenchError as err:
            raise FipbenchError(f"{matrix.source}: {spec.describe()}: {err}") from None
        task_cls, attack_cls = TASKS.get(spec.task), ATTACKS.get(spec.attack.name)
        if task_cls.modality not in attack_cls.modalities:
            raise FipbenchError(f"{matrix.source}: {spec.describe()}: attack {spec.attack.name!r} does not support "
                                f"task {spec.task!r} (modality {task_cls.modality!r}; it supports "
                                f"{', '.join(sorted(attack_cls.modalities))}); pick an attack listed for that task "
                                f"in `fipbench ls attacks`")
        if cid in seen:
            raise FipbenchError(f"{matrix.source}: cells {seen[cid]!r} and {spec.describe()!r} are identical; "
                                f"remove the duplicate entry")
        seen[cid] = spec.describe()


def _seeds(seeds: Any, where: str) -> list[int]:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise FipbenchError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
    return seeds  # a repeated seed makes identical cells, which `validate` names


def _components(entries: Any, registry: Any, where: str) -> list[Component]:
    if not isinstance(entries, list) or not entries:
        raise FipbenchError(f"{where}: must be a non-empty list of names or {{name, label, config}} mappings")
    out: list[Component] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise FipbenchError(f"{where}[{i}]: expected a name or a mapping with 'name', got {entry!r}")
        _check_keys(entry, ENTRY_KEYS, "entry key", f"{where}[{i}]")
        name = entry["name"]
        if name not in registry:
            raise unknown_name(registry.kind, str(name), registry.names(), f"{where}[{i}]")
        config = entry.get("config") or {}
        if not isinstance(config, Mapping):
            raise FipbenchError(f"{where}[{i}]: 'config' must be a mapping, got {config!r}")
        out.append(Component(name=name, label=str(entry.get("label", name)), config=dict(config)))
    labels = [c.label for c in out]
    for label in labels:
        if labels.count(label) > 1:
            raise FipbenchError(f"{where}: label {label!r} is used twice; give each variant its own 'label'")
    return out


def _check_keys(mapping: Mapping[str, Any], allowed: tuple[str, ...], kind: str, where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise unknown_name(kind, str(key), allowed, where)
