"""Low Frequency attack, LF (Zeng, Park, Mao, Jia, ICCV 2021, "Rethinking the Backdoor Attacks' Triggers: A
Frequency Perspective"), the "smooth trigger" of its Sec. 5.

The trigger is a universal adversarial perturbation towards the target class, found against a clean surrogate
and restricted to low frequencies, then added to poisoned images (poison-label, all2one by default):

    x' = clip(x + v, 0, 1),     v = eps * (g - min g) / (max g - min g),     g = LowPass(u)

Authors' code (YiZeng623/frequency-backdoor, Sec5_Smooth_Trigger), the hyper-parameter reference: a targeted
DeepFool-based universal perturbation on CIFAR-10; after every update the perturbation is smoothed by a
Gaussian low-pass filter (`gauss_smooth`, sigma 6 px on 32 px images) and rescaled into the range [0, 0.2]
(`normalization`).  BackdoorBench (`lf`) adds such a pre-computed pattern at poison rate 10 %.

Here: u [C,H,W] is optimised with Adam (lr 0.01, 300 steps, batches of 128 non-target training images) to
minimise the surrogate's cross-entropy towards the target on clip(x + v); the filter is a Gaussian transfer
function applied with torch.fft (exp(-2 pi^2 sigma^2 |f|^2), sigma = 6/32 of the image side, i.e. the authors'
6 px at 32 px and proportionally at any size); the rescaling into [0, eps], eps = 0.2, is the authors'.  Because
v is an affine function of the filtered g, v stays exactly low-frequency (the shift only moves the DC term)
and ||v||_inf <= eps.

Measured on mnist5k (small_cnn, 10 epochs, seed 0; clean model 95.5 %; `fipbench run image_attacks`),
acc / ASR: 94.3 / 100 %.

Deviations: (1) the universal perturbation is found by minibatch gradient descent on the targeted loss instead
of the authors' per-image DeepFool sweeps with a fooling-rate stopping rule and their "dominant label"
re-targeting (the target stays `target`, fipbench's convention); (2) filtering is circular (FFT) rather than
a zero-padded spatial convolution, so the pattern is smooth across the borders too; (3) the authors' optional
`smooth_clip` (re-smoothing after clipping into [0,1]) is not used: triggered images are simply clipped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from attacks._surrogate import train_surrogate
from attacks.base import Attack, AttackConfig, Trigger
from attacks.sig import AdditiveTrigger
from benchmark.errors import FipbenchError
from benchmark.progress import progress_bar
from benchmark.registries import ATTACKS
from benchmark.rng import child
from tasks.base import FitConfig, Sample, Task, labels_of


@dataclasses.dataclass(frozen=True)
class LFConfig(AttackConfig):
    epsilon: float = 0.2  # v lies in [0, epsilon] (authors' normalisation range 0.2)
    sigma: float = 6 / 32  # std of the Gaussian low-pass in space, as a share of the image side (6 px at 32 px)
    steps: int = 300  # optimisation steps of the universal perturbation
    lr: float = 0.01  # Adam learning rate on u
    batch_size: int = 128
    surrogate: str = "small_cnn"
    surrogate_epochs: int = 5

    def check(self) -> None:
        super().check()
        if not 0 < self.epsilon <= 1:
            raise self.bad("epsilon", "must lie in (0, 1]")
        if not self.sigma > 0:
            raise self.bad("sigma", "must be > 0")
        for key in ("steps", "batch_size", "surrogate_epochs"):
            if getattr(self, key) < 1:
                raise self.bad(key, "must be >= 1")
        if not self.lr > 0:
            raise self.bad("lr", "must be > 0")


def gaussian_transfer(h: int, w: int, sigma: float) -> torch.Tensor:
    """[H,W] frequency response of a Gaussian blur with spatial std sigma*H (rows) and sigma*W (columns) px."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64).view(h, 1)  # cycles per pixel
    fx = torch.fft.fftfreq(w, dtype=torch.float64).view(1, w)
    sy, sx = sigma * h, sigma * w
    return torch.exp(-2 * math.pi**2 * ((sy * fy) ** 2 + (sx * fx) ** 2)).float()


def low_pass(u: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
    """Filter u [...,H,W] by multiplying its 2-D spectrum with `transfer` [H,W] (circular convolution)."""
    return torch.fft.ifft2(torch.fft.fft2(u) * transfer.to(u.device)).real


def smooth_trigger(u: torch.Tensor, transfer: torch.Tensor, eps: float) -> torch.Tensor:
    """v = eps * (g - min g) / (max g - min g), g = low_pass(u): smooth, within [0, eps] (authors' rescaling)."""
    g = low_pass(u, transfer)  # [C,H,W]
    return eps * (g - g.min()) / (g.max() - g.min()).clamp_min(1e-12)


@ATTACKS.register("lf")
class LowFrequency(Attack):
    Config = LFConfig
    version = 1
    modalities = frozenset({"image"})
    paper = ("Zeng, Park, Mao, Jia, Rethinking the Backdoor Attacks' Triggers: A Frequency Perspective, "
             "ICCV 2021")
    smoke_overrides = {"steps": 5, "surrogate_epochs": 1, "batch_size": 32}

    def __init__(self, cfg: AttackConfig | None = None, *, seed: int = 0):
        super().__init__(cfg, seed=seed)
        self.pattern: torch.Tensor | None = None  # [C,H,W] in [0, epsilon]

    def prepare(self, task: Task, train: Sequence[Sample], *, generator: torch.Generator) -> None:
        self.check_task(task)
        cfg: LFConfig = self.cfg  # type: ignore[assignment]
        c, h, w = task.input_shape  # type: ignore[attr-defined]
        model = train_surrogate(task, train, generator=child(generator, "surrogate"), arch=cfg.surrogate,
                                fit=FitConfig(epochs=cfg.surrogate_epochs, batch_size=64, lr=0.05))
        pool = [i for i, y in enumerate(labels_of(train)) if y != cfg.target]  # images the UAP must move
        if not pool:
            raise FipbenchError("lf: the training split holds no image outside the target class")
        transfer = gaussian_transfer(h, w, cfg.sigma)
        gen = child(generator, "lf-uap")
        u = (0.01 * torch.randn(c, h, w, generator=child(generator, "lf-init"))).to(task.device).requires_grad_()
        # A dedicated loop: the variable is one universal perturbation optimised through a frozen surrogate, not
        # the model's weights on the task's data, so Task.fit does not apply.
        opt = torch.optim.Adam([u], lr=cfg.lr)
        with progress_bar("lf perturbation", cfg.steps) as tick:
            for _ in range(cfg.steps):
                pick = torch.randint(len(pool), (min(cfg.batch_size, len(pool)),), generator=gen).tolist()
                x = torch.stack([train[pool[i]].x for i in pick]).to(task.device)  # [B,C,H,W]
                v = smooth_trigger(u, transfer, cfg.epsilon)  # [C,H,W]
                logits = model((x + v).clamp(0, 1))
                loss = F.cross_entropy(logits, torch.full((len(pick),), cfg.target, device=task.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tick(float(loss.detach()))
        self.pattern = smooth_trigger(u.detach(), transfer, cfg.epsilon).cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.pattern is None else {"pattern": self.pattern}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {"pattern"}:
            raise FipbenchError(f"lf: expected learned state 'pattern', got {sorted(state)}; delete the artifact "
                                f"so it is rebuilt")
        self.pattern = state["pattern"].float().cpu()

    def trigger(self, task: Task) -> Trigger:
        if self.pattern is None:
            raise FipbenchError("lf: the trigger is optimised in prepare(); call prepare() (or load the "
                                "artifact's attack state) before poisoning")
        if tuple(self.pattern.shape) != tuple(task.input_shape):  # type: ignore[attr-defined]
            raise FipbenchError(f"lf: learned pattern {tuple(self.pattern.shape)} does not fit input "
                                f"{tuple(task.input_shape)}")  # type: ignore[attr-defined]
        return AdditiveTrigger(self.pattern)
