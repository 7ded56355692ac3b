"""What every classification task shares (images, video clips, point clouds): cross-entropy, top-1 accuracy,
ASR / RA, all-to-one and all-to-all backdoor labels, the true-Fisher label sampling, and the random-crop /
flip augmentation over the last two axes (an image [C,H,W] or every frame of a clip [T,C,H,W] alike).

Splits (a stratified holdout carved out of the training pool), model building (with an optional local weight
file) and the augmentation switch live here too.  A subclass provides `data` (an object with x_train, y_train,
x_test, y_test, num_classes), `model_kwargs` (what its model builders take besides `num_classes`) and its config.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import Diverged, FipbenchError
from benchmark.registries import MODELS
from benchmark.rng import generator as rng
from tasks._samples import as_samples, stratified_split
from tasks.base import Batch, Sample, Splits, Task, TaskConfig, labels_of, seeded_init


@dataclasses.dataclass(frozen=True)
class ClassificationConfig(TaskConfig):
    # The task's standard training augmentation, used by every training run: backdoor training and every
    # tuning defense (the FIP authors' code and BackdoorBench both fine-tune with it).
    augment: bool = True
    # Optional local weight file loaded into every freshly built model before backdoor training: fipbench's own
    # layout, or the plain network's state dict (e.g. torchvision's ImageNet ResNet-50 or Kinetics r3d_18 saved
    # with torch.save / safetensors), whose classifier head is dropped when its class count differs (see
    # `load_pretrained`).  Nothing is ever downloaded.
    init_weights: str | None = None


@dataclasses.dataclass(frozen=True)
class CropFlipConfig(ClassificationConfig):
    """Augmentation by random crop after zero padding by `pad` and an optional horizontal flip (images,
    clips).  CIFAR recipe: pad 4 at 32 px, flip on; digits: pad 2, no flip."""

    pad: int = 2
    hflip: bool = False

    def check(self) -> None:
        super().check()
        if self.pad < 0:
            raise self.bad("pad", "must be >= 0")


class ClassificationTask(Task):
    metric_name = "acc"
    Config: ClassVar[type[TaskConfig]] = ClassificationConfig
    eval_batch_size: ClassVar[int] = 512  # inputs per forward in predict / metrics
    data: Any  # the dataset, built lazily by the subclass (see the module docstring)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @functools.cache
    def splits(self) -> Splits:
        d = self.data
        # The holdout is carved out of the training pool (stratified, fixed by split_seed) and never poisoned.
        train_idx, hold_idx = stratified_split(d.y_train, self.cfg.holdout_fraction,
                                               rng(self.cfg.split_seed, self.dataset, "holdout"))
        # In-memory float inputs give lists of Samples; uint8 inputs and lazy (file-backed) sources give views
        # that build each Sample on access (see tasks._samples).
        return Splits(train=as_samples(d.x_train, d.y_train, train_idx), test=as_samples(d.x_test, d.y_test),
                      holdout=as_samples(d.x_train, d.y_train, hold_idx))

    def model_kwargs(self) -> dict[str, Any]:
        """What this task's model builders take besides `num_classes` (input shape, normalisation, ...)."""
        raise NotImplementedError

    def build_model(self, arch: str, generator: torch.Generator | None = None) -> nn.Module:
        builder = self.lookup(MODELS, arch, "model")
        with seeded_init(generator):
            model = builder(num_classes=self.num_classes, **self.model_kwargs())
        init = getattr(self.cfg, "init_weights", None)
        if init:
            path = Path(init).expanduser()
            if not path.is_file():
                raise FipbenchError(f"init_weights {str(path)!r} does not exist; give the path of a local "
                                    f".safetensors (or weights-only .pt) file for model {arch!r}")
            load_pretrained(model, path)
        return model.to(self.device)

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Crop / flip under a `CropFlipConfig`; tasks with another recipe override this."""
        cfg = self.cfg
        if not isinstance(cfg, CropFlipConfig) or not cfg.augment or (cfg.pad == 0 and not cfg.hflip):
            return batch
        return self.crop_flip(batch, generator, cfg.pad, cfg.hflip)

    def collate(self, samples: Sequence[Sample]) -> Batch:
        return {"x": torch.stack([s.x for s in samples]),  # [B,C,H,W] images, [B,T,C,H,W] clips, [B,N,3] points
                "y": torch.tensor([s.y for s in samples], dtype=torch.int64),  # [B]
                "index": torch.tensor([s.index for s in samples])}

    def crop_flip(self, batch: Batch, generator: torch.Generator, pad: int, hflip: bool) -> Batch:
        """Random crop after zero padding by `pad`, then a random horizontal flip, on the last two axes.  One
        offset and one flip per sample, so every frame of a clip moves together."""
        x = batch["x"]  # [B,...,H,W]
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        p = pad
        padded = F.pad(x, (p, p, p, p))  # zero padding of the last two axes, [B,...,H+2p,W+2p]
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).tolist()
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).tolist()
        out = torch.stack([padded[i, ..., dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
        if hflip:
            flip = torch.rand(b, generator=generator) < 0.5
            out[flip] = out[flip].flip(-1)
        return {**batch, "x": out}

    def loss(self, model: nn.Module, batch: Batch, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction=reduction)

    def sample_model_labels(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> Batch:
        with torch.no_grad():
            probs = model(batch["x"]).softmax(dim=1).cpu()  # [B,K]
        if not bool(probs.isfinite().all()):  # the weights went non-finite in the step before
            raise Diverged("model outputs not finite (predictive distribution for the Fisher's labels)")
        y = torch.multinomial(probs, 1, generator=generator).flatten().to(batch["y"].device)
        return {**batch, "y": y}

    @torch.no_grad()
    def logits(self, model: nn.Module, data: Sequence[Sample], batch_size: int | None = None) -> torch.Tensor:
        """Model outputs [N,K] for every sample, in order (eval mode)."""
        batch_size = batch_size or self.eval_batch_size
        model.eval()
        out = []
        for start in range(0, len(data), batch_size):
            batch = self.to_device(self.collate([data[i] for i in range(start, min(len(data), start + batch_size))]))
            out.append(model(batch["x"]).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.num_classes)

    def predict(self, model: nn.Module, data: Sequence[Sample], batch_size: int | None = None) -> torch.Tensor:
        return self.logits(model, data, batch_size).argmax(dim=1) if len(data) else torch.empty(0, dtype=torch.int64)

    def metrics(self, model: nn.Module, data: Sequence[Sample]) -> dict[str, float]:
        y = torch.tensor(labels_of(data))  # from the view's label list: no second decode of every input
        return {"acc": float((self.predict(model, data) == y).float().mean())}

    def backdoor_metrics(self, model: nn.Module, triggered: Sequence[Sample],
                         clean: Sequence[Sample]) -> dict[str, float]:
        pred = self.predict(model, triggered)
        target = torch.tensor(labels_of(triggered))
        true = torch.tensor(labels_of(clean))
        return {"asr": float((pred == target).float().mean()), "ra": float((pred == true).float().mean())}

    def backdoor_label(self, y: int, mode: str, target: int) -> int:
        if mode == "all2one":
            return target
        if mode == "all2all":
            return (y + 1) % self.num_classes
        raise FipbenchError(f"{type(self).registry_name} has no label mode {mode!r}; "  # type: ignore[attr-defined]
                            f"use 'all2one' or 'all2all'")


def load_pretrained(model: nn.Module, path: Path) -> str:
    """Load `init_weights` into a freshly built model; returns what was loaded.

    Accepted: (1) a checkpoint of the whole model, fipbench's layout (e.g. a backdoored model from the cache);
    (2) the wrapped network's own state dict, as torchvision / timm save it (no "1." prefix, no normalisation
    buffers: the model's own input normalisation is kept), optionally under DataParallel's "module." prefix.
    In (2) a classifier head whose shape differs (ImageNet's 1000 or Kinetics' 400 classes) is left at its
    random init, as in any fine-tuning; any other missing, unexpected or mis-shaped tensor is a one-line error
    (e.g. a 7x7 ImageNet stem for a model built with the 3x3 small-input stem).
    """
    from benchmark.cache import load_weights, read_state  # safetensors or weights-only: never a pickle

    state = read_state(path)
    wrapped = isinstance(model, nn.Sequential) and len(model) == 2 and not list(model[0].parameters())
    if not wrapped or 2 * len(set(state) & set(model.state_dict())) > len(state):  # mostly the model's own names
        load_weights(model, path, state)  # the whole model (or a plain one): exact names and shapes
        return "all weights"
    net = model[1]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = net.state_dict()
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    head = {f"{linears[-1]}.weight", f"{linears[-1]}.bias"} & set(own) if linears else set()
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    # a head of another class count, or none (a backbone-only file), stays at its random init
    dropped = [k for k in wrong if k in head] + sorted(head - set(state))
    # BatchNorm fills in num_batches_tracked itself (older checkpoints predate the buffer)
    missing = sorted(k for k in set(own) - set(state) - set(dropped) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} is {tuple(state[k].shape)} in the file but {tuple(own[k].shape)} in the model"
              for k in wrong if k not in head]
    problems = ([f"missing {missing[:3]}"] if missing else []) + \
        ([f"unexpected {unexpected[:3]}"] if unexpected else []) + shapes[:2]
    if problems:
        raise FipbenchError(f"{path}: checkpoint does not fit model {type(net).__name__} ({'; '.join(problems)}); "
                            f"check the model name, its small-input adaptations and the dataset it was trained for")
    net.load_state_dict({k: v for k, v in state.items() if k not in dropped}, strict=False)
    return "backbone; classifier head left at random init" if dropped else "network weights"
