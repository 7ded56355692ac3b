"""Fine-Pruning (Liu, Dolan-Gavitt, Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural
Networks", RAID 2018).

Prune the channels of the last convolutional stage in increasing order of their mean activation on clean data
(backdoor neurons lie dormant on clean inputs), stop before clean accuracy drops too far, then fine-tune.

Reference for hyper-parameters and behaviour: BackdoorBench v2 (SCLBD/BackdoorBench, defense/fp.py and
config/defense/fp/cifar10.yaml).  Like that code, a channel is pruned by masking its columns in the Linear layer
that consumes the last conv stage (the first Linear that runs after the last conv layer): this removes the
channel from the representation even in residual networks, where zeroing the last conv's kernels would not (the
skip path still carries the channel).  Its input, [B, C*k] with C the last conv's channels (k = 1 after global
pooling; 49 for VGG's 7x7 flatten), gives each channel's activation, averaged over the holdout and the k
positions (post-activation, as in the paper).

Hyper-parameters (BackdoorBench): channels pruned in chunks of `once_prune_ratio` = 1 % of the channels; pruning
stops before the relative clean-accuracy drop reaches `acc_ratio` = 0.1 (i.e. accuracy stays >= 90 % of the
unpruned model's); then the pruned model is fine-tuned with the mask held in place.

Deviations:
- The stop criterion is measured on the clean holdout, never on test data (BackdoorBench uses the clean *test*
  set).  BackdoorBench also keeps a reference to the already over-pruned network when it stops (it mutates one
  model in place); here the largest pruning that meets the criterion is kept.
- Fine-tuning uses the shared `TuningConfig` budget (300 steps of 64, SGD lr 0.005, momentum 0.95) so that all
  tuning defenses are comparable; BackdoorBench fine-tunes 100 epochs (lr 0.01, cosine, wd 5e-4).
- The mask is folded into plain weights at the end (same state_dict keys and shapes as the input).
- Models whose last conv stage feeds a token sequence rather than a flat feature vector (ViT) are refused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from benchmark.errors import NotApplicable
from benchmark.registries import DEFENSES
from benchmark.rng import child
from defenses import _d_layers
from defenses.base import Defense, TuningConfig, count_tuned
from tasks.base import Sample, Task


@dataclasses.dataclass(frozen=True)
class FinePruningConfig(TuningConfig):
    acc_ratio: float = 0.1  # stop before holdout accuracy falls by this fraction of the unpruned accuracy
    once_prune_ratio: float = 0.01  # channels pruned per step, as a fraction of the stage's channels
    max_prune_ratio: float = 1.0  # never prune more than this fraction (at least one channel always stays)
    batch_size: int = 256  # forward batch for activations and accuracy (no effect on results)

    def check(self) -> None:
        if not 0 < self.acc_ratio < 1:
            raise self.bad("acc_ratio", "must lie in (0, 1)")
        if not 0 < self.once_prune_ratio <= 1:
            raise self.bad("once_prune_ratio", "must lie in (0, 1]")
        if not 0 <= self.max_prune_ratio <= 1:
            raise self.bad("max_prune_ratio", "must lie in [0, 1]")
        if self.batch_size < 1:
            raise self.bad("batch_size", "must be >= 1")


def find_feature_linear(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Linear, int, int]:
    """(name, the Linear consuming the last conv stage, channels C, positions k per channel)."""
    tr = _d_layers.trace(model, x)
    conv_idx = [i for i, c in enumerate(tr.calls) if isinstance(c.module, _d_layers.CONV_TYPES)]
    if not conv_idx:
        raise NotApplicable("fine_pruning needs a model with convolution layers")
    last_conv = tr.calls[conv_idx[-1]]
    lin = next((c for c in tr.calls[conv_idx[-1] + 1:] if isinstance(c.module, nn.Linear)), None)
    if lin is None or lin.in_shape is None or len(lin.in_shape) != 2:
        raise NotApplicable("fine_pruning needs the last conv stage to feed a Linear layer with a flat "
                            f"[B, features] input (found {None if lin is None else lin.in_shape})")
    channels = last_conv.module.out_channels  # type: ignore[union-attr]
    features = lin.module.in_features  # type: ignore[union-attr]
    if features % channels:
        raise NotApplicable(f"fine_pruning: {lin.name} takes {features} features, not a multiple of the last "
                            f"conv's {channels} channels")
    return lin.name, lin.module, channels, features // channels  # type: ignore[return-value]


@torch.no_grad()
def channel_activations(model: nn.Module, linear: nn.Linear, data: Sequence[Sample], task: Task, channels: int,
                        batch_size: int) -> torch.Tensor:
    """Mean activation per channel [C] over `data`, read at `linear`'s input ([B, C*k] -> [B, C, k])."""
    model.eval()
    total = torch.zeros(channels, dtype=torch.float64)
    captured: list[torch.Tensor] = []
    handle = linear.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
    try:
        for start in range(0, len(data), batch_size):
            batch = task.to_device(task.collate([data[i] for i in range(start, min(len(data), start + batch_size))]))
            captured.clear()
            model(batch["x"])
            feats = captured[0].reshape(captured[0].shape[0], channels, -1)  # [B, C, k]
            total += feats.mean(dim=2).sum(dim=0).double().cpu()
    finally:
        handle.remove()
    return (total / max(1, len(data))).float()


def column_mask(linear: nn.Linear, pruned: torch.Tensor, k: int) -> torch.Tensor:
    """Mask [out, C*k] of `linear.weight` with the columns of the pruned channels zeroed."""
    keep = torch.ones(linear.in_features // k, dtype=torch.bool)
    keep[pruned] = False
    cols = keep.repeat_interleave(k)  # channel-major flatten order of [C, k]
    return cols.to(linear.weight).expand_as(linear.weight).clone()


@DEFENSES.register("fine_pruning")
class FinePruning(Defense):
    Config = FinePruningConfig
    version = 1
    modalities = frozenset({"image", "video", "points"})
    clean_data = "the clean holdout: activations, the pruning stop criterion and fine-tuning"
    paper = ("Liu, Dolan-Gavitt, Garg, Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural "
             "Networks, RAID 2018")
    smoke_overrides = {"fit": {"steps": 4, "batch_size": 32}, "once_prune_ratio": 0.1}

    def purify(self, model: nn.Module, clean: Sequence[Sample], task: Task, *, rng: torch.Generator) -> nn.Module:
        cfg: FinePruningConfig = self.cfg  # type: ignore[assignment]
        name, linear, channels, k = find_feature_linear(model, _d_layers.example_input(clean, task))
        order = list(linear._parameters)
        acts = channel_activations(model, linear, clean, task, channels, cfg.batch_size)
        ranking = torch.argsort(acts)  # least active first

        def holdout_score() -> float:
            return float(task.metrics(model, clean)[task.metric_name])

        base = holdout_score()
        step = max(1, math.ceil(channels * cfg.once_prune_ratio))
        limit = min(channels - 1, int(channels * cfg.max_prune_ratio))
        kept, kept_score, tried = 0, base, []
        prune.custom_from_mask(linear, "weight", column_mask(linear, ranking[:0], k))
        for n in range(step, limit + 1, step):
            linear.weight_mask.copy_(column_mask(linear, ranking[:n], k))  # the prune pre-hook applies it
            score = holdout_score()
            tried.append([n, score])
            if base > 0 and (base - score) / base >= cfg.acc_ratio:
                break
            kept, kept_score = n, score
        linear.weight_mask.copy_(column_mask(linear, ranking[:kept], k))

        params = [p for p in model.parameters() if p.requires_grad]  # includes weight_orig; the mask stays
        result = task.fit(model, clean, cfg.fit, generator=child(rng, "fit"), params=params, desc="fine_pruning")
        prune.remove(linear, "weight")  # fold: weight = weight_orig * mask, a plain parameter again
        _d_layers.restore_param_order(linear, order)
        model.eval()
        self.report = {"layer": name, "channels": channels, "pruned": kept, "pruned_channels": ranking[:kept].tolist(),
                       "holdout_acc_unpruned": base, "holdout_acc_pruned": kept_score, "prune_curve": tried,
                       "tuned_params": count_tuned(params), "steps": result.steps, "fit_seconds": result.seconds}
        return model
