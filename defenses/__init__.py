"""Defenses: one module per defense, registered in `benchmark.registries.DEFENSES`."""

from defenses.base import Defense, DefenseConfig, TuningConfig

__all__ = ["Defense", "DefenseConfig", "TuningConfig"]
