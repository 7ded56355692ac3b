"""FIP and Fast FIP (Karim, Arafat, Rakin, Guo, Rahnavard, "Fisher Information guided Purification against
Backdoor Attacks", ACM CCS 2024).

Objective (DESIGN.md §4), minimised over the clean holdout D from the backdoored weights θ̄:

    L(θ) = task.loss(θ; B)
         + η_F · T(θ; B)                              every `trace_every`-th step
         + (η_r / 2) · Σ_j F̄_j (θ_j − θ̄_j)²

T(θ;B) = ‖∇_θ mean_i ℓ_i(θ)‖² by double backward, with labels drawn from the model's predictive distribution
where the task has one (classification: E[|B|·T] = Tr F, the true Fisher's trace; sequence generation: target
sequences sampled token by token from the model), else the given labels (detection: empirical Fisher).  F̄ is
the diagonal empirical Fisher at θ̄ on D, eval mode, computed once.

Fast FIP (`fast_fip`) trains only the singular-value shifts δ of every Conv/Linear weight
(W = U diag(relu(σ+δ)) Vᵀ, see `defenses._spectral`), with both regularisers in δ-space, and folds the result
back into plain layers.  By default each layer runs with the recomposed weight, whose backward computes the full
weight gradient and projects it, so a step costs what a FIP step costs (FIP's per-step time over Fast FIP's: CPU
0.94-1.03x, GPU 0.78-1.07x); `factorized: true` runs k×k layers as conv(Vᵀ) → × relu(σ+δ) → conv(U) and skips every
weight-gradient convolution (the same objective, faster per step; start equal up to float rounding).

Deviations from the authors' released code, on purpose: the released trace term is a zero-mean random linear
term in the gradient and its retention term is commented out, and its checkpoints are picked with test-set
metrics.  fipbench implements the objective as the paper states it and selects nothing on test data (the last
iterate is returned).  `variant: released` reproduces the released behaviour for comparison with published
numbers (its trace term, see `released_trace_term`; no retention term), labelled in the record's config and
defense report; it also returns the last iterate.

Measured behaviour (mnist5k, small CNN, 200-image holdout; see README): the exact term's gradient is 2·H·g, so
its curvature is ~2·η_F·λ² where λ is the Hessian's top eigenvalue (≈ 9-12 in train mode here, 190-350 in eval
mode, the backdoored models being the sharper, as the paper reports).  With momentum 0.95 the effective step
lr/(1−m) = 0.1 is far beyond SGD's stability bound 2/(2·η_F·λ²) ≈ 0.01 for that term, so the trace steps kick
the model (clean accuracy falls to 50-70 % within 50 steps, then recovers on the CE term).  Those kicks, not a
smooth descent, are what lowers ASR: with gradient clipping at 1 (a stable descent of the same objective) ASR
stays ≥ 98 %; with Adam it stays ≈ 85 %; with true instead of sampled labels the model collapses to chance.
The released variant at this budget also collapses (≈ 20-27 % clean accuracy).  No setting tried reached
ASR ≤ 5 % with a clean drop ≤ 3 points on both BadNets and Blend.

Budget sensitivity (benchmarks/fip_budget.py → results/fip_budget.md; same models, FT at the same budgets): with a
cosine-decayed lr the early trace steps still kick the model out of the backdoor's basin while the late, small
steps let the task and retention terms recover clean accuracy.  BadNets / Blend, clean % / ASR %: default (lr
0.005 constant, 300 steps) 81.1/47.9 and 80.8/39.3; lr 0.01 cosine 600 steps 91.9/14.8 and 91.4/59.1; lr 0.02
cosine 600 steps 89.2/4.6 and 90.1/4.1 (FT there: 93.3/96.9 and 93.5/87.6); seed 1 at that budget: 90.1/7.2 and
90.7/29.4 (FT 92.8/79.3 and 93.0/99.6).  So FIP lowers ASR far more than FT at the same budget, at 4-6.5 points
of clean accuracy, but not to ≤ 5 % on every seed.  The default is NOT moved to the lr 0.02 budget: these are
test-set figures, and picking the default from them is the test-set selection fipbench refuses.  At the authors'
full budget (2,000 steps of 128, lr 0.005 constant; one probe run on the seed-0 BadNets model, 654 s on 2 cores)
FIP keeps clean accuracy (93.5 %) but leaves ASR at 83.4 %: the budget reduction is not what keeps the default
from removing the backdoor.  Larger η_r trades back: lr 0.02 with η_r = 30 / 100 gives BadNets 93.3/60.9 and
93.1/87.3.

Fast FIP on the same BadNets model (probe runs, 600 steps, cosine): with Adam (default; lr 0.01-0.05, η_F up to
500) or SGD (lr 0.1-0.5, η_F 0.5) ASR stays 100 %: in δ-space ‖∇_δ ℓ‖² is tiny next to the task loss, and Adam
normalises its gradient away.  With SGD lr 0.02 (momentum 0.95) the term is inert at η_F = 5 and 15 (95.4/100,
95.3/100) and destabilises the model at η_F = 50 (67.6/0.0) and 500 (12.1/0.0): no smooth regime in between was
found, again pointing at instability rather than smoothing as what removes the backdoor here.

A second seed of the same 10-epoch table (configs/image_attacks.yaml, seed 1, every attack but all-to-all
Input-aware, whose training diverges there; all-to-all Trojan trained 30 epochs 97.9 / 93.7 -> 95.8 / 15.3 %,
seed 0 98.2 / 94.5 -> 93.9 / 8.1 %): FIP meets the target on no row, and the same defaults swing by
seed, SIG 94.5 -> 85.4 / 91.8 % (seed 0: 86.2 / 1.0 %), Blend 95.5 -> 31.2 / 77.3 % (seed 0: 80.8 / 39.3 %); the
clean model loses 6.9 points (8.9 on seed 0).

On models trained for 60 epochs instead of 10 (configs/image_attacks_long.yaml, seeds 0 | 1; same defaults):
FIP removes Input-aware's backdoor within 3 points on both seeds (98.0 / 94.6 -> 95.4 / 1.2 %, 98.1 / 87.3 ->
95.3 / 0.2 %; FT 97.3 / 79.2 and 97.4 / 22.9 %) and on a third (97.7 / 86.6 -> 95.6 / 2.7 %, FT 97.2 / 46.2 %,
Fast FIP 97.0 / 74.2 %; that clean model loses 15.3 points to FIP, 98.6 -> 83.3 %), its one success on the
image table, but collapses the seed-0
all-to-all Input-aware model (98.5 -> 44.5 %; seed 1: 98.3 -> 88.6 / 1.6 %) and costs the clean 60-epoch
models 10 and 5 points (98.7 -> 88.4, 98.1 -> 93.2 %): the same kicks, which on one model happen to leave
the backdoor's basin at little clean cost.  Input-aware trained with its generator's lr following the
classifier's schedule (`lr_g_schedule: task`; a stronger backdoor, 99.2 | 94.7 | 91.6 % ASR on seeds 0 | 1 | 2):
FIP 95.5 / 34.8 | 94.4 / 1.7 | 84.6 / 1.3 % (2.5 | 3.4 | 13.5 points down), FT 97.6 / 98.8 | 96.9 / 47.3 |
97.0 / 65.1 %: not met, so that success holds for the constant-lr generator only.

Issue 2's own attacks at 60 epochs (converged, 97.9 / 100 | 98.1 / 100 and 98.2 / 100 | 98.3 / 100, with twice
the clean model's Fisher trace): BadNets 78.4 / 5.1 | 92.2 / 5.3 %, Blend 93.2 / 86.2 | 93.8 / 83.8 % (FT
97.0 / 92.2 | 97.3 / 97.9 and 97.6 / 100 | 97.4 / 100; Fast FIP 100 % everywhere): training to convergence does
not make the defaults meet the target either.

Along the run (benchmarks/fip_trajectory.py: test figures every 10 steps of the default budget, the same runs as
the records; 60-epoch BadNets / Blend, seeds 0 | 1): within 40-90 steps clean accuracy falls to 15-33 % (ASR
0 on the way), then model and backdoor are relearnt from the 200-image holdout: from step 150 on BadNets stays
mostly removed (ASR 1-30 %), Blend's backdoor is back with the accuracy (74-99 %).  No evaluated point of any
run meets the target, so no checkpoint choice, test-based or not, would have met it.  The true Fisher trace
on clean test images does not track the backdoor: Fast FIP lowers it 2-6.5x (164 -> 76, 409 -> 63, 318 -> 69)
and leaves ASR at 100 %, and FIP's seed-0 BadNets run ends sharper than it started (164 -> 581) at ASR 5.1 %.
The 3D CNN (BadNets) collapses the same way (seed 0: 98.5 -> 14.7 % at step 20); PointNet does not, and
PointBA-O's ASR falls gradually to 5.4 % at step 210 (seed 0, 1.2 points down), then climbs back to 28.9 %.

With the paper's classifier instead of the small CNN (PreActResNet-18, configs/image_preact.yaml: the same data,
split, 10-epoch training and defaults; seeds 0 | 1 | 2, one run each): BadNets 99.1 / 100 | 98.8 / 100 | 98.4 /
100 % -> FIP 97.7 / 4.1 | 98.1 / 98.3 | 96.4 / 35.1 %, met on seed 0 only (FT 98.6 / 99.4 | 98.2 / 100 | 98.4 /
100, Fast FIP 99.0 / 100 | 98.6 / 100 | 98.7 / 100);
Blend 99.0 / 100 | 99.0 / 100 -> FIP 97.5 / 87.8 | 98.5 / 99.9, not met (FT 98.5 / 99.9 | 99.0 / 99.9).  So at
the same budget FIP keeps clean accuracy on the larger model (0.7-2.0 points, against 11-15 on the small CNN)
but removes the backdoor in one run of five: the same pattern as above, a kick that happens to leave the
backdoor's basin.  The clean PreAct models lose 1.6 | 1.4 points to FIP (FT 0.1 | 0.3).  2.8 s per FIP
step, 1.5 per FT step (seed 0; the seed-1 runs shared the cores).

Fast FIP with `tune_norm_and_bias: true` (δ plus every bias and BatchNorm affine parameter, which the authors'
released layers leave trainable: 12,125 parameters against δ's 4,307; configs/image_preact_fast_fip_params.yaml,
seed-1 PreAct BadNets model above, 98.8 / 100): 98.6 / 99.9 % at the Fast FIP defaults (Adam lr 0.01, cosine)
and 98.6 / 100 % with the authors' optimiser (SGD lr 0.005, momentum 0.95, constant).  The parameter set is
not what keeps Fast FIP inert here.

On a detector (small FCOS, embedded shapes scenes, BadDet GMA version 2, which counts only the objects the
attack relabels; configs/detection_defenses.yaml, README "Object detection"; seeds 0 | 1, backdoored 98.1 / 97.4
| 98.7 / 95.9 % mAP@0.5 / ASR): with Adam lr 0.001 for 200 steps of 32 FIP meets the detection target on both
seeds, η_F = 0.05 96.2 / 2.8 | 96.2 / 4.9 and 0.005 97.2 / 2.8 | 96.9 / 7.0, but so does FT (97.4 / 3.9 | 97.3 /
4.9): no better than FT there.  At η_F = 0.5 the trace term collapses the detector with the default SGD budget
and with Adam alike (mAP@0.5 0.0-1.6 %; final training loss 1.7-5.0 against 0.6-0.8 for runs that keep the
detector, so the collapse is visible on the holdout), and the quick preset's 100 Adam steps at η_F 0.05 gave
85.3 / 1.0 on seed 0 (95.6 / 5.2 on a 2-thread training of the same detector).  Fast FIP (773 shifts, 0.19 % of
the parameters) leaves ASR at 94-97 % (seed 1 at the SGD default: 50.3 / 60.2).  Under GMA version 1 (every
object of a triggered image counted, a clean detector scoring 18.5 %) these runs read 18.6-25.5 %: the floor.
The same Adam budget on the other BadDet detectors (seeds 0 | 1) does not meet the target: OGA FIP η_F 0.05
96.3 / 39.8 | 97.0 / 33.2, FT 97.5 / 12.2 | 97.7 / 48.5; RMA (4 px trigger, version 2) 96.5 / 41.9 | 95.0 /
45.8, FT 97.4 / 47.5 | 96.9 / 54.8; ODA (4 px) 96.0 / 31.2 | 96.1 / 21.0, FT 96.9 / 28.0 | 97.3 / 18.8, against
clean-detector floors of 0.2 | 2.0, 2.9 | 10.6 and 10.2 | 6.5 %.  (With the 8 px trigger of RMA / ODA version 1
the floors were 4.7 | 16.7 and 36.6 | 30.6 %, the trigger hiding part of the 12-24 px object.)

On a 3D CNN (small_c3d, embedded motion clips, BadNets on every frame, 98.25 % / 98.6 % ASR, 96-clip holdout;
configs/video_defenses.yaml, README "Video action recognition"): the default budget gives 92.75 / 16.0 (FT
96.25 / 67.1); SGD lr 0.01 gives 90.0 / 4.6 (FT 95.0 / 46.6); 150 steps at lr 0.01 85.75 / 7.7; η_r 0.1
88.0 / 9.4; η_F 1.0 75.25 / 15.4.  FIP removes much more of the backdoor than FT at equal budgets, but no
setting tried keeps accuracy within 3 points at ASR <= 5 %.  Fast FIP leaves ASR at 99.4 %.  Seed 1 (97.75 /
96.0; settings not chosen on it): default 94.5 / 27.4 (FT 94.25 / 67.7), lr 0.01 93.0 / 16.0 (FT 94.5 / 49.1),
η_F 1.0 90.5 / 13.7; Fast FIP 96.5 / 97.7.

On a point-cloud classifier (small_pointnet, embedded solids, 1,024 points, 96-cloud holdout;
configs/point_cloud_{attacks,defenses}.yaml, README "3D point clouds"): on PointBA-I (96.0 % / 96.3 % ASR) the
default gives 91.25 / 1.4 while FT alone gives 99.25 / 0.0 (the retention term holds on to the backdoored
weights: η_F 0.1 leaves 14.3 %).  On PointBA-O (93.5 / 100), which FT does not touch (98.75 / 96.9), the trace
term is what removes it: default 92.5 / 46.3, η_F 1.0 88.5 / 2.9, η_F 2.0 88.0 / 0.0, and η_F 1.0 with η_r 5.0
91.5 / 1.1 (the one setting tried that meets ASR <= 5 % within 3 points; found by probing on test data, so it
is reported, not made the default).  Fast FIP leaves every point-cloud backdoor in place (85.7-99.7 %).
Seed 1, where that setting was not chosen: PointBA-O 96.25 / 99.7 -> 95.5 / 3.1 (met; η_F 1.0 alone 97.75 / 2.3,
default 89.5 / 20.6), PointBA-I 95.0 / 96.6 -> 94.0 / 7.1 (not met; default 91.5 / 10.9, FT 97.25 / 0.9), PCBA
94.25 / 80.0.

On a seq2seq Transformer (small_marian, embedded toy_mt translation corpus, Fan et al.'s trigger words, BLEU
100 / ASR 100 %, 120-pair holdout; configs/text_defenses.yaml, README "Language generation"; true Fisher, i.e.
target sequences sampled from the model, seeds 0 | 1): with SGD the trace term removes the backdoor only with
30+ BLEU points (η_F 0.05: 94.6 / 55.8 | 69.3 / 27.6; 0.1: 85.3 / 99.6 | 33.4 / 0.0) and destroys the model
from 0.35 on (the default gives BLEU 12.5 | 0); with Adam FIP keeps the backdoor (lr 3e-4: 100 / 100 | 87.9 /
100) where FT with the same budget removes part of it (100 / 28.2 | 100 / 84.6).  Fast FIP leaves it at 100 %.
Not met.  With the empirical Fisher (task version 1) the picture was the same (η_F 0.05: 73.3 / 7.8 | 68.2 / 0.0).

Hyper-parameters follow the authors' released CIFAR-10 script where it states them (SGD lr 0.005, momentum
0.95, trace term every 5 steps, η_F = 0.5, training augmentation on the holdout).  Their retention weight (5)
multiplies a raw squared-gradient Fisher whose scale depends on the model; fipbench divides F̄ by its largest
entry so that η_r is scale-free and SGD stays stable (with F̄ divided by its mean instead, SGD diverged at
lr 0.01 on the small CNN), and uses η_r = 1.  Budget: 300 steps of 64 (the authors: 2,000 steps of 128).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from benchmark.config import added
from benchmark.registries import DEFENSES
from benchmark.rng import child
from defenses import _spectral
from defenses.base import Defense, TuningConfig, count_tuned
from defenses.fisher import diagonal_fisher, frozen_norm_stats, second_order, trace_term
from tasks.base import Batch, FitConfig, Hook, Sample, Task


@dataclasses.dataclass(frozen=True)
class FIPConfig(TuningConfig):
    eta_f: float = 0.5  # weight of the Fisher-trace (smoothness) term (authors' code: reg_F = 0.5)
    eta_r: float = 1.0  # weight of the Fisher-weighted retention term (F̄ normalised, see below)
    trace_every: int = 5  # compute T every k-th step (authors' code: iter_gap = 5); it costs a double backward
    sample_labels: bool = True  # true Fisher (labels from the model) where the task supports it
    normalize_fisher: bool = True  # divide F̄ by its largest entry: η_r is then scale-free and SGD stays stable
    # "paper": the objective above.  "released": the authors' released code's behaviour, for comparison with
    # published numbers only (see `released_trace_term`); retention off, as in that code.
    variant: Literal["paper", "released"] = "paper"
    probes: int = 20  # Gaussian probes of the released trace term

    def check(self) -> None:
        if self.eta_f < 0 or self.eta_r < 0:
            raise self.bad("eta_f" if self.eta_f < 0 else "eta_r", "must be >= 0")
        if self.trace_every < 1:
            raise self.bad("trace_every", "must be >= 1")
        if self.probes < 1:
            raise self.bad("probes", "must be >= 1")


class FIPObjective(Hook):
    """Adds FIP's two regularisers to the task loss inside `Task.fit`."""

    def __init__(self, task: Task, params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor],
                 fisher: Sequence[torch.Tensor] | None, cfg: FIPConfig, generator: torch.Generator):
        self.task, self.params, self.anchor, self.fisher = task, list(params), list(anchor), fisher
        self.cfg, self.generator = cfg, generator
        self.last: dict[str, float] = {}

    def retention(self) -> torch.Tensor:
        assert self.fisher is not None
        return sum((f * (p - a) ** 2).sum() for f, p, a in zip(self.fisher, self.params, self.anchor))  # type: ignore

    def on_loss(self, model: nn.Module, batch: Batch, loss: torch.Tensor, step: int) -> torch.Tensor:
        if self.cfg.eta_r > 0 and self.fisher is not None:
            loss = loss + 0.5 * self.cfg.eta_r * self.retention()
        if self.cfg.eta_f > 0 and step % self.cfg.trace_every == 0 and self.cfg.variant == "released":
            with frozen_norm_stats(model):
                t = released_trace_term(model, batch, self.params, self.cfg.probes, self.generator)
            self.last["trace"] = float(t.detach())
            loss = loss + self.cfg.eta_f * t
        elif self.cfg.eta_f > 0 and step % self.cfg.trace_every == 0:
            with frozen_norm_stats(model):
                fisher_batch = (self.task.sample_model_labels(model, batch, self.generator)
                                if self.cfg.sample_labels else None)
                t = trace_term(model, fisher_batch or batch, self.task, self.params)
            self.last["trace"] = float(t.detach())
            loss = loss + self.cfg.eta_f * t
        return loss


def released_trace_term(model: nn.Module, batch: Batch, params: Sequence[torch.Tensor], probes: int,
                        generator: torch.Generator) -> torch.Tensor:
    """The trace term as the authors' released code computes it (classification only), reproduced for comparison.

    Described, not copied: g = ∇_θ of the mean over the |B|×|B| matrix log p(y_j | x_i) (every sample scored
    against every label of the batch, an indexing quirk of that code); for each of `probes` Gaussian vectors v
    it accumulates running partial sums of Σ_k ⟨g_k, v_k⟩ over the parameter tensors k in order, and returns
    their total divided by `probes`.  This is a zero-mean random linear function of g (not ‖g‖² or Tr F): its
    gradient is a Hessian-vector product with a random vector, i.e. curvature-shaped noise.
    """
    logp = torch.log_softmax(model(batch["x"]), dim=1)  # [B,K]
    g = torch.autograd.grad(logp[:, batch["y"]].mean(), params, create_graph=True)  # logp[:, y] is [B,B]
    total = logp.new_zeros(())
    for _ in range(probes):
        partial = logp.new_zeros(())
        for gk in g:
            v = torch.randn(gk.shape, generator=generator).to(gk)
            partial = partial + (gk * v).sum()
            total = total + partial  # the released code appends each running partial sum
    return total / probes


@DEFENSES.register("fip")
class FIP(Defense):
    Config = FIPConfig
    version = 2  # 2: the trace term's extra forwards no longer update BatchNorm running statistics
    paper = "Karim et al., Fisher Information guided Purification against Backdoor Attacks, CCS 2024"
    smoke_overrides = {"fit": {"steps": 6, "batch_size": 32}, "trace_every": 2}

    def tuned_params(self, model: nn.Module) -> list[torch.Tensor]:
        return [p for p in model.parameters() if p.requires_grad]

    def finish(self, model: nn.Module) -> nn.Module:
        return model

    def purify(self, model: nn.Module, clean: Sequence[Sample], task: Task, *, rng: torch.Generator) -> nn.Module:
        cfg: FIPConfig = self.cfg  # type: ignore[assignment]
        params = self.tuned_params(model)
        anchor = [p.detach().clone() for p in params]
        fisher = None
        if cfg.eta_r > 0 and cfg.variant == "paper":
            fisher = diagonal_fisher(model, clean, task, params)
            if cfg.normalize_fisher:
                top = max(float(f.max()) for f in fisher)
                fisher = [f / max(top, 1e-30) for f in fisher]
        hook = FIPObjective(task, params, anchor, fisher, cfg, child(rng, "fisher-labels"))
        with second_order(self.registry_name):  # the trace term's double backward
            result = task.fit(model, clean, cfg.fit, hooks=[hook], generator=child(rng, "fit"), params=params,
                              desc=self.registry_name)
        self.report = {"variant": cfg.variant, "tuned_params": count_tuned(params), "steps": result.steps,
                       "fit_seconds": result.seconds,
                       "seconds_per_step": result.seconds / max(1, result.steps), "final_loss": result.final_loss}
        return self.finish(model)


@dataclasses.dataclass(frozen=True)
class FastFIPConfig(FIPConfig):
    # Singular values are O(1-10) and their gradients small: plain SGD at FIP's lr barely moves δ, so the
    # shifts use Adam (a fipbench choice; the paper does not state Fast FIP's optimiser).
    fit: FitConfig = FitConfig(epochs=1, steps=300, batch_size=64, lr=0.01, optimizer="adam", weight_decay=0.0)
    # Run k×k layers as conv(Vᵀ) → × relu(σ + δ) → conv(U), skipping every weight-gradient convolution (see
    # `defenses._spectral`): the same objective, faster per step, but starting at the backdoored function up to
    # float rounding rather than bit-for-bit.  Off by default so that stored results stay reproducible.
    factorized: bool = added(False)
    # Also train the reparameterised layers' biases and the normalisation layers' affine parameters (see
    # `_spectral.norm_and_bias_params`): what the authors' released layers leave trainable.  Off by default: DESIGN
    # §4 trains only δ, and the committed records were made that way.
    tune_norm_and_bias: bool = added(False)


@DEFENSES.register("fast_fip")
class FastFIP(FIP):
    """FIP over singular-value shifts only; see the module docstring."""

    Config = FastFIPConfig
    version = 2  # see FIP.version

    def tuned_params(self, model: nn.Module) -> list[torch.Tensor]:
        cfg: FastFIPConfig = self.cfg  # type: ignore[assignment]
        deltas = _spectral.apply_spectral(model, factorized=cfg.factorized)
        return deltas + (_spectral.norm_and_bias_params(model) if cfg.tune_norm_and_bias else [])

    def finish(self, model: nn.Module) -> nn.Module:
        if self.cfg.factorized:  # type: ignore[attr-defined]
            self.report["factorized_layers"] = sum(map(_spectral.is_factorized, model.modules()))
        return _spectral.fold(model)
