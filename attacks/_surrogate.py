"""A clean surrogate classifier for attacks whose trigger is optimised against a model (Trojan's neuron-driven
pattern, CLB's adversarial perturbations, LF's low-frequency universal perturbation, PCBA, ...).

The attacker trains it on the clean training split with the task's own loop (`Task.fit`), seeded from the
attack's prepare-generator, so the learned trigger is a deterministic function of the run seed.  It never sees
the defense holdout or the test split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from benchmark.rng import child
from tasks.base import FitConfig, Hook, Sample, Task


def train_surrogate(task: Task, train: Sequence[Sample], *, generator: torch.Generator, arch: str = "small_cnn",
                    fit: FitConfig = FitConfig(epochs=5, batch_size=64, lr=0.05),
                    hooks: Sequence[Hook] = ()) -> nn.Module:
    """A model of `arch` trained on the clean `train` split, returned in eval mode with gradients off for its
    parameters (attacks differentiate through it with respect to inputs only).  `hooks` change how it is
    trained (e.g. CLB's adversarial training)."""
    model = task.build_model(arch, child(generator, "surrogate-init"))
    task.fit(model, train, fit, hooks=list(hooks), generator=child(generator, "surrogate-fit"),
             desc=f"surrogate {arch}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
