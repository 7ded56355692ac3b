"""NAD, Neural Attention Distillation (Li, Lyu, Koren, Lyu, Li, Ma, "Neural Attention Distillation: Erasing
Backdoor Triggers from Deep Neural Networks", ICLR 2021).

1. Teacher: a copy of the backdoored model fine-tuned on the clean holdout.
2. Student: the backdoored model, trained on the holdout with
       L = task.loss + Σ_i β_i · AT(F_i^S, F_i^T),
       A(F) = a / ‖a‖₂ with a = Σ_c |F_c|^p (channel-wise sum of |activation|^p, flattened over space),
       AT(F^S, F^T) = mean squared difference of A(F^S) and A(F^T)  (the authors' `AT` module, p = 2),
   at the outputs of the deepest feature stages (the teacher fixed, in eval mode).
The attention term is an `on_loss` hook inside `Task.fit`: the student's feature maps are recorded by forward hooks
during `fit`'s own forward, the teacher's by one no-grad forward on the same (augmented) batch.

Reference for hyper-parameters and behaviour: the authors' code (github.com/bboylyg/NAD: at.py, config) and
BackdoorBench (defense/nad.py, config/defense/nad/config.yaml): p = 2, β = 500 / 1000 / 1000 for the three
distilled stages (shallow -> deep), teacher fine-tuned 10 epochs (BackdoorBench te_epochs = 10) with SGD lr 0.01,
momentum 0.9, weight decay 1e-4.

Layers, found generically (`_d_layers.stage_outputs`): the last three spatial resolutions produced by conv layers,
each represented by the module that finishes last at that resolution (torchvision ResNet: layer2/3/4, as in the
authors' WRN groups).  When a model has fewer stages (the small CNN has two), the deepest β's are used.

Deviations:
- The student's budget is the shared `TuningConfig` one (300 steps of 64, SGD lr 0.005, momentum 0.95, constant
  lr), so all tuning defenses are comparable; the authors train 20 epochs from lr 0.1 with step decay.
- The teacher runs 10 epochs of the holdout with a cosine schedule (the authors' teacher schedule is step decay).
- Nothing is selected on test data; the last iterate is returned.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import NotApplicable
from benchmark.registries import DEFENSES
from benchmark.rng import child
from defenses import _d_layers
from defenses.base import Defense, TuningConfig, count_tuned
from tasks.base import Batch, FitConfig, Hook, Sample, Task


@dataclasses.dataclass(frozen=True)
class NADConfig(TuningConfig):
    betas: tuple[float, ...] = (500.0, 1000.0, 1000.0)  # per distilled stage, shallow -> deep (authors)
    p: float = 2.0  # attention map power (authors)
    teacher_fit: FitConfig = FitConfig(epochs=10, batch_size=64, lr=0.01, momentum=0.9, weight_decay=1e-4,
                                       schedule="cosine")

    def check(self) -> None:
        if not self.betas or any(b < 0 for b in self.betas):
            raise self.bad("betas", "must be a non-empty list of weights >= 0")
        if self.p <= 0:
            raise self.bad("p", "must be > 0")


def attention_map(fm: torch.Tensor, p: float, eps: float = 1e-6) -> torch.Tensor:
    """[B, C, *S] feature map -> [B, prod(S)] attention map: Σ_c |F_c|^p, L2-normalised per sample."""
    am = fm.abs().pow(p).sum(dim=1).flatten(1)  # [B, prod(S)]
    return am / (am.norm(dim=1, keepdim=True) + eps)


def attention_loss(fs: torch.Tensor, ft: torch.Tensor, p: float) -> torch.Tensor:
    """The authors' AT loss: MSE between the student's and the teacher's attention maps."""
    return F.mse_loss(attention_map(fs, p), attention_map(ft, p))


class AttentionDistillation(Hook):
    """Adds Σ_i β_i · AT(student_i, teacher_i) to the task loss."""

    def __init__(self, student: nn.Module, teacher: nn.Module, names: Sequence[str], betas: Sequence[float],
                 p: float):
        self.teacher, self.names, self.betas, self.p = teacher, list(names), list(betas), p
        self.student_rec = _d_layers.Recorder(student, self.names)
        self.teacher_rec = _d_layers.Recorder(teacher, self.names)
        self.last: dict[str, float] = {}

    def on_loss(self, model: nn.Module, batch: Batch, loss: torch.Tensor, step: int) -> torch.Tensor:
        self.teacher.eval()
        with torch.no_grad():
            self.teacher(batch["x"])
        at = sum(b * attention_loss(self.student_rec.outputs[n], self.teacher_rec.outputs[n].detach(), self.p)
                 for n, b in zip(self.names, self.betas))
        self.last = {"ce": float(loss.detach()), "at": float(at.detach())}  # type: ignore[union-attr]
        return loss + at

    def on_fit_end(self, model: nn.Module) -> None:
        self.student_rec.close()
        self.teacher_rec.close()


@DEFENSES.register("nad")
class NAD(Defense):
    Config = NADConfig
    version = 1
    modalities = frozenset({"image", "video"})
    clean_data = "the clean holdout: teacher fine-tuning and attention distillation"
    paper = ("Li, Lyu, Koren, Lyu, Li, Ma, Neural Attention Distillation: Erasing Backdoor Triggers from Deep "
             "Neural Networks, ICLR 2021")
    smoke_overrides = {"fit": {"steps": 4, "batch_size": 32}, "teacher_fit": {"steps": 3, "batch_size": 32}}

    def purify(self, model: nn.Module, clean: Sequence[Sample], task: Task, *, rng: torch.Generator) -> nn.Module:
        cfg: NADConfig = self.cfg  # type: ignore[assignment]
        names = _d_layers.stage_outputs(_d_layers.trace(model, _d_layers.example_input(clean, task)),
                                        len(cfg.betas))
        if not names:
            raise NotApplicable("nad distils convolutional feature maps; this model has none")
        betas = list(cfg.betas)[-len(names):]  # the deepest β's when the model has fewer stages

        teacher = copy.deepcopy(model)
        t_params = [p for p in teacher.parameters() if p.requires_grad]
        t_result = task.fit(teacher, clean, cfg.teacher_fit, generator=child(rng, "teacher"), params=t_params,
                            desc="nad-teacher")
        teacher.eval().requires_grad_(False)

        params = [p for p in model.parameters() if p.requires_grad]
        hook = AttentionDistillation(model, teacher, names, betas, cfg.p)
        result = task.fit(model, clean, cfg.fit, hooks=[hook], generator=child(rng, "student"), params=params,
                          desc="nad")
        self.report = {"layers": names, "betas": betas, "teacher_steps": t_result.steps,
                       "tuned_params": count_tuned(params), "steps": result.steps,
                       "fit_seconds": result.seconds + t_result.seconds, "final_loss": result.final_loss,
                       "final_at_loss": hook.last.get("at")}
        return model
