"""The cell runner: splits -> attack artifact (cached) -> defense -> metrics -> record.

Cells whose record exists are skipped (unless `force`), so an interrupted run resumes where it stopped; an
attack artifact is shared by every defense of the same (task, dataset, model, attack, seed, train config).
A cell whose training diverges (the attack's or the defense's, see `Diverged`) is recorded with status "failed"
and its reason, like a finished one, and the run goes on; a backdoored model that failed to train is
remembered in the cache, so its other cells fail without training it again.
"""

from __future__ import annotations

import copy
import datetime as dt
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from benchmark._schema import SCHEMA_VERSION, Record
from benchmark.cache import ArtifactCache
from benchmark.config import stable_hash
from benchmark.errors import Diverged, NotApplicable
from benchmark.memory import PeakMemory
from benchmark.registries import ATTACKS, DEFENSES, TASKS
from benchmark.rng import generator
from benchmark.spec import RunSpec
from benchmark.store import ResultStore
from tasks.base import FitConfig, Task


class Runner:
    def __init__(self, results: Path, cache: Path, *, data_root: Path | None = None, device: str = "cpu",
                 force: bool = False, sharpness: bool = True, log: Callable[[str], None] = print):
        self.store = ResultStore(results)
        self.cache = ArtifactCache(cache)
        self.data_root, self.device, self.force, self.log = data_root, device, force, log
        self.sharpness = sharpness  # Hessian / Fisher figures before and after each defense (costly on big models)
        self._tasks: dict[str, Task] = {}
        self._no_second_order: set[str] = set()  # artifact keys whose model has no sharpness figures

    # -- public -------------------------------------------------------------------------------------------
    def run(self, cells: Iterable[RunSpec], executor: Any = None) -> list[Record]:
        """Run the cells without a record (all with `force`) on `executor` (default: in this process) and store
        each record as it arrives; returns the records of all `cells`, in order."""
        from benchmark.executors.local import LocalExecutor

        cells = list(cells)
        records: dict[str, Record] = {}
        pending: list[RunSpec] = []
        for spec in cells:
            existing = None if self.force else self.store.get(spec.cell_id())
            if existing is None:
                pending.append(spec)
            else:
                records[spec.cell_id()] = existing
        if records:
            failed = sum(r["status"] == "failed" for r in records.values())
            self.log(f"          {len(records)} of {len(cells)} cells already have records (cached"
                     + (f"; {failed} of them failed, --force runs them again)" if failed else ")"))
            # A cell id names what was run, not where: figures made on another kind of device stand as they are.
            here = str(self.device).split(":")[0]
            elsewhere = sorted({k for r in records.values() if (k := _device_kind(r)) not in (None, here)})
            if elsewhere:
                n = sum(_device_kind(r) in elsewhere for r in records.values())
                self.log(f"          note: {n} of them were made on {' / '.join(elsewhere)}, not {here}; they are "
                         f"kept (--force, or another --results folder, measures them on {here})")
        for spec, record in (executor or LocalExecutor()).execute(self, pending):
            self.store.put(record)  # the driver alone writes records
            records[spec.cell_id()] = record
            m = record["metrics"]
            if m is not None:
                self.log(f"          {m['metric_name']}={m['clean']:.4f} asr={_fmt(m['asr'])} ra={_fmt(m['ra'])} "
                         f"({record['timings']['defense_seconds']:.1f}s defense)")  # type: ignore[index]
            else:
                self.log(f"          {record['status']}: {record['reason']}")
        return [records[spec.cell_id()] for spec in cells]

    def worker_options(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this runner on another process (an executor's worker); paths are
        absolute, as a worker's working directory may differ."""
        return {"results": self.store.root.resolve(), "cache": self.cache.root.resolve(),
                "data_root": None if self.data_root is None else Path(self.data_root).resolve(),
                "device": self.device, "force": self.force, "sharpness": self.sharpness}

    def run_cell(self, spec: RunSpec) -> Record:
        resolved = spec.resolved()
        task = self.task(spec)
        task.splits()  # loaded first (cached by the task): a missing or malformed dataset fails before anything runs
        attack = self.attack(spec)
        attack.check_task(task)
        defense = self.defense(spec)
        try:
            model, manifest = self.artifact(spec, task, attack)
        except Diverged as err:  # `artifact` remembered the failure, with what the record needs
            failure = self.cache.failure(spec.artifact_key()) or {"artifact_key": spec.artifact_key(),
                                                                   "poisoned_index_hash": None}
            return _failed(self._base_record(spec, resolved, failure), str(err), None)
        base = self._base_record(spec, resolved, manifest)
        reason = defense.unsupported_reason(task)
        if reason:
            return _skipped(base, reason)

        original, model = model, copy.deepcopy(model)
        start = time.perf_counter()
        diverged = None
        try:
            with PeakMemory(task.device) as memory:
                model = self.purify(spec, defense, task, model)
            if not _finite(model):  # a defense with its own loop: evaluating it would score NaN outputs
                raise Diverged("weights not finite after the defense")
        except NotApplicable as err:  # the method does not fit this architecture: a skip, like a modality
            return _skipped(base, str(err))
        except Diverged as err:
            diverged = err
        seconds = time.perf_counter() - start
        timings = {"defense_seconds": seconds, "attack_train_seconds": manifest["train_seconds"],
                   "max_rss_mb": memory.cpu_mb, "cuda_peak_mb": memory.cuda_mb}
        if diverged is not None:
            return _failed(base, f"{spec.describe()}: the defense diverged ({diverged}); try a lower lr or "
                                 f"weaker regularisers in its config", timings)
        after = self.evaluate(task, attack, model)
        before = manifest["metrics_before"]
        sharp_before = sharp_after = None
        key = manifest["artifact_key"]
        if self.sharpness and key not in self._no_second_order:
            # An artifact cached before sharpness was recorded lacks the figure: compute it from its weights.
            sharp_before = manifest.get("sharpness_before") or self.measure_sharpness(task, original, spec.seed, key)
            # A defense that left every weight as it was (`none`, a no-op) has the same figures: not re-measured.
            unchanged = sharp_before is None or _same_weights(original, model)
            sharp_after = sharp_before if unchanged else self.measure_sharpness(task, model, spec.seed, key)
        metrics = {"metric_name": task.metric_name, "clean": after[task.metric_name],
                   "clean_before": before[task.metric_name], "asr": after.get("asr"),
                   "asr_before": before.get("asr"), "ra": after.get("ra"), "ra_before": before.get("ra"),
                   "der": der(before, after, task.metric_name),
                   "sharpness_before": sharp_before, "sharpness_after": sharp_after,
                   "extra": {k: v for k, v in after.items() if k not in (task.metric_name, "asr", "ra")}}
        return {**base, "status": "ok", "reason": None, "metrics": metrics,  # type: ignore[typeddict-item]
                "timings": timings, "defense_report": defense.report}

    # -- pieces -------------------------------------------------------------------------------------------
    def task(self, spec: RunSpec) -> Task:
        key = stable_hash([spec.task, spec.dataset, dict(spec.task_config)])
        if key not in self._tasks:
            task_cls = TASKS.get(spec.task)
            self._tasks[key] = task_cls(spec.dataset, task_cls.Config.from_dict(spec.task_config, "task_config"),
                                        data_root=self.data_root, device=self.device)
        return self._tasks[key]

    def attack(self, spec: RunSpec) -> Any:
        """The spec's attack, configured and seeded (its learned state comes with its artifact: `artifact`)."""
        attack_cls = ATTACKS.get(spec.attack.name)
        return attack_cls(attack_cls.Config.from_dict(spec.attack.config), seed=spec.seed)

    def defense(self, spec: RunSpec) -> Any:
        """The spec's defense, configured."""
        defense_cls = DEFENSES.get(spec.defense.name)
        return defense_cls(defense_cls.Config.from_dict(spec.defense.config))

    def purify(self, spec: RunSpec, defense: Any, task: Task, model: torch.nn.Module) -> torch.nn.Module:
        """`defense` run on `model` (changed in place) with the cell's generator."""
        # The defense sees the clean holdout only: never the poisoned training split or the test split.
        return defense.purify(model, task.splits().holdout, task,
                              rng=generator(spec.seed, "defense", spec.defense.name))

    def evaluate(self, task: Task, attack: Any, model: torch.nn.Module) -> dict[str, float]:
        out = dict(task.metrics(model, task.splits().test))
        triggered, clean = attack.triggered_test(task, task.splits().test)
        if len(clean):
            out.update(task.backdoor_metrics(model, triggered, clean))
        return out

    def measure_sharpness(self, task: Task, model: torch.nn.Module, seed: int,
                          artifact_key: str) -> dict[str, float] | None:
        """The sharpness figures, or None (logged) where the model has no second derivatives (the artifact is
        then remembered, so that its other cells do not try again) or a figure is not finite."""
        from defenses.fisher import sharpness

        try:
            return sharpness(model, task.splits().holdout, task, generator=generator(seed, "sharpness"),
                             batch_size=task.sharpness_batch)
        except (NotApplicable, FloatingPointError) as err:  # either way the cell (and trained model) stand
            self.log(f"          no sharpness figures: {err}")
            if isinstance(err, NotApplicable):  # no second derivatives at all, not just non-finite ones here
                self._no_second_order.add(artifact_key)
            return None

    def artifact(self, spec: RunSpec, task: Task, attack: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The backdoored model for this spec: from the cache, or trained now and cached.  Raises `Diverged`
        when its training diverges (now, or in an earlier run: the cache remembers it)."""
        key = spec.artifact_key()
        model = task.build_model(spec.model, generator(spec.seed, "init", spec.model))
        manifest = self.cache.load(key, model, attack)
        if manifest is not None:
            return model.to(task.device).eval(), manifest
        failure = self.cache.failure(key)
        if failure is not None:
            self.log(f"          backdoored model {key} failed to train before; delete "
                     f"{self.cache.dir(key) / 'failed.json'} to try again")
            raise Diverged(failure["reason"])
        self.log(f"          training backdoored model {spec.model} / {spec.attack.label} (artifact {key})")
        start = time.perf_counter()
        poisoned = None
        try:
            attack.prepare(task, task.splits().train, generator=generator(spec.seed, "attack-prepare", key))
            prepare_seconds = time.perf_counter() - start
            poisoned = attack.poison(task, task.splits().train)
            hooks = attack.train_hooks(task)
            fit = task.fit(model, poisoned, FitConfig.from_dict(spec.train, "train"), hooks=hooks,
                           generator=generator(spec.seed, "train", key), desc=f"train {spec.attack.label}")
            if not _finite(model):  # caching it would hand every defense of this artifact a model that outputs NaN
                raise Diverged(f"weights not finite after {fit.steps} steps, last loss {fit.final_loss}")
        except Diverged as err:
            reason = (f"{spec.task}/{spec.dataset}/{spec.model} attack={spec.attack.label} seed={spec.seed}: training "
                      f"the backdoored model diverged ({err}); nothing was cached: lower train.lr or set "
                      f"train.grad_clip")
            self.cache.save_failure(key, {"artifact_key": key, "reason": reason, "spec": spec.resolved(),
                                          "poisoned_index_hash": None if poisoned is None else poisoned.index_hash(),
                                          "environment": environment(task.device)})
            raise Diverged(reason) from None
        manifest = {"artifact_key": key, "spec": spec.resolved(), "model": spec.model,
                    "poisoned_index_hash": poisoned.index_hash(), "n_poisoned": len(poisoned.indices),
                    "n_train": len(poisoned), "train_seconds": fit.seconds, "train_steps": fit.steps,
                    "prepare_seconds": prepare_seconds,
                    "metrics_before": self.evaluate(task, attack, model), "environment": environment(task.device),
                    "sharpness_before": self.measure_sharpness(task, model, spec.seed, key) if self.sharpness else None}
        manifest = self.cache.save(key, model, manifest, attack.state_dict())
        return model.eval(), manifest

    def _base_record(self, spec: RunSpec, resolved: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
        task_cls = TASKS.get(spec.task)
        return {
            "schema_version": SCHEMA_VERSION, "cell_id": spec.cell_id(), "artifact_key": manifest["artifact_key"],
            "spec": {"task": spec.task, "dataset": spec.dataset, "model": spec.model, "attack": spec.attack.name,
                     "attack_label": spec.attack.label, "defense": spec.defense.name,
                     "defense_label": spec.defense.label, "seed": spec.seed},
            "config": {k: resolved[k] for k in ("task", "train", "attack", "defense")},
            "config_hash": stable_hash(resolved),
            "versions": {"fipbench": _version(), "task": task_cls.version, "attack": resolved["attack"]["version"],
                         "defense": resolved["defense"]["version"], "schema": SCHEMA_VERSION},
            "environment": environment(self.device),
            "poisoned_index_hash": manifest["poisoned_index_hash"],
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }


def _finite(model: torch.nn.Module) -> bool:
    """Every floating-point weight and buffer is finite."""
    return all(bool(t.isfinite().all()) for t in model.state_dict().values() if t.is_floating_point())


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def der(before: dict[str, float], after: dict[str, float], metric: str) -> float | None:
    """BackdoorBench's defense effectiveness rating: (max(0, ΔASR) − max(0, Δclean) + 1) / 2, in [0, 1],
    where Δ = before − after.  None without an attack."""
    if before.get("asr") is None or after.get("asr") is None:
        return None
    d_asr = before["asr"] - after["asr"]
    d_clean = before[metric] - after[metric]
    return (max(0.0, d_asr) - max(0.0, d_clean) + 1) / 2


def environment(device: Any) -> dict[str, Any]:
    return {"torch": torch.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "device": str(device), "git_commit": _git_commit(), "cpu": _cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def _cpu_model() -> str:
    try:  # Linux names the model here; platform.processor() is often only the architecture
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fipbench")
    except PackageNotFoundError:
        return "0+unknown"


def _device_kind(record: Record) -> str | None:
    """'cpu' / 'cuda' / ... of the device a stored record was made on (None where it does not say)."""
    device = (record.get("environment") or {}).get("device")
    return str(device).split(":")[0] if device else None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"



def _skipped(base: dict[str, Any], reason: str) -> dict[str, Any]:
    """The record of a cell whose defense does not apply (its modality, or the model's architecture)."""
    return {**base, "status": "skipped", "reason": reason, "metrics": None, "timings": None, "defense_report": {}}


def _failed(base: dict[str, Any], reason: str, timings: dict[str, Any] | None) -> dict[str, Any]:
    """The record of a cell whose attack training (timings None) or defense (its timings) diverged."""
    return {**base, "status": "failed", "reason": reason, "metrics": None, "timings": timings, "defense_report": {}}
