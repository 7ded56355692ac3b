"""Fast FIP's spectral-shift reparameterisation of Conv/Linear weights.

For a weight W̄ (a conv kernel flattened to C_out × C_in·k·k) with thin SVD W̄ = U diag(σ) Vᵀ, the layer's
weight becomes W(δ) = U diag(relu(σ + δ)) Vᵀ with U, σ, V frozen buffers and only δ trained (δ = 0 at the
start).  It is computed as W̄ + U diag(relu(σ + δ) − σ) Vᵀ, which is the same function of δ (the thin SVD
reconstructs W̄) but equals W̄ bit-for-bit at δ = 0, so purification starts exactly at the backdoored model.
Built on `torch.nn.utils.parametrize`; `fold` removes the parametrisation and leaves plain layers.

Two ways to run a reparameterised layer, the same function of δ:
- merged (default): the layer's own forward with the recomposed W(δ).  Its backward computes the full weight
  gradient ∂ℓ/∂W (as fine-tuning does) and then projects it, diag(Uᵀ ∂ℓ/∂W V), so a step costs what a full
  fine-tuning step costs, plus the recomposition; bit-exact start.
- factorized (`factorized=True`): x → conv(x, Vᵀ as r filters) → × relu(σ + δ) per channel → 1×1 conv(U).
  No weight of either convolution requires a gradient, so backward only propagates input gradients, and
  ∂ℓ/∂δ is a per-channel sum over the intermediate activation: a step skips every weight-gradient
  convolution (measured in benchmarks/fip_step_time.py).  It starts at the backdoored function up to
  float rounding (the product U diag(σ) Vᵀ is evaluated in another order), not bit-for-bit.  A layer is
  factorized only where that is cheaper per output position than merged — 2·r·(m + n) < 3·m·n multiply-adds
  for forward plus backward, m = C_out, n = C_in·k^d, r = min(m, n): k×k convolutions yes, square 1×1
  convolutions and square Linear layers no — and only where the factorisation is a pair of convolutions
  (groups = 1, zero padding); other layers stay merged.  `module.weight` reads W(δ) either way, so code
  that reads the weight directly (e.g. attention's fused projections) sees the shifted weight.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

SPECTRAL_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class SpectralShift(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach().flatten(1)  # [C_out, C_in*k*k] or [out, in]
        u, s, vh = torch.linalg.svd(w, full_matrices=False)  # [m,r], [r], [r,n]; r = min(m, n)
        self.register_buffer("U", u)
        self.register_buffer("S", s)
        self.register_buffer("Vh", vh)
        self.delta = nn.Parameter(torch.zeros_like(s))  # [r], the only trained tensor

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        shift = torch.relu(self.S + self.delta) - self.S  # [r]; zero at δ = 0
        return original + ((self.U * shift) @ self.Vh).view_as(original)


def _factorized_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's output as U · (relu(σ + δ) ⊙ (Vᵀ x)); installed as the instance's `forward`."""
    shift: SpectralShift = module.parametrizations.weight[0]
    scale = torch.relu(shift.S + shift.delta)  # [r]
    if isinstance(module, nn.Linear):
        return F.linear(F.linear(x, shift.Vh) * scale, shift.U, module.bias)  # [..., in] -> [..., r] -> [..., out]
    shape = module.parametrizations.weight.original.shape  # [C_out, C_in, *k]
    d, r = len(shape) - 2, scale.numel()
    conv = _CONV[d]
    h = conv(x, shift.Vh.reshape(r, *shape[1:]), None, module.stride, module.padding, module.dilation)  # [B,r,*out]
    h = h * scale.view(r, *([1] * d))
    return conv(h, shift.U.reshape(shape[0], r, *([1] * d)), module.bias)  # [B, C_out, *out]


def factorizes(module: nn.Module) -> bool:
    """Whether `apply_spectral(..., factorized=True)` runs this layer factorized (see the module docstring)."""
    if not isinstance(module, SPECTRAL_LAYERS):
        return False
    if not isinstance(module, nn.Linear) and (module.groups != 1 or module.padding_mode != "zeros"):
        return False
    m, n = module.weight.shape[0], math.prod(module.weight.shape[1:])
    return 2 * min(m, n) * (m + n) < 3 * m * n


def apply_spectral(model: nn.Module, factorized: bool = False) -> list[nn.Parameter]:
    """Freeze every parameter, reparameterise every Conv/Linear weight; returns the shifts δ to train."""
    for p in model.parameters():
        p.requires_grad_(False)
    deltas = []
    for module in list(model.modules()):
        if isinstance(module, SPECTRAL_LAYERS) and not parametrize.is_parametrized(module, "weight"):
            run_factorized = factorized and factorizes(module)
            shift = SpectralShift(module.weight).to(module.weight.device)
            parametrize.register_parametrization(module, "weight", shift)
            if run_factorized:
                module.forward = types.MethodType(_factorized_forward, module)
            deltas.append(shift.delta)
    if not deltas:
        raise ValueError("model has no Conv/Linear layer to reparameterise")
    return deltas


NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)  # BatchNorm*d, InstanceNorm*d, LN, GN


def norm_and_bias_params(model: nn.Module) -> list[nn.Parameter]:
    """The biases of the reparameterised layers and every normalisation layer's affine parameters, made trainable.

    The authors' released spectral-shift layers freeze only the weight (a layer's bias stays trainable) and have
    no BatchNorm counterpart, while their optimiser takes all of `model.parameters()`: read literally, their Fast
    FIP also tunes these.  fipbench's default trains δ alone (DESIGN.md §4); this is the opt-in alternative.
    """
    extra = []
    for module in model.modules():
        if isinstance(module, SPECTRAL_LAYERS) and module.bias is not None:
            extra.append(module.bias)
        elif isinstance(module, NORM_LAYERS):
            extra.extend(p for p in (module.weight, module.bias) if p is not None)
    for p in extra:
        p.requires_grad_(True)
    return extra


def is_factorized(module: nn.Module) -> bool:
    """Whether this layer currently runs factorized (installed by `apply_spectral`, removed by `fold`)."""
    own = module.__dict__.get("forward")
    return isinstance(own, types.MethodType) and own.__func__ is _factorized_forward


def fold(model: nn.Module) -> nn.Module:
    """Bake W(δ) into plain weights, drop U, σ, V and δ, and make every parameter trainable again."""
    for module in list(model.modules()):
        if is_factorized(module):
            del module.forward  # back to the class's forward
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    for p in model.parameters():
        p.requires_grad_(True)
    return model
