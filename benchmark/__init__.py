"""The fipbench engine: registries, run specs, runner, artifact cache, result store, leaderboard, CLI.

Kept import-light: nothing here imports torch until a component is used.
"""

from benchmark.errors import FipbenchError
from benchmark.registries import ATTACKS, DATASETS, DEFENSES, MODELS, TASKS

__all__ = ["ATTACKS", "DATASETS", "DEFENSES", "FipbenchError", "MODELS", "TASKS"]
