"""Explicit randomness: every generator is derived from the run seed and a purpose key; nothing seeds globals."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed that depends on `seed` and the keys, stable across processes and platforms."""
    text = "/".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU `torch.Generator` for one purpose, e.g. `generator(seed, "poison-select")`."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def child(gen: torch.Generator, *keys: object) -> torch.Generator:
    """A generator derived from another one's initial seed (does not advance `gen`)."""
    return generator(gen.initial_seed(), *keys)
