"""`none`: no poisoning.  Trains the clean reference model that attacks are compared against (clean accuracy
drop) and that defenses must not harm."""

from __future__ import annotations

from collections.abc import Sequence

from attacks.base import Attack, Params, Trigger
from benchmark.registries import ATTACKS
from tasks.base import Sample, Task


class _Identity(Trigger):
    modalities = frozenset({"*"})

    def apply(self, sample: Sample, params: Params) -> Sample:
        return sample


@ATTACKS.register("none")
class NoAttack(Attack):
    modalities = frozenset({"image", "video", "points", "text", "detection"})
    paper = "clean reference model"

    def trigger(self, task: Task) -> Trigger:
        return _Identity()

    def eligible(self, task: Task, data: Sequence[Sample]) -> list[int]:
        return []
