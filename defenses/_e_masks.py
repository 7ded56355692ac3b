"""Per-neuron masks for neuron-pruning defenses (ANP, RNP), found by module type on any architecture.

A "neuron" is one entry of the affine weight of a normalisation layer: a BatchNorm channel (the definition of
ANP and RNP, whose authors swap every BatchNorm2d for a masked / noisy subclass), or, in a model with no
BatchNorm at all (transformers), one LayerNorm / GroupNorm weight entry.  Instead of swapping classes, the real
layers are reparameterised with `torch.nn.utils.parametrize`:

    weight -> weight * (m + δ)     δ: ANP's multiplicative weight noise, only while `perturbed` is set
    bias   -> bias * (1 + ξ)       ξ: ANP's bias noise (RNP and ANP never mask the bias)

With m = 1 and the noise off this is bit-for-bit the original function (w * 1 == w).  Masks are learned on a
deep copy; the defense then prunes the *original* model by zeroing the chosen weight entries (what both
authors' `pruning()` does: state_dict[layer.weight][idx] = 0), so the returned model keeps its plain layers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from benchmark.errors import NotApplicable
from tasks.base import Sample, Task

_BN = nn.modules.batchnorm._BatchNorm
_OTHER_NORMS = (nn.LayerNorm, nn.GroupNorm)


def neuron_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every affine BatchNorm layer, or of every affine LayerNorm/GroupNorm if there is no
    BatchNorm; module order (deterministic), so a deep copy yields the same list."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, _BN) and m.weight is not None]
    if not found:
        found = [(n, m) for n, m in model.named_modules()
                 if isinstance(m, _OTHER_NORMS) and getattr(m, "weight", None) is not None]
    if not found:
        raise NotApplicable("neuron pruning needs affine normalisation layers (BatchNorm, LayerNorm or GroupNorm); "
                            f"{type(model).__name__} has none")
    return found


class NeuronMask(nn.Module):
    """Parametrisation of a norm layer's weight: w * (mask + noise) while perturbed, else w * mask."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.mask = nn.Parameter(torch.ones_like(weight))  # same shape as the weight, e.g. [C]
        self.noise = nn.Parameter(torch.zeros_like(weight))  # δ
        self.perturbed = False

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * (self.mask + self.noise) if self.perturbed else w * self.mask


class BiasNoise(nn.Module):
    """Parametrisation of a norm layer's bias: b * (1 + ξ) while the paired weight mask is perturbed."""

    def __init__(self, bias: torch.Tensor, pair: NeuronMask):
        super().__init__()
        self.noise = nn.Parameter(torch.zeros_like(bias))  # ξ
        self.pair = [pair]  # a list, so that the pair is not registered twice as a submodule

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        return b * (1 + self.noise) if self.pair[0].perturbed else b


class MaskedModel:
    """A deep copy of `model` with every neuron layer masked; the original is left untouched."""

    def __init__(self, model: nn.Module, *, bias_noise: bool = False):
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)  # only masks / noise are trained
        self.names: list[str] = []
        self.masks: list[NeuronMask] = []
        self.bias_noises: list[BiasNoise] = []
        for name, module in neuron_layers(self.model):
            mask = NeuronMask(module.weight.detach())
            parametrize.register_parametrization(module, "weight", mask)
            if bias_noise and getattr(module, "bias", None) is not None:
                bn = BiasNoise(module.bias.detach(), mask)
                parametrize.register_parametrization(module, "bias", bn)
                self.bias_noises.append(bn)
            self.names.append(name)
            self.masks.append(mask)

    def mask_params(self) -> list[nn.Parameter]:
        return [m.mask for m in self.masks]

    def noise_params(self) -> list[nn.Parameter]:
        return [m.noise for m in self.masks] + [b.noise for b in self.bias_noises]

    def set_perturbed(self, on: bool) -> None:
        for m in self.masks:
            m.perturbed = on

    @torch.no_grad()
    def reset_noise(self, eps: float, generator: torch.Generator | None) -> None:
        """Noise uniform in [-eps, eps] (ANP's rand_init), or zero when generator is None."""
        for p in self.noise_params():
            if generator is None:
                p.zero_()
            else:
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1).mul_(eps).to(p))

    @torch.no_grad()
    def clip(self, eps: float) -> None:
        for p in self.mask_params():
            p.clamp_(0.0, 1.0)
        for p in self.noise_params():
            p.clamp_(-eps, eps)

    def values(self) -> list[tuple[str, int, float]]:
        """(layer name, flat neuron index, mask value) for every neuron."""
        return [(name, i, float(v)) for name, m in zip(self.names, self.masks)
                for i, v in enumerate(m.mask.detach().flatten().tolist())]


def choose(values: Sequence[tuple[str, int, float]], by: str, amount: float) -> list[tuple[str, int]]:
    """Neurons to prune: mask value below `amount` (by="threshold"; the authors prune values <= threshold in
    their sweep and < threshold in ANP's fixed-threshold mode, we use <), or the `amount` fraction of all
    neurons with the smallest mask values (by="fraction")."""
    if by == "threshold":
        return [(n, i) for n, i, v in values if v < amount]
    k = int(round(amount * len(values)))
    ranked = sorted(values, key=lambda t: (t[2], t[0], t[1]))
    return [(n, i) for n, i, _ in ranked[:k]]


@torch.no_grad()
def prune(model: nn.Module, chosen: Sequence[tuple[str, int]]) -> nn.Module:
    """Zero the weight entry of every chosen neuron in place (the plain layer stays as it is)."""
    modules = dict(model.named_modules())
    for name, i in chosen:
        modules[name].weight.view(-1)[i] = 0.0
    return model


def select_on_holdout(model: nn.Module, values: Sequence[tuple[str, int, float]], task: Task,
                      clean: Sequence[Sample], by: str, grid: Sequence[float], tolerance: float
                      ) -> tuple[float, list[dict[str, float]]]:
    """The most aggressive grid value whose pruned model keeps the clean holdout metric within a relative
    `tolerance` of the unpruned model's (BackdoorBench's acc_ratio test, which it applies to test data and
    combines with test ASR; here only the clean holdout is used, so "most pruning within the clean budget"
    replaces "lowest test ASR")."""
    base = task.metrics(model, clean)[task.metric_name]
    best, trace = None, []
    for amount in grid:
        candidate = prune(copy.deepcopy(model), choose(values, by, amount))
        score = task.metrics(candidate, clean)[task.metric_name]
        trace.append({"amount": float(amount), "holdout_metric": float(score)})
        if base - score <= tolerance * abs(base):
            best = amount if best is None else max(best, amount)
    return (float(best) if best is not None else 0.0), trace
