"""Attacks: one module per attack, registered in `benchmark.registries.ATTACKS`."""

from attacks.base import Attack, AttackConfig, PoisonedDataset, Subset, Trigger

__all__ = ["Attack", "AttackConfig", "PoisonedDataset", "Subset", "Trigger"]
