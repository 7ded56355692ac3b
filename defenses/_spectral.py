"""Fast FIP's spectral-shift reparameterisation of Conv/Linear weights.

For a weight W̄ (a conv kernel flattened to C_out × C_in·k·k) with thin SVD W̄ = U diag(σ) Vᵀ, the layer's
weight becomes W(δ) = U diag(relu(σ + δ)) Vᵀ with U, σ, V frozen buffers and only δ trained (δ = 0 at the
start).  It is computed as W̄ + U diag(relu(σ + δ) − σ) Vᵀ, which is the same function of δ (the thin SVD
reconstructs W̄) but equals W̄ bit-for-bit at δ = 0, so purification starts exactly at the backdoored model.
Built on `torch.nn.utils.parametrize`; `fold` removes the parametrisation and leaves plain layers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

SPECTRAL_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


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


def apply_spectral(model: nn.Module) -> list[nn.Parameter]:
    """Freeze every parameter, reparameterise every Conv/Linear weight; returns the shifts δ to train."""
    for p in model.parameters():
        p.requires_grad_(False)
    deltas = []
    for module in list(model.modules()):
        if isinstance(module, SPECTRAL_LAYERS) and not parametrize.is_parametrized(module, "weight"):
            shift = SpectralShift(module.weight).to(module.weight.device)
            parametrize.register_parametrization(module, "weight", shift)
            deltas.append(shift.delta)
    if not deltas:
        raise ValueError("model has no Conv/Linear layer to reparameterise")
    return deltas


def fold(model: nn.Module) -> nn.Module:
    """Bake W(δ) into plain weights, drop U, σ, V and δ, and make every parameter trainable again."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    for p in model.parameters():
        p.requires_grad_(True)
    return model
