"""The task interface every ML task implements, and the one training loop (`Task.fit`).

A `Task` owns data (splits), models, the training objective (`loss`) and the metrics.  Attacks and defenses
only talk to a task through this interface, so one defense runs on every task whose loss it can use.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import dataclasses
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from benchmark.config import Config
from benchmark.errors import Diverged, FipbenchError

Batch = dict[str, Any]  # tensors on the task's device; task-specific keys (e.g. "x" [B,C,H,W], "y" [B])

# True while a defense or a figure differentiates a gradient (`defenses.fisher.second_order`).  A model part
# whose fast kernel has no second derivative (Faster R-CNN's RoIAlign) then switches to an exact, slower one that
# has it; everything else ignores it.
_SECOND_ORDER: contextvars.ContextVar[bool] = contextvars.ContextVar("fipbench_second_order", default=False)


def second_order_wanted() -> bool:
    return _SECOND_ORDER.get()


@contextlib.contextmanager
def wanting_second_order() -> Iterator[None]:
    token = _SECOND_ORDER.set(True)
    try:
        yield
    finally:
        _SECOND_ORDER.reset(token)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One example in its natural space.

    x: image [C,H,W] float in [0,1]; video [T,C,H,W]; points [N,3+]; or source text.
    y: class id; {"boxes","labels"}; or target text.
    index: position in the clean split it came from (triggers are deterministic per index).
    """

    x: Any
    y: Any
    index: int


def labels_of(data: Sequence[Sample]) -> list[Any]:
    """Every sample's `y`, in order.  Sequences backed by files (lazy image sources, poisoned views) expose a
    `labels` list so that this needs no decoding; plain lists are read sample by sample."""
    labels = getattr(data, "labels", None)
    return list(labels) if labels is not None else [data[i].y for i in range(len(data))]


@dataclasses.dataclass(frozen=True)
class Splits:
    """Disjoint train / test / defense-holdout; the holdout is never poisoned and never trained on by attacks."""

    train: Sequence[Sample]
    test: Sequence[Sample]
    holdout: Sequence[Sample]


@dataclasses.dataclass(frozen=True)
class FitConfig(Config):
    """One training run: used for backdoor training (attack artifacts) and for every tuning defense."""

    epochs: int = 10
    steps: int | None = None  # if set, train exactly this many steps, cycling the data (epochs ignored)
    batch_size: int = 64
    lr: float = 0.01
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float | None = None

    def check(self) -> None:
        if self.epochs < 1:
            raise self.bad("epochs", "must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise self.bad("steps", "must be >= 1 or null")
        if self.batch_size < 1:
            raise self.bad("batch_size", "must be >= 1")
        if not self.lr > 0:
            raise self.bad("lr", "must be > 0")


class Hook:
    """Lightning-callback-shaped hooks into `Task.fit`.  Attacks that control training and defenses that add
    regularisers use these instead of writing their own loop.  Every method is optional."""

    total_steps: int | None = None  # set by `Task.fit` before `on_fit_start`: lets a hook schedule by progress
    # set by `Task.fit` before each step: the optimiser's lr for that step over its base lr (1 when constant), so
    # a hook that steps an optimiser of its own can follow the task's schedule
    lr_ratio: float = 1.0

    def on_fit_start(self, model: nn.Module, task: Task) -> None: ...

    def on_batch(self, batch: Batch, step: int) -> Batch:
        """May rewrite the collated batch (e.g. add noise-mode samples)."""
        return batch

    def on_loss(self, model: nn.Module, batch: Batch, loss: torch.Tensor, step: int) -> torch.Tensor:
        """May add terms to the objective (e.g. FIP's regularisers)."""
        return loss

    def on_step_end(self, model: nn.Module, step: int) -> None: ...

    def on_fit_end(self, model: nn.Module) -> None: ...


@dataclasses.dataclass(frozen=True)
class FitResult:
    steps: int
    seconds: float
    final_loss: float


@dataclasses.dataclass(frozen=True)
class TaskConfig(Config):
    holdout_fraction: float = 0.01  # share of the training pool kept clean for defenses (paper: 1 %)
    split_seed: int = 0  # the split is a property of the dataset, fixed across run seeds

    def check(self) -> None:
        if not 0 < self.holdout_fraction < 0.5:
            raise self.bad("holdout_fraction", "must lie in (0, 0.5)")


class Task(abc.ABC):
    """Base class of every task adapter; subclasses register with `@TASKS.register(name)`."""

    modality: ClassVar[str]
    version: ClassVar[int] = 1
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    metric_name: ClassVar[str]  # the clean metric's key in `metrics()`, e.g. "acc", "map50", "bleu"
    # Clean samples in the fixed batch of the sharpness figures (Hessian power iteration, Hutchinson trace):
    # tasks whose per-sample loss is costly (detection: a detector forward per image) use fewer.
    sharpness_batch: ClassVar[int] = 128

    def __init__(self, dataset: str, cfg: TaskConfig | None = None, *, data_root: Path | None = None,
                 device: str | torch.device = "cpu"):
        self.dataset = dataset
        self.cfg = cfg or self.Config()
        self.data_root = data_root
        self.device = torch.device(device)

    # -- data and models ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def splits(self) -> Splits: ...

    def lookup(self, registry: Any, name: str, kind: str) -> Any:
        """This task's dataset loader or model builder `name` from `registry`.  Entries mark their task with a
        `task` attribute (unmarked ones are image classification's); another task's entry is a one-line error
        listing this task's own."""
        me = type(self).registry_name  # type: ignore[attr-defined]
        entry = registry.get(name, where=f"task {me}")
        owner = getattr(entry, "task", "image_classification")
        if owner != me:
            own = [n for n in registry.names() if getattr(registry.get(n), "task", "image_classification") == me]
            raise FipbenchError(f"{kind} {name!r} belongs to task {owner!r}, not {me}; use one of {', '.join(own)}")
        return entry

    @abc.abstractmethod
    def build_model(self, arch: str, generator: torch.Generator | None = None) -> nn.Module:
        """A fresh model with normalisation inside; `generator` seeds its initialisation."""

    @abc.abstractmethod
    def collate(self, samples: Sequence[Sample]) -> Batch:
        """Stack samples into a CPU batch; `to_device` moves it."""

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Training-time data augmentation, applied by `fit` to every batch (attack training and defenses
        alike); identity unless the task defines its standard recipe."""
        return batch

    def to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    # -- objective and metrics ----------------------------------------------------------------------------
    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Batch, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
        """The one training objective; `reduction="none"` gives per-sample losses [B]."""

    def sample_model_labels(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Batch | None:
        """The batch with labels drawn from the model's predictive distribution (for the true Fisher), or None
        where the task has no tractable predictive distribution (the empirical Fisher is used then)."""
        return None

    @abc.abstractmethod
    def metrics(self, model: nn.Module, data: Sequence[Sample]) -> dict[str, float]:
        """Clean metrics; must contain `metric_name`."""

    @abc.abstractmethod
    def backdoor_metrics(self, model: nn.Module, triggered: Sequence[Sample],
                         clean: Sequence[Sample]) -> dict[str, float]:
        """`asr` (triggered output hits the attacker's target) and `ra` (triggered input still gets the clean
        answer); `triggered[i]` is the triggered version of `clean[i]`."""

    def backdoor_label(self, y: Any, mode: str, target: int) -> Any:
        raise FipbenchError(f"task {type(self).registry_name!r} has no label mode {mode!r}; "  # type: ignore
                            f"choose an attack made for this task")

    # -- the only training loop ---------------------------------------------------------------------------
    def fit(self, model: nn.Module, data: Sequence[Sample], cfg: FitConfig, *, hooks: Iterable[Hook] = (),
            generator: torch.Generator, params: Iterable[nn.Parameter] | None = None,
            desc: str = "train") -> FitResult:
        """Minimise `self.loss` (plus whatever hooks add) over `data`; returns step count and wall time.
        Raises `Diverged` at the first step whose loss is not finite (the rest of the run could only be NaN).

        `params` restricts what is optimised (default: every parameter with requires_grad).  Dropout and
        anything else that draws from torch's global RNG during training is seeded from `generator` (on a
        forked RNG, so the caller's global state is untouched): a run does not depend on what ran before it
        in the same process.
        """
        # torch.manual_seed seeds the CUDA generators too: fork the GPU's so that its state is restored as well
        gpus = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus):
            torch.manual_seed((generator.initial_seed() + 1) % 2 ** 63)  # a stream apart from the data order's
            return self._fit(model, data, cfg, hooks=hooks, generator=generator, params=params, desc=desc)

    def _fit(self, model: nn.Module, data: Sequence[Sample], cfg: FitConfig, *, hooks: Iterable[Hook],
             generator: torch.Generator, params: Iterable[nn.Parameter] | None, desc: str) -> FitResult:
        from benchmark.progress import progress_bar  # rich is imported only when something trains

        hooks = list(hooks)
        model.to(self.device).train()
        params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
        if not params:
            raise ValueError("fit() got no trainable parameters")
        loader = torch.utils.data.DataLoader(
            data, batch_size=min(cfg.batch_size, len(data)), shuffle=True, drop_last=len(data) > cfg.batch_size,
            collate_fn=self.collate, generator=generator, num_workers=0)
        total = cfg.steps or cfg.epochs * len(loader)
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total) if cfg.schedule == "cosine"
                 else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
        for h in hooks:
            h.total_steps = total
            h.on_fit_start(model, self)
        step, loss_value, start = 0, math.nan, time.perf_counter()
        with progress_bar(desc, total, enabled=True) as advance:
            while step < total:
                for batch in loader:
                    batch = self.to_device(self.augment(batch, generator))
                    lr_ratio = opt.param_groups[0]["lr"] / cfg.lr  # this step's, before sched.step()
                    for h in hooks:
                        h.lr_ratio = lr_ratio
                        batch = h.on_batch(batch, step)
                    loss = self.loss(model, batch)
                    for h in hooks:
                        loss = h.on_loss(model, batch, loss, step)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    opt.step()
                    sched.step()
                    loss_value = float(loss.detach())
                    step += 1
                    if not math.isfinite(loss_value):  # its gradient has reached the weights: no way back
                        raise Diverged(f"{desc}: loss {loss_value} at step {step} of {total}")
                    for h in hooks:
                        h.on_step_end(model, step)
                    advance(loss_value)
                    if step >= total:
                        break
        for h in hooks:
            h.on_fit_end(model)
        model.eval()
        return FitResult(steps=step, seconds=time.perf_counter() - start, final_loss=loss_value)


@contextlib.contextmanager
def seeded_init(generator: torch.Generator | None) -> Iterator[None]:
    """Layer constructors draw from torch's global RNG: fork it and seed it from `generator`, so that a model's
    initialisation is seeded without leaving the global state changed (None: unseeded, still forked)."""
    with torch.random.fork_rng(devices=[]):
        if generator is not None:
            torch.manual_seed(generator.initial_seed())
        yield
