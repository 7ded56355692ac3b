"""Defense interface.  A defense gets the backdoored model, the clean holdout and the task, and returns a
purified model.  It may use only `task.loss`, `task.collate`, `task.fit` and the model, so it runs on every
task; it never sees the poisoned training data or the test set."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from benchmark.config import Config
from tasks.base import FitConfig, Sample, Task


@dataclasses.dataclass(frozen=True)
class DefenseConfig(Config):
    pass


class Defense(abc.ABC):
    """Subclasses register with `@DEFENSES.register(name)` and set the class metadata below."""

    version: ClassVar[int] = 1
    Config: ClassVar[type[DefenseConfig]] = DefenseConfig
    modalities: ClassVar[frozenset[str]] = frozenset({"*"})  # "*": any task whose loss it can use
    clean_data: ClassVar[str] = "the clean holdout (default 1 % of the training set)"
    paper: ClassVar[str] = ""
    registry_name: ClassVar[str]
    # Config overrides that make the defense cheap enough for the CPU test suite (fewer steps, ...); used by the
    # enrollment test only, never by a benchmark run.
    smoke_overrides: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: DefenseConfig | None = None):
        self.cfg = cfg or self.Config()
        # Filled by purify(): figures that go into the record (tuned parameter count, steps, ...).
        self.report: dict[str, Any] = {}

    def unsupported_reason(self, task: Task) -> str | None:
        """Why this defense cannot run on `task` (the runner records it and skips the cell), or None."""
        if "*" in self.modalities or task.modality in self.modalities:
            return None
        return f"defense {self.registry_name!r} supports modalities {sorted(self.modalities)}, not {task.modality!r}"

    @abc.abstractmethod
    def purify(self, model: nn.Module, clean: Sequence[Sample], task: Task, *, rng: torch.Generator) -> nn.Module:
        ...


def count_tuned(params: Sequence[torch.Tensor]) -> int:
    return int(sum(p.numel() for p in params))


@dataclasses.dataclass(frozen=True)
class TuningConfig(DefenseConfig):
    """Shared by every defense that fine-tunes on the holdout: the same `fit` budget makes them comparable.

    Default budget: the FIP authors' optimiser (SGD, lr 0.005, momentum 0.95, no weight decay, constant lr) for
    300 steps of 64 samples; their CIFAR-10 run takes 2,000 steps of 128 from a 500-image holdout.
    """

    fit: FitConfig = FitConfig(epochs=1, steps=300, batch_size=64, lr=0.005, momentum=0.95, weight_decay=0.0,
                               schedule="constant")
