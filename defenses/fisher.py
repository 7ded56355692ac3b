"""Fisher and sharpness maths shared by FIP and the sharpness report.

All functions take the parameters of interest explicitly (every weight for FIP, the singular-value shifts for
Fast FIP) and use only `task.loss`, so they work on every task.

- `diagonal_fisher`: F̄_j = (1/|D|) Σ_i (∂ℓ_i/∂θ_j)², the diagonal empirical Fisher, model in eval mode.
- `trace_term`: T(θ;B) = ‖∇_θ (1/|B|) Σ_i ℓ_i(θ)‖², differentiable (double backward).  With labels drawn from
  the model, E[|B|·T] = Tr(F) (the per-sample scores have zero mean), so T is a scaled unbiased estimate of
  the Fisher trace; the tests check this against an exact computation.
- `hessian_max_eigenvalue` (Lanczos on Hessian-vector products: the most positive eigenvalue),
  `hessian_trace` (Hutchinson with Rademacher vectors), `fisher_trace`: sharpness figures reported before
  and after a defense.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from benchmark.errors import NotApplicable
from tasks.base import Batch, Sample, Task, wanting_second_order


# torch's messages for a missing second derivative: a custom op's "double backward(s) ... not supported", or a
# missing derivative of a *backward* op (a first derivative's own formula), e.g. aten::hardsigmoid_backward.
_NO_SECOND_ORDER = re.compile(r"double backwards?\b|derivative for \S*_backward\b")


@contextlib.contextmanager
def second_order(what: str) -> Iterator[None]:
    """Marks a region that differentiates a gradient: model parts with a fast kernel lacking a second derivative
    switch to a twice-differentiable one there (`tasks.base.second_order_wanted`; Faster R-CNN's RoIAlign), and
    torch's error for an op that still has none (a custom op from a plug-in, a fused attention kernel) becomes
    `NotApplicable`: `what` cannot run on this model, and the runner records that instead of failing the run.
    Any other error propagates."""
    try:
        with wanting_second_order():
            yield
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if not _NO_SECOND_ORDER.search(first):
            raise
        raise NotApplicable(f"{what} cannot run: it needs second derivatives and an op of this model has none "
                            f"(torch: {first[:160]})") from err


@contextlib.contextmanager
def differentiable(params: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within: every tensor of `params` requires grad, so that figures cover what a defense left frozen; the
    frozen ones are frozen again on the way out."""
    frozen = [p for p in params if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


@contextlib.contextmanager
def frozen_norm_stats(model: nn.Module) -> Iterator[None]:
    """Extra train-mode forwards (a regulariser's own forward, label sampling) still normalise with batch
    statistics but leave BatchNorm's running statistics as the one ordinary forward per step left them."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 − 0)·running + 0·batch
    try:
        yield
    finally:
        for m, mom in zip(norms, saved):
            m.momentum = mom


def diagonal_fisher(model: nn.Module, data: Sequence[Sample], task: Task,
                    params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-parameter mean squared per-sample gradient at the current weights (eval mode), one tensor per param.

    One backward per sample: exact for any task loss, including ones (detection) with no per-sample reduction.
    """
    was_training = model.training
    model.eval()
    fisher = [torch.zeros_like(p) for p in params]
    for i in range(len(data)):
        batch = task.to_device(task.collate([data[i]]))
        grads = torch.autograd.grad(task.loss(model, batch), params, allow_unused=True)
        for f, g in zip(fisher, grads):
            if g is not None:
                f.add_(g.detach() ** 2)
    model.train(was_training)
    return [f / max(1, len(data)) for f in fisher]


def trace_term(model: nn.Module, batch: Batch, task: Task, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖∇_θ mean_i ℓ_i‖², kept in the graph so that its own gradient flows (double backward)."""
    grads = torch.autograd.grad(task.loss(model, batch), params, create_graph=True, allow_unused=True)
    return sum((g ** 2).sum() for g in grads if g is not None)  # type: ignore[return-value]


def fisher_trace(model: nn.Module, data: Sequence[Sample], task: Task, params: Sequence[torch.Tensor]) -> float:
    """Tr(F̄) of the diagonal empirical Fisher over `data`."""
    return float(sum(f.sum() for f in diagonal_fisher(model, data, task, params)))


def _hvp(loss_grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
         v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    dot = sum((g * vi).sum() for g, vi in zip(loss_grads, v))
    return [h.detach() for h in torch.autograd.grad(dot, params, retain_graph=True)]


def _grads_with_graph(model: nn.Module, batch: Batch, task: Task, params: Sequence[torch.Tensor]):
    model.eval()  # fixed function: BN uses running statistics, so the Hessian is of one deterministic loss
    return torch.autograd.grad(task.loss(model, batch), params, create_graph=True)


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b)))


def hessian_max_eigenvalue(model: nn.Module, batch: Batch, task: Task, params: Sequence[torch.Tensor], *,
                           iters: int = 30, generator: torch.Generator) -> float:
    """Largest (most positive) Hessian eigenvalue of the batch loss: the top Ritz value of `iters` Lanczos steps
    on Hessian-vector products from a seeded Gaussian start.

    Why Lanczos and not power iteration (PyHessian's method, and ours until 2026-12): power iteration finds the
    eigenvalue of largest *magnitude*; on fine-tuned detectors a negative one dominates (μ ≈ −40 with Tr H < 0),
    and shifting by it (H − μI) leaves the true top (a few units above a bulk near 0) a relative gap of a few
    per cent, which 20 iterations from a random start do not resolve: they stopped on the bulk and returned
    ≈ 0.  Lanczos converges on both ends of the spectrum at once, at a rate set by the square root of the gap.
    A Ritz value never exceeds λ_max, so an unconverged figure is a lower bound.

    Three-term recurrence, one re-orthogonalisation against the current vector, no full re-orthogonalisation:
    that would hold `iters` copies of the parameters (1.3 GB on PreActResNet-18).  Lost orthogonality only
    repeats converged Ritz values ("ghosts"); it does not move the largest one.

    A Hessian-vector product that is not finite (second derivatives overflowing at these weights) raises
    FloatingPointError naming the step; the runner then stores the cell without sharpness figures."""
    grads = _grads_with_graph(model, batch, task, params)
    v = [torch.randn(p.shape, generator=generator).to(p) for p in params]
    norm = math.sqrt(_dot(v, v))
    v = [x / norm for x in v]
    prev: list[torch.Tensor] | None = None
    alphas: list[float] = []
    betas: list[float] = []  # betas[j] couples Lanczos vectors j and j + 1
    for step in range(iters):
        w = _hvp(grads, params, v)
        alpha = _dot(w, v)
        if not math.isfinite(alpha):
            raise FloatingPointError(f"Hessian-vector product not finite at Lanczos step {step + 1} (vᵀHv = {alpha}); "
                                     "the loss's second derivatives overflow at these weights")
        w = [wi - alpha * vi for wi, vi in zip(w, v)]
        if prev is not None:
            w = [wi - betas[-1] * pi for wi, pi in zip(w, prev)]
        fix = _dot(w, v)  # local re-orthogonalisation: what rounding left along v
        w = [wi - fix * vi for wi, vi in zip(w, v)]
        alphas.append(alpha + fix)
        beta = math.sqrt(_dot(w, w))
        if not math.isfinite(beta):
            raise FloatingPointError(f"Lanczos vector not finite at step {step + 1} (‖w‖ = {beta})")
        scale = max(abs(a) for a in alphas) + (betas[-1] if betas else 0.0)
        if step == iters - 1 or beta <= 1e-10 * max(scale, 1e-30):  # done, or an invariant subspace: exact
            break
        betas.append(beta)
        prev, v = v, [wi / beta for wi in w]
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))  # [m, m] tridiagonal; len(betas) == m - 1
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    try:
        return float(torch.linalg.eigvalsh(T).max())
    except torch.linalg.LinAlgError:  # LAPACK's divide-and-conquer can fail on a badly scaled T: the QR solver
        return float(torch.linalg.eigvals(T).real.max())


def hessian_trace(model: nn.Module, batch: Batch, task: Task, params: Sequence[torch.Tensor], *,
                  samples: int = 20, generator: torch.Generator) -> float:
    """Hutchinson estimate E[vᵀHv], v Rademacher."""
    grads = _grads_with_graph(model, batch, task, params)
    total = 0.0
    for _ in range(samples):
        v = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in params]
        total += _dot(_hvp(grads, params, v), v)
    return total / samples


def sharpness(model: nn.Module, data: Sequence[Sample], task: Task, *, generator: torch.Generator,
              batch_size: int = 128) -> dict[str, float]:
    """λ_max, Tr(H) on one fixed batch (the first `batch_size` samples of `data`) and Tr(F) over it."""
    was_training = model.training
    fixed = [data[i] for i in range(min(batch_size, len(data)))]
    batch = task.to_device(task.collate(fixed))
    # Every floating-point parameter, whatever a defense left frozen, so figures compare across defenses.
    params = [p for p in model.parameters() if p.is_floating_point()]
    try:
        # Parameters the loss never reaches (a Transformer's fixed sinusoidal position table) have no Hessian.
        model.eval()
        with differentiable(params), second_order("the sharpness figures (Hessian-vector products)"):
            used = torch.autograd.grad(task.loss(model, batch), params, allow_unused=True)
            params = [p for p, g in zip(params, used) if g is not None]
            out = {"hessian_max_eig": hessian_max_eigenvalue(model, batch, task, params, generator=generator),
                   "hessian_trace": hessian_trace(model, batch, task, params, generator=generator),
                   "fisher_trace": fisher_trace(model, fixed, task, params)}
        bad = {k: v for k, v in out.items() if not math.isfinite(v)}
        if bad:
            raise FloatingPointError(f"sharpness figures not finite: {bad}")
    finally:
        model.train(was_training)
    return out
