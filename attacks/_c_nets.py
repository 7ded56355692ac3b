"""Shared plumbing for attacks whose trigger is a small learned image-to-image network (ISSBA's steganographic
encoder, FBA's style transform): seeded construction, random minibatches of clean training images, a tiny
optimisation loop for objectives that are not the task's loss, and the `Trigger` that runs a frozen network
on one image at a time (so a triggered image never depends on what else is in a batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import Params, Trigger
from benchmark.progress import progress_bar
from tasks.base import Sample


def seeded(factory: Callable[[], nn.Module], gen: torch.Generator) -> nn.Module:
    """`factory()` with its layers initialised from `gen`.  Layer constructors draw from torch's global RNG, so
    it is forked and seeded inside (as `Task.build_model` does): the caller's global state is left unchanged."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(gen.initial_seed())
        return factory()


def minibatch(data: Sequence[Sample], batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """A random batch of clean images [B,C,H,W] drawn (with replacement across calls) from `data`."""
    idx = torch.randint(0, len(data), (min(batch_size, len(data)),), generator=gen).tolist()
    return torch.stack([data[i].x.float() for i in idx])


def optimise(params: Sequence[nn.Parameter], loss_fn: Callable[[int], torch.Tensor], *, steps: int,
             lr: float, desc: str) -> float:
    """Adam for `steps` steps on `loss_fn(step)`; returns the last loss.

    A dedicated loop because these objectives (steganographic reconstruction, style matching) are not the
    task's loss on labelled samples, which is all that `Task.fit` optimises."""
    opt = torch.optim.Adam(params, lr=lr)
    value = float("nan")
    with progress_bar(desc, steps) as tick:
        for step in range(steps):
            loss = loss_fn(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            tick(value)
    return value


def pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Replicate-pad [B,C,H,W] on the bottom/right so H and W divide by `multiple`; returns (padded, H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return (F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x), h, w


class NetTrigger(Trigger):
    """x' = clamp(f(x), 0, 1) for a frozen network f, evaluated on the single image [1,C,H,W] in float32 (the
    same arithmetic whichever order or batch the samples come in)."""

    modalities = frozenset({"image"})

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def apply(self, sample: Sample, params: Params) -> Sample:
        x = sample.x  # [C,H,W]
        with torch.no_grad():
            out = self.fn(x.float().unsqueeze(0))[0]  # [C,H,W]
        return dataclasses.replace(sample, x=out.clamp(0, 1).to(x.dtype))


def prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's tensors under `prefix.`, detached and contiguous (safetensors stores them as they are)."""
    return {f"{prefix}.{k}": v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def unprefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
