"""Layer discovery and activation recording shared by fine_pruning, nad, clp and awm (helper-defenses-d).

Everything here finds layers by module *type* and by what one forward pass does (forward hooks record which
module ran when, and which tensor it produced), never by model-specific attribute names, so the defenses run
on the small CNN, PreActResNet-18 and torchvision ResNet / VGG / MobileNet alike (and on 3-D conv nets for video).

- `trace`: one eval-mode forward with hooks on every submodule: call order, output shapes, conv->BN pairs.
- `Recorder`: forward hooks that keep selected modules' outputs (kept in the autograd graph) for a loss.
- `restore_param_order`: masking utilities (torch.nn.utils.prune / parametrize) re-register `weight` at the
  end of a module's parameter dict when they are folded back; this puts it back where it was, so the purified
  model's state_dict lists the same keys in the same order as the backdoored one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import torch
from torch import nn

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclasses.dataclass
class Call:
    """One module call of the traced forward, in the order calls *finished* (a container after its children)."""

    name: str
    module: nn.Module
    out_shape: tuple[int, ...] | None  # None when the output is not a single tensor
    in_shape: tuple[int, ...] | None


@dataclasses.dataclass
class Trace:
    calls: list[Call]
    starts: dict[str, int]  # module name -> order in which its (first) call *started*
    conv_bn: list[tuple[str, str]]  # (conv name, BN name): the BN's input is exactly that conv's output tensor
    counts: dict[str, int]  # module name -> number of calls in the forward

    def first(self, name: str) -> Call:
        return next(c for c in self.calls if c.name == name)


@torch.no_grad()
def trace(model: nn.Module, x: torch.Tensor) -> Trace:
    """Run `model(x)` once in eval mode with hooks on every submodule and record what ran.

    x: one input batch ([B,C,H,W] images, [B,T,C,H,W] video, ...).  Running statistics are untouched (eval).
    """
    was_training = model.training
    model.eval()
    calls: list[Call] = []
    starts: dict[str, int] = {}
    counts: dict[str, int] = {}
    producer: dict[int, str] = {}  # id of a conv output tensor -> conv name
    outputs_alive: list[torch.Tensor] = []  # keep conv outputs alive so that their ids stay unique
    conv_bn: list[tuple[str, str]] = []
    handles = []

    def shape(t):
        return tuple(t.shape) if isinstance(t, torch.Tensor) else None

    for name, mod in model.named_modules():
        if mod is model:
            continue

        def pre(m, args, name=name):
            starts.setdefault(name, len(starts))
            if isinstance(m, NORM_TYPES) and args and id(args[0]) in producer:
                pair = (producer[id(args[0])], name)
                if pair not in conv_bn:
                    conv_bn.append(pair)

        def post(m, args, out, name=name):
            counts[name] = counts.get(name, 0) + 1
            calls.append(Call(name, m, shape(out), shape(args[0]) if args else None))
            if isinstance(m, CONV_TYPES) and isinstance(out, torch.Tensor):
                producer[id(out)] = name
                outputs_alive.append(out)

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Trace(calls, starts, conv_bn, counts)


def example_input(clean: Sequence, task, n: int = 8) -> torch.Tensor:
    """A small batch of the holdout (the first `n` samples), collated and on the task's device."""
    batch = task.to_device(task.collate([clean[i] for i in range(min(n, len(clean)))]))
    return batch["x"]


def stage_outputs(tr: Trace, n: int) -> list[str]:
    """Names of the modules whose outputs are the last `n` feature *stages* (shallow -> deep), for NAD.

    A stage is a spatial resolution that some conv layer produces (feature maps [B,C,*S] with S not all ones);
    its representative is the module that *finishes last* among those producing that resolution, i.e. the
    outermost block of the stage (torchvision ResNet: layer2/3/4; VGG: the stage's last ReLU; small CNN: the
    ReLU after its last conv at that size).  Modules called more than once per forward are skipped (their
    recorded output would be ambiguous); pooling-only resolutions are not stages (no conv produces them).
    """
    conv_res = {c.out_shape[2:] for c in tr.calls
                if isinstance(c.module, CONV_TYPES) and c.out_shape is not None and len(c.out_shape) >= 4}
    conv_res = {s for s in conv_res if any(d > 1 for d in s)}
    last: dict[tuple[int, ...], tuple[int, str]] = {}  # resolution -> (finish index, module name)
    for i, c in enumerate(tr.calls):
        if c.out_shape is None or len(c.out_shape) < 4 or tr.counts.get(c.name, 0) != 1:
            continue
        res = c.out_shape[2:]
        if res in conv_res:
            last[res] = (i, c.name)
    ordered = sorted(last.values())  # by finish order: shallow -> deep
    return [name for _, name in ordered[-n:]]


class Recorder:
    """Keeps the latest output of each named module (a clone, still in the autograd graph).

    Used as a context manager: hooks are removed on exit.  `outputs[name]` is [B,C,*S].
    """

    def __init__(self, model: nn.Module, names: Iterable[str]):
        self.names = list(names)
        self.outputs: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str):
        def hook(m, args, out):
            # clone: a later in-place op (ReLU(inplace=True)) must not change what the loss reads
            self.outputs[name] = out.clone()
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def restore_param_order(module: nn.Module, order: Sequence[str]) -> None:
    """Reorder `module._parameters` to `order` (names missing from `order` keep their relative place at the end)."""
    params = module._parameters
    keys = [k for k in order if k in params] + [k for k in params if k not in order]
    reordered = {k: params[k] for k in keys}
    params.clear()
    params.update(reordered)
