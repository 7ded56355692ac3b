"""defenses/fisher.py against independent, exact computations on tiny softmax models (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from benchmark.rng import generator
from defenses.fisher import (diagonal_fisher, fisher_trace, hessian_max_eigenvalue, hessian_trace, sharpness,
                             trace_term)
from tasks.base import Sample
from tasks.image_classification import ImageClassificationTask

D_IN, K = 4, 3


@pytest.fixture(scope="module")
def tiny_task():
    # loss / collate / sample_model_labels of the real classification task; no data is loaded for these.
    return ImageClassificationTask("digits")


def tiny_model(seed: int = 0, scale: float = 1.5, hidden: bool = False) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    if hidden:
        model = nn.Sequential(nn.Linear(D_IN, 5), nn.Dropout(0.5), nn.Tanh(), nn.Linear(5, K))
    else:
        model = nn.Sequential(nn.Linear(D_IN, K))
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
    return model


def tiny_batch(n: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, D_IN, generator=g, dtype=torch.float64),
            "y": torch.randint(0, K, (n,), generator=g)}


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """{name: [B, *shape]} gradients of each sample's cross-entropy, by torch.func (independent of fisher.py)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        logits = functional_call(model, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, yi.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


def flat(model: nn.Module) -> tuple[torch.Tensor, list[tuple[str, torch.Size]]]:
    named = list(model.named_parameters())
    return torch.cat([p.detach().flatten() for _, p in named]), [(k, p.shape) for k, p in named]


def unflat(vec: torch.Tensor, layout) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k, shape in layout:
        n = math.prod(shape)
        out[k] = vec[i:i + n].view(shape)
        i += n
    return out


# -- trace term ----------------------------------------------------------------------------------------------
def test_trace_term_is_squared_norm_of_mean_gradient(tiny_task):
    model, batch = tiny_model(), tiny_batch()
    params = list(model.parameters())
    t = trace_term(model, batch, tiny_task, params)
    grads = per_sample_grads(model, batch["x"], batch["y"])
    expected = sum((g.mean(0) ** 2).sum() for g in grads.values())
    torch.testing.assert_close(t.detach(), expected, rtol=1e-10, atol=1e-12)
    assert t.requires_grad, "T must stay in the graph (double backward)"


def test_trace_term_on_a_subset_of_parameters(tiny_task):
    model, batch = tiny_model(hidden=True).eval(), tiny_batch()
    weight = model[0].weight
    t = trace_term(model, batch, tiny_task, [weight])
    grads = per_sample_grads(model, batch["x"], batch["y"])
    torch.testing.assert_close(t.detach(), (grads["0.weight"].mean(0) ** 2).sum(), rtol=1e-10, atol=1e-12)


def test_trace_term_gradient_matches_finite_differences(tiny_task):
    model, batch = tiny_model(hidden=True).eval(), tiny_batch()
    params = list(model.parameters())
    t = trace_term(model, batch, tiny_task, params)
    analytic = torch.cat([g.flatten() for g in torch.autograd.grad(t, params)])

    theta, layout = flat(model)

    def T(vec: torch.Tensor) -> float:
        p = {k: v.clone().requires_grad_(True) for k, v in unflat(vec, layout).items()}
        loss = nn.functional.cross_entropy(functional_call(model, p, (batch["x"],)), batch["y"])
        gs = torch.autograd.grad(loss, list(p.values()))
        return float(sum((g ** 2).sum() for g in gs))

    eps = 1e-6
    numeric = torch.zeros_like(theta)
    for j in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[j] = eps
        numeric[j] = (T(theta + e) - T(theta - e)) / (2 * eps)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-7)
    assert analytic.abs().max() > 1e-3  # a non-trivial gradient was compared


def exact_fisher_trace(model: nn.Module, x: torch.Tensor) -> float:
    """Tr F = mean_i Σ_y p(y|x_i) ||∇_θ log p(y|x_i)||², by enumerating the classes."""
    with torch.no_grad():
        probs = model(x).softmax(1)
    total = 0.0
    for i in range(len(x)):
        for y in range(K):
            grads = per_sample_grads(model, x[i:i + 1], torch.tensor([y]))
            total += float(probs[i, y]) * float(sum((g ** 2).sum() for g in grads.values()))
    return total / len(x)


def test_scaled_trace_term_with_model_labels_is_unbiased_for_fisher_trace(tiny_task):
    model, batch = tiny_model(seed=2, scale=1.0), tiny_batch(n=6, seed=3)
    params = list(model.parameters())
    exact = exact_fisher_trace(model, batch["x"])
    gen = generator(0, "fisher-test")
    draws = 20000
    values = torch.empty(draws, dtype=torch.float64)
    n = len(batch["y"])
    for d in range(draws):
        sampled = tiny_task.sample_model_labels(model, batch, gen)
        assert sampled["x"] is batch["x"] and sampled["y"].shape == batch["y"].shape
        values[d] = n * float(trace_term(model, sampled, tiny_task, params).detach())
    mean, se = float(values.mean()), float(values.std() / math.sqrt(draws))
    assert abs(mean - exact) <= 4 * se, (mean, exact, se)
    assert abs(mean - exact) / exact < 0.03, (mean, exact)
    # With the given (fixed) labels the estimate is of another quantity: the check above is not vacuous.
    fixed = n * float(trace_term(model, batch, tiny_task, params).detach())
    assert abs(fixed - exact) / exact > 0.05


def test_sample_model_labels_follows_the_predictive_distribution(tiny_task):
    model, batch = tiny_model(seed=4), tiny_batch(n=3, seed=5)
    with torch.no_grad():
        probs = model(batch["x"]).softmax(1)
    gen = generator(1, "labels")
    counts = torch.zeros(3, K)
    for _ in range(4000):
        y = tiny_task.sample_model_labels(model, batch, gen)["y"]
        counts[torch.arange(3), y] += 1
    torch.testing.assert_close(counts / 4000, probs.float(), atol=0.03, rtol=0)


# -- diagonal Fisher -----------------------------------------------------------------------------------------
def test_diagonal_fisher_is_mean_squared_per_sample_gradient(tiny_task):
    model, batch = tiny_model(hidden=True), tiny_batch(n=10)
    model.train()  # diagonal_fisher must use eval mode (dropout off) and restore the mode
    data = [Sample(x=batch["x"][i], y=int(batch["y"][i]), index=i) for i in range(10)]
    params = list(model.parameters())
    fisher = diagonal_fisher(model, data, tiny_task, params)
    assert model.training, "diagonal_fisher must restore train mode"

    model.eval()
    grads = per_sample_grads(model, batch["x"], batch["y"])
    for (name, _), f in zip(model.named_parameters(), fisher):
        torch.testing.assert_close(f, (grads[name] ** 2).mean(0), rtol=1e-10, atol=1e-14)
    assert fisher_trace(model, data, tiny_task, params) == pytest.approx(
        sum(float((g ** 2).mean(0).sum()) for g in grads.values()), rel=1e-10)
    # Deterministic in train mode as well (dropout is off inside).
    model.train()
    again = diagonal_fisher(model, data, tiny_task, params)
    assert all(torch.equal(a, b) for a, b in zip(fisher, again))


def test_diagonal_fisher_subset_and_unused_params(tiny_task):
    model = tiny_model(hidden=True)
    extra = nn.Parameter(torch.ones(2, dtype=torch.float64))  # not in the graph: zero Fisher
    batch = tiny_batch(n=4)
    data = [Sample(x=batch["x"][i], y=int(batch["y"][i]), index=i) for i in range(4)]
    fisher = diagonal_fisher(model, data, tiny_task, [model[3].weight, extra])
    assert len(fisher) == 2 and fisher[0].shape == model[3].weight.shape
    assert torch.equal(fisher[1], torch.zeros(2, dtype=torch.float64))
    assert float(fisher[0].sum()) > 0


# -- Hessian sharpness ---------------------------------------------------------------------------------------
def exact_hessian(model: nn.Module, batch) -> torch.Tensor:
    theta, layout = flat(model)

    def f(vec):
        logits = functional_call(model, unflat(vec, layout), (batch["x"],))
        return nn.functional.cross_entropy(logits, batch["y"])

    return torch.autograd.functional.hessian(f, theta)


@pytest.mark.parametrize("hidden", [False, True])
def test_hessian_max_eigenvalue_matches_exact(tiny_task, hidden):
    model, batch = tiny_model(seed=6, hidden=hidden).eval(), tiny_batch(n=12, seed=7)
    H = exact_hessian(model, batch)
    torch.testing.assert_close(H, H.T)
    eigs = torch.linalg.eigvalsh(H)
    got = hessian_max_eigenvalue(model, batch, tiny_task, list(model.parameters()), iters=200,
                                 generator=generator(0, "power"))
    assert got == pytest.approx(float(eigs.max()), rel=1e-4)


def test_hessian_max_eigenvalue_default_settings_close(tiny_task):
    model, batch = tiny_model(seed=6).eval(), tiny_batch(n=12, seed=7)
    eigs = torch.linalg.eigvalsh(exact_hessian(model, batch))
    got = hessian_max_eigenvalue(model, batch, tiny_task, list(model.parameters()), generator=generator(0, "p"))
    assert got == pytest.approx(float(eigs.max()), rel=0.05)


@pytest.mark.parametrize("hidden", [False, True])
def test_hessian_trace_matches_exact(tiny_task, hidden):
    model, batch = tiny_model(seed=8, hidden=hidden).eval(), tiny_batch(n=12, seed=9)
    H = exact_hessian(model, batch)
    exact = float(torch.trace(H))
    samples = 3000
    # Rademacher Hutchinson: Var(vᵀHv) = 2 Σ_{i≠j} H_ij²
    off = H - torch.diag(torch.diag(H))
    se = math.sqrt(2 * float((off ** 2).sum()) / samples)
    got = hessian_trace(model, batch, tiny_task, list(model.parameters()), samples=samples,
                        generator=generator(0, "hutchinson"))
    assert abs(got - exact) <= 4 * se + 1e-9, (got, exact, se)
    assert got == pytest.approx(exact, rel=0.05)


def test_sharpness_report_restores_mode(tiny_task):
    model, batch = tiny_model(hidden=True), tiny_batch(n=6)
    model.train()
    data = [Sample(x=batch["x"][i], y=int(batch["y"][i]), index=i) for i in range(6)]
    out = sharpness(model, data, tiny_task, generator=generator(0, "sharp"))
    assert set(out) == {"hessian_max_eig", "hessian_trace", "fisher_trace"}
    assert all(math.isfinite(v) for v in out.values())
    assert out["fisher_trace"] > 0 and out["hessian_trace"] > 0
    assert model.training


def test_second_order_turns_only_missing_second_derivatives_into_not_applicable():
    """torch's messages for an op without a second derivative become NotApplicable (a recorded skip); any other
    error, a missing *first* derivative included, stays an error."""
    from benchmark.errors import NotApplicable
    from defenses.fisher import second_order

    for msg in ("double backwards on roi_align not supported",
                "derivative for aten::hardsigmoid_backward is not implemented"):
        with pytest.raises(NotApplicable, match="fip cannot run: it needs second derivatives"):
            with second_order("fip"):
                raise RuntimeError(msg)
    for msg in ("the derivative for 'igamma: input' is not implemented.", "CUDA out of memory"):
        with pytest.raises(RuntimeError, match=msg.split()[1]):
            with second_order("fip"):
                raise RuntimeError(msg)


class _Quadratic:
    """A 'task' whose loss is ½ Σ h_j θ_j²: Hessian diag(h), known exactly."""

    def __init__(self, h: torch.Tensor):
        self.h = h

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return 0.5 * (self.h * model.theta ** 2).sum()


def test_hessian_max_eigenvalue_does_not_stop_at_the_random_start():
    # One sharp direction among 10^6 flat ones: the random start's Rayleigh quotient is ≈ 10/10^6, under the
    # stopping tolerance; λ_max is 10.  (The first quotient used to be compared with 0 and returned.)
    h = torch.zeros(1_000_000, dtype=torch.float64)
    h[0] = 10.0
    model = nn.Module()
    model.theta = nn.Parameter(torch.ones(1_000_000, dtype=torch.float64))
    got = hessian_max_eigenvalue(model, {}, _Quadratic(h), [model.theta], generator=generator(0, "flat"))
    assert got == pytest.approx(10.0, rel=1e-6)


@pytest.mark.parametrize("top", [3.0, -2.0])
def test_hessian_max_eigenvalue_is_the_most_positive_where_a_negative_one_dominates(top):
    # A saddle: eigenvalues -10, `top`, 1, 0.5; power iteration alone would return -10.
    h = torch.tensor([-10.0, top, 1.0, 0.5], dtype=torch.float64)
    model = nn.Module()
    model.theta = nn.Parameter(torch.ones(4, dtype=torch.float64))
    got = hessian_max_eigenvalue(model, {}, _Quadratic(h), [model.theta], generator=generator(0, "saddle"))
    assert got == pytest.approx(float(h.max()), rel=1e-6)


def test_hessian_max_eigenvalue_finds_a_small_top_above_a_bulk_under_a_dominant_negative_one():
    # The fine-tuned detector's spectrum in miniature: 10^5 eigenvalues spread over [-1, 1], one at -40, the top
    # at 5.  Power iteration shifted by -40 stopped on the bulk and returned ≈ 0; default Lanczos resolves 5.
    h = torch.rand(100_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    h[0], h[1] = -40.0, 5.0
    model = nn.Module()
    model.theta = nn.Parameter(torch.ones(100_000, dtype=torch.float64))
    got = hessian_max_eigenvalue(model, {}, _Quadratic(h), [model.theta], generator=generator(0, "bulk"))
    assert got == pytest.approx(5.0, rel=1e-3)
    assert got <= 5.0 + 1e-9  # a Ritz value is a lower bound on λ_max


def test_hessian_max_eigenvalue_names_a_non_finite_hessian():
    # A loss whose second derivative overflows (h = inf) gives NaN Lanczos coefficients; LAPACK then failed with
    # "linalg.eigh: The algorithm failed to converge", which took a whole run down after a model had trained.
    h = torch.tensor([float("inf"), 1.0, 0.5], dtype=torch.float64)
    model = nn.Module()
    model.theta = nn.Parameter(torch.ones(3, dtype=torch.float64))
    with pytest.raises(FloatingPointError, match="not finite at Lanczos step 1"):
        hessian_max_eigenvalue(model, {}, _Quadratic(h), [model.theta], generator=generator(0, "inf"))


def test_a_non_finite_sharpness_figure_is_logged_and_the_cell_stands(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import defenses.fisher as fisher
    from benchmark.runner import Runner

    def overflow(*args, **kwargs):
        raise FloatingPointError("sharpness figures not finite: {'hessian_trace': nan}")

    monkeypatch.setattr(fisher, "sharpness", overflow)
    lines: list[str] = []
    runner = Runner(tmp_path / "results", tmp_path / "cache", log=lines.append)
    task = SimpleNamespace(splits=lambda: SimpleNamespace(holdout=[]), sharpness_batch=1)
    assert runner.measure_sharpness(task, nn.Linear(1, 1), 0, "key") is None  # type: ignore[arg-type]
    assert lines == ["          no sharpness figures: sharpness figures not finite: {'hessian_trace': nan}"]
    assert "key" not in runner._no_second_order  # a figure of this model, not a model without second derivatives


def test_hessian_max_eigenvalue_falls_back_to_the_qr_solver_when_lapack_fails(monkeypatch):
    def failing(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge (error code: 28)")

    h = torch.tensor([-10.0, 3.0, 1.0, 0.5], dtype=torch.float64)
    model = nn.Module()
    model.theta = nn.Parameter(torch.ones(4, dtype=torch.float64))
    expected = hessian_max_eigenvalue(model, {}, _Quadratic(h), [model.theta], generator=generator(0, "saddle"))
    monkeypatch.setattr(torch.linalg, "eigvalsh", failing)
    got = hessian_max_eigenvalue(model, {}, _Quadratic(h), [model.theta], generator=generator(0, "saddle"))
    assert got == pytest.approx(expected, rel=1e-9) and got == pytest.approx(3.0, rel=1e-6)
