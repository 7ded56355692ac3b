"""CLP, Channel Lipschitzness-based Pruning (Zheng, Zhang, Wagner, Goldstein, Zhang, "Data-free Backdoor Removal
based on Channel Lipschitzness", ECCV 2022).  Data-free.

For every convolution followed by a BatchNorm, channel k computes BN_k(W_k * x), whose Lipschitz constant is
bounded by the channel's UCLC = |γ_k / σ_k| · ‖W_k‖₂, W_k the channel's kernel [C_in/groups, kh·kw] (flattened
spatially) and σ_k = sqrt(running_var_k + eps).  Backdoor channels are abnormally sensitive, so channels with
UCLC > mean + u·std within their layer are pruned: BN weight and bias of the channel set to 0 (the channel then
outputs 0), which is how the authors' code prunes.

Reference for hyper-parameters and behaviour: the authors' public code (github.com/rkteddy/channel-Lipschitzness-
based-pruning, `CLP`) and BackdoorBench (defense/clp.py, config u = 3).  Hyper-parameters: u = 3.

Deviations:
- Conv->BN pairs are found from one forward pass (the BN whose input *is* the conv's output tensor) instead of
  module registration order (the authors' loop pairs each BN with the previously registered conv, which is wrong
  for pre-activation blocks).  Convs not followed by a BN (e.g. PreActResNet's residual-branch outputs) are left
  alone, as in the authors' code; their count is reported.
- σ includes BN's eps (the authors use sqrt(running_var)); the difference is negligible.
- The forward pass needs only an input *shape*: it uses zeros of `task.input_shape` when the task has one,
  otherwise the shape (not the values) of one holdout sample.  No clean data is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from benchmark.errors import NotApplicable
from benchmark.registries import DEFENSES
from defenses import _d_layers
from defenses.base import Defense, DefenseConfig
from tasks.base import Sample, Task


@dataclasses.dataclass(frozen=True)
class CLPConfig(DefenseConfig):
    u: float = 3.0  # threshold in standard deviations above the layer's mean UCLC (authors / BackdoorBench: 3)

    def check(self) -> None:
        if self.u < 0:
            raise self.bad("u", "must be >= 0")


@torch.no_grad()
def channel_lipschitz(conv: nn.Module, bn: nn.Module) -> torch.Tensor:
    """UCLC per output channel [C_out] of the conv+BN pair."""
    w = conv.weight  # [C_out, C_in/groups, *kernel]
    w = w.reshape(w.shape[0], w.shape[1], -1)  # [C_out, C_in/groups, kh*kw]
    spectral = torch.linalg.matrix_norm(w.float(), ord=2)  # largest singular value per channel, [C_out]
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    scale = (gamma / torch.sqrt(bn.running_var + bn.eps)).abs()  # [C_out]
    return spectral * scale.float()


def dummy_input(clean: Sequence[Sample], task: Task) -> torch.Tensor:
    """Zeros of the input shape, batch of 2 (only the topology of the forward matters)."""
    shape = getattr(task, "input_shape", None)
    if shape is None:
        shape = tuple(clean[0].x.shape)  # shape only; the values are never used
    return torch.zeros((2, *shape), device=task.device)


@DEFENSES.register("clp")
class CLP(Defense):
    Config = CLPConfig
    version = 1
    modalities = frozenset({"image", "video", "points"})
    clean_data = "none (data-free: weights only)"
    paper = ("Zheng, Zhang, Wagner, Goldstein, Zhang, Data-free Backdoor Removal based on Channel Lipschitzness, "
             "ECCV 2022")
    smoke_overrides: dict = {}  # already instant

    @torch.no_grad()
    def purify(self, model: nn.Module, clean: Sequence[Sample], task: Task, *, rng: torch.Generator) -> nn.Module:
        cfg: CLPConfig = self.cfg  # type: ignore[assignment]
        tr = _d_layers.trace(model, dummy_input(clean, task))
        if not tr.conv_bn:  # e.g. a ViT: nothing to measure Lipschitz upper bounds on
            raise NotApplicable("clp needs convolutions followed by BatchNorm (their channels' Lipschitz bounds); "
                                "this model has none")
        modules = dict(model.named_modules())
        per_layer: dict[str, int] = {}
        for conv_name, bn_name in tr.conv_bn:
            conv, bn = modules[conv_name], modules[bn_name]
            lips = channel_lipschitz(conv, bn)  # [C]
            if lips.numel() < 2 or bn.weight is None:  # no spread to threshold / no affine BN to zero
                continue
            idx = torch.where(lips > lips.mean() + cfg.u * lips.std())[0]  # unbiased std, as the authors
            bn.weight[idx] = 0  # the channel's BN output becomes 0 (authors' pruning)
            bn.bias[idx] = 0
            per_layer[bn_name] = int(idx.numel())
        convs = [n for n, m in modules.items() if isinstance(m, _d_layers.CONV_TYPES)]
        model.eval()
        self.report = {"u": cfg.u, "pruned": sum(per_layer.values()), "pruned_per_layer": per_layer,
                       "conv_bn_pairs": len(tr.conv_bn), "convs_without_bn": len(convs) - len(tr.conv_bn),
                       "tuned_params": 0, "steps": 0}
        return model
