"""Shared pieces of the training-controlled attacks (WaNet, BppAttack, Input-aware, LIRA): a small convolutional
encoder-decoder for trigger generators, its seeded construction, state (de)serialisation, and batch helpers used
by the train hooks.

The encoder-decoder follows the generator of Nguyen & Tran's Input-Aware Dynamic Backdoor release
(github.com/VinAIResearch/input-aware-backdoor-attack-release, `networks/models.py`): `steps` down blocks of two
conv-BN-ReLU layers and a 2x max-pool (channels `width`, 2*width, ...), a middle conv block, `steps` up blocks
of a 2x bilinear upsampling and two conv blocks halving the channels, the last one without ReLU.  Their MNIST
setting is width 16, 2 steps; CIFAR/GTSRB width 32, 3 steps.  `scaled_for` picks the same by image size.
Deviation: every upsampling goes to the exact size the matching down block saw, so any H, W works (odd sizes
included); the authors' scale-factor upsampling needs sizes divisible by 2**steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from benchmark.rng import generator


def _block(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    # BatchNorm momentum 0.05 as in the authors' Conv2dBlock.
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, momentum=0.05)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class EncoderDecoder(nn.Module):
    """[B,in_ch,H,W] -> unbounded logits [B,out_ch,H,W]; each attack applies its own squashing."""

    def __init__(self, in_ch: int, out_ch: int, size: tuple[int, int], width: int = 16, steps: int = 2):
        super().__init__()
        self.sizes: list[tuple[int, int]] = []  # spatial size entering each down block
        h, w = size
        self.down = nn.ModuleList()
        cur, nxt = in_ch, width
        for step in range(steps):
            self.sizes.append((h, w))
            self.down.append(nn.Sequential(_block(cur, nxt), _block(nxt, nxt), nn.MaxPool2d(2, ceil_mode=True)))
            h, w = (h + 1) // 2, (w + 1) // 2
            if step < steps - 1:
                cur, nxt = nxt, nxt * 2
        self.middle = _block(nxt, nxt)
        cur = nxt
        self.up = nn.ModuleList()
        for step in range(steps):
            last = step == steps - 1
            nxt = out_ch if last else cur // 2
            self.up.append(nn.Sequential(_block(cur, cur), _block(cur, nxt, relu=not last)))
            cur = nxt

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B,C,H,W]
        for block in self.down:
            x = block(x)
        x = self.middle(x)
        for block, size in zip(self.up, reversed(self.sizes)):
            x = block(nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return x


def scaled_for(shape: Sequence[int]) -> tuple[int, int]:
    """(width, steps): the authors' MNIST network for inputs up to 28 px, their CIFAR network above."""
    return (16, 2) if min(shape[1], shape[2]) <= 28 else (32, 3)


def build_net(shape: Sequence[int], out_ch: int, seed: int, *keys: object) -> EncoderDecoder:
    """A generator for [C,H,W] inputs, initialised from a generator derived from (seed, keys): layer
    constructors draw from torch's global RNG, so it is forked and restored (as `Task.build_model` does)."""
    c, h, w = (int(v) for v in shape)
    width, steps = scaled_for((c, h, w))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator(seed, *keys).initial_seed())
        return EncoderDecoder(c, out_ch, (h, w), width, steps)


def prefixed(prefix: str, net: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().clone() for k, v in net.state_dict().items()}


def unprefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}


@contextlib.contextmanager
def evaluating(*nets: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for a test-time forward, restoring each net's training flag afterwards."""
    flags = [n.training for n in nets]
    try:
        for n in nets:
            n.eval()
        with torch.no_grad():
            yield
    finally:
        for n, f in zip(nets, flags):
            n.train(f)


def net_device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def backdoor_labels(task, y: torch.Tensor, mode: str, target: int) -> torch.Tensor:
    """The task's backdoor label rule applied to a label tensor [n]."""
    return torch.tensor([task.backdoor_label(int(v), mode, target) for v in y.tolist()],
                        dtype=y.dtype, device=y.device)


def clean_positions(batch: dict, poisoned: frozenset[int]) -> torch.Tensor:
    """Positions [n] in the batch whose sample is not one of the dataset's poisoned indices."""
    index = batch["index"].tolist()
    return torch.tensor([i for i, j in enumerate(index) if int(j) not in poisoned], dtype=torch.int64)
