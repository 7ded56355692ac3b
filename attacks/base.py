"""Attack interface: `Trigger`, `Attack`, and the one generic `PoisonedDataset`.

An attack (1) picks which training indices to poison (`select`), (2) wraps the clean split in a
`PoisonedDataset` that applies its trigger lazily and deterministically by index, and (3) optionally controls
training through `train_hooks` (the same `tasks.base.Hook`s that `Task.fit` takes).  Triggers act in the
data's natural space (images in [0,1]); normalisation is inside the models.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import torch

from benchmark.config import Config
from benchmark.errors import FipbenchError
from benchmark.rng import generator
from tasks.base import Hook, Sample, Task, labels_of

Params = dict[str, Any]


class Trigger(abc.ABC):
    """Turns a clean sample into a triggered one.  `make_params` is called once per sample with a generator
    derived from (attack seed, split, sample index), so a trigger is a pure function of index and seed."""

    modalities: ClassVar[frozenset[str]]

    def make_params(self, sample: Sample, gen: torch.Generator) -> Params:
        return {}

    @abc.abstractmethod
    def apply(self, sample: Sample, params: Params) -> Sample: ...


class PoisonedDataset(Sequence[Sample]):
    """`base` with the samples at `indices` triggered (and relabelled); everything else untouched.

    Poisoning is lazy and deterministic: the same (seed, split, index) always gives the same sample.
    """

    def __init__(self, base: Sequence[Sample], indices: Sequence[int], trigger: Trigger,
                 relabel: Callable[[Any], Any] | None, *, seed: int, split: str):
        self.base, self.trigger, self.relabel = base, trigger, relabel
        self.indices = sorted(set(int(i) for i in indices))
        self._poisoned = frozenset(self.indices)
        self.seed, self.split = seed, split

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Sample:  # type: ignore[override]
        s = self.base[i]
        if i not in self._poisoned:
            return s
        s2 = self.trigger.apply(s, self.trigger.make_params(s, generator(self.seed, self.split, s.index)))
        return dataclasses.replace(s2, y=self.relabel(s.y)) if self.relabel else s2

    @property
    def labels(self) -> list[Any]:
        """Labels after relabelling, without applying any trigger."""
        base = labels_of(self.base)
        if not self.relabel:
            return base
        return [self.relabel(y) if i in self._poisoned else y for i, y in enumerate(base)]

    def index_hash(self) -> str:
        """sha256 of the poisoned index list: stored in artifact manifests."""
        return hashlib.sha256(",".join(map(str, self.indices)).encode()).hexdigest()


class Subset(Sequence[Sample]):
    def __init__(self, base: Sequence[Sample], indices: Sequence[int]):
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:  # type: ignore[override]
        return self.base[self.indices[i]]

    @property
    def labels(self) -> list[Any]:
        base = labels_of(self.base)
        return [base[j] for j in self.indices]


@dataclasses.dataclass(frozen=True)
class AttackConfig(Config):
    poison_rate: float = 0.1  # share of the training split that is poisoned
    target: int = 0  # all-to-one target class
    label_mode: Literal["all2one", "all2all"] = "all2one"  # all2all: y -> (y + 1) mod K

    def check(self) -> None:
        if not 0 <= self.poison_rate <= 1:
            raise self.bad("poison_rate", "must lie in [0, 1]")
        if self.target < 0:
            raise self.bad("target", "must be a class id >= 0")


class Attack(abc.ABC):
    """Base class; subclasses register with `@ATTACKS.register(name)` and set the class metadata."""

    version: ClassVar[int] = 1
    Config: ClassVar[type[AttackConfig]] = AttackConfig
    modalities: ClassVar[frozenset[str]]
    paper: ClassVar[str] = ""
    registry_name: ClassVar[str]
    # Config overrides that make the attack cheap enough for the CPU test suite (e.g. fewer generator epochs);
    # used by the enrollment test only, never by a benchmark run.
    smoke_overrides: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: AttackConfig | None = None, *, seed: int = 0):
        self.cfg = cfg or self.Config()
        self.seed = seed

    # -- learned trigger state ------------------------------------------------------------------------------
    def prepare(self, task: Task, train: Sequence[Sample], *, generator: torch.Generator) -> None:
        """Build what the trigger needs before poisoning: an encoder (ISSBA), adversarial perturbations from a
        surrogate (CLB), an optimised pattern (Trojan).  Called once per artifact, before `poison`.  Whatever
        it learns must live in `state_dict()`, so that a cached artifact restores it without recomputation.
        Attacks that learn their trigger jointly with the model (Input-aware, LIRA) do it in `train_hooks`."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that define the learned trigger (saved next to the artifact's weights); {} for fixed ones."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise FipbenchError(f"attack {self.registry_name!r} has no learned state, but the artifact holds "
                                f"{sorted(state)[:3]}; delete the artifact so it is rebuilt")

    @abc.abstractmethod
    def trigger(self, task: Task) -> Trigger: ...

    def check_task(self, task: Task) -> None:
        if task.modality not in self.modalities:
            raise FipbenchError(
                f"attack {self.registry_name!r} does not support task {type(task).registry_name!r} "  # type: ignore
                f"(modality {task.modality!r}; it supports {', '.join(sorted(self.modalities))}); "
                f"pick an attack listed for that task in `fipbench ls attacks`")

    def relabel(self, task: Task) -> Callable[[Any], Any]:
        return lambda y: task.backdoor_label(y, self.cfg.label_mode, self.cfg.target)

    def eligible(self, task: Task, data: Sequence[Sample]) -> list[int]:
        """Indices whose label the backdoor changes (all-to-one: not already the target)."""
        relabel = self.relabel(task)
        return [i for i, y in enumerate(labels_of(data)) if relabel(y) != y]

    def select(self, task: Task, data: Sequence[Sample]) -> list[int]:
        """round(poison_rate * |train|) indices drawn uniformly from the eligible ones (BackdoorBench's rule)."""
        pool = self.eligible(task, data)
        return self.draw(pool, round(self.cfg.poison_rate * len(data)))

    def draw(self, pool: Sequence[int], n: int) -> list[int]:
        """min(n, |pool|) members of `pool` drawn uniformly (one RNG stream per attack and seed), sorted."""
        perm = torch.randperm(len(pool), generator=generator(self.seed, self.registry_name, "select"))
        return sorted(pool[i] for i in perm[:min(n, len(pool))].tolist())

    def poison(self, task: Task, data: Sequence[Sample], indices: Sequence[int] | None = None,
               split: str = "train") -> PoisonedDataset:
        self.check_task(task)
        indices = self.select(task, data) if indices is None else indices
        return PoisonedDataset(data, indices, self.trigger(task), self.relabel(task), seed=self.seed, split=split)

    def triggered_test(self, task: Task, test: Sequence[Sample]) -> tuple[Sequence[Sample], Sequence[Sample]]:
        """(triggered, clean) views of the eligible test samples, aligned by position, for ASR and RA."""
        clean = Subset(test, self.eligible(task, test))
        return self.poison(task, clean, range(len(clean)), split="test"), clean

    def train_hooks(self, task: Task) -> list[Hook]:
        return []
