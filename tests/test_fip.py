"""FIP and Fast FIP: the objective's terms, the spectral reparameterisation (exact start, fold-back, < 1 % of the
parameters), and both defenses end to end on a briefly backdoored small CNN."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from benchmark.rng import generator
from defenses import _spectral
from defenses.base import count_tuned
from defenses.fip import FIP, FastFIP, FastFIPConfig, FIPConfig, FIPObjective
from defenses.fisher import diagonal_fisher, trace_term
from tasks.base import FitConfig


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture
def test_images(splits, task):
    return task.to_device(task.collate([splits.test[i] for i in range(32)]))["x"]


# -- spectral reparameterisation -------------------------------------------------------------------------------
def test_spectral_start_is_bit_identical(backdoored_model, test_images):
    before = _outputs(backdoored_model, test_images)
    weights = {n: m.weight.detach().clone() for n, m in backdoored_model.named_modules()
               if isinstance(m, _spectral.SPECTRAL_LAYERS)}
    deltas = _spectral.apply_spectral(backdoored_model)
    assert len(deltas) == len(weights) and all(float(d.detach().abs().max()) == 0.0 for d in deltas)
    for name, module in backdoored_model.named_modules():
        if name in weights:
            assert torch.equal(module.weight, weights[name]), name  # W(0) is W̄ bit-for-bit
    assert torch.equal(_outputs(backdoored_model, test_images), before)


def test_spectral_weight_is_u_relu_sigma_plus_delta_v(backdoored_model):
    _spectral.apply_spectral(backdoored_model)
    gen = generator(0, "delta")
    for module in backdoored_model.modules():
        if parametrize.is_parametrized(module, "weight"):
            shift = module.parametrizations.weight[0]
            with torch.no_grad():
                shift.delta.copy_(torch.randn(shift.delta.shape, generator=gen) * shift.S.mean())
            expected = (shift.U * torch.relu(shift.S + shift.delta)) @ shift.Vh  # [C_out, C_in*k*k]
            torch.testing.assert_close(module.weight.detach().flatten(1), expected.detach(), rtol=1e-4, atol=1e-5)


def test_only_the_shifts_train_and_they_are_under_one_percent(backdoored_model):
    total = count_tuned(list(backdoored_model.parameters()))
    deltas = _spectral.apply_spectral(backdoored_model)
    trainable = [p for p in backdoored_model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(d) for d in deltas}
    assert count_tuned(deltas) < 0.01 * total
    buffers = {n.rsplit(".", 1)[-1] for n, _ in backdoored_model.named_buffers()}
    assert {"U", "S", "Vh"} <= buffers  # frozen factors are buffers, not parameters


def test_fold_gives_plain_layers_with_the_same_function(backdoored_model, test_images):
    deltas = _spectral.apply_spectral(backdoored_model)
    with torch.no_grad():
        for d in deltas:
            d.uniform_(-0.5, 0.5, generator=generator(1, "fold"))
    shifted = _outputs(backdoored_model, test_images)
    folded = _spectral.fold(backdoored_model)
    assert not any(parametrize.is_parametrized(m) for m in folded.modules())
    assert all(p.requires_grad for p in folded.parameters())
    names = set(folded.state_dict())
    assert not any(k.endswith((".U", ".S", ".Vh", ".delta")) or "parametrizations" in k for k in names)
    torch.testing.assert_close(_outputs(folded, test_images), shifted)
    fresh = copy.deepcopy(folded)  # the folded state dict loads into a plain model of the same architecture
    fresh.load_state_dict(folded.state_dict(), strict=True)


def test_relu_clips_singular_values_at_zero():
    layer = nn.Linear(6, 4)
    deltas = _spectral.apply_spectral(layer)
    with torch.no_grad():
        deltas[0].fill_(-1e3)  # σ + δ < 0 everywhere → W = 0
    assert float(layer.weight.detach().abs().max()) < 1e-5


# -- factorized execution (Fast FIP's `factorized: true`) ---------------------------------------------------------
LAYERS = [  # (layer, input, factorized?) -- the cost rule 2·r·(m + n) < 3·m·n and the pair-of-convolutions rule
    (lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1), (4, 16, 9, 9), True),
    (lambda: nn.Conv3d(4, 8, 3, padding=1), (2, 4, 5, 6, 6), True),
    (lambda: nn.Conv1d(8, 16, 5, padding="same", dilation=2), (2, 8, 20), True),
    (lambda: nn.Linear(64, 10), (3, 7, 64), True),  # leading dimensions pass through
    (lambda: nn.Linear(32, 32), (5, 32), False),  # square: merged is cheaper
    (lambda: nn.Conv2d(16, 16, 1), (2, 16, 5, 5), False),  # square 1×1
    (lambda: nn.Conv2d(16, 16, 3, groups=4), (2, 16, 5, 5), False),  # grouped: not a pair of convolutions
    (lambda: nn.Conv2d(8, 16, 3, padding=1, padding_mode="reflect"), (2, 8, 5, 5), False),
]


@pytest.mark.parametrize("make, shape, expected", LAYERS)
def test_factorized_layers_compute_the_merged_function_and_gradients(make, shape, expected):
    torch.manual_seed(0)
    layer, x = make(), torch.randn(shape)
    merged, fact = copy.deepcopy(layer), copy.deepcopy(layer)
    d_merged, d_fact = _spectral.apply_spectral(merged), _spectral.apply_spectral(fact, factorized=True)
    assert _spectral.is_factorized(fact) == _spectral.factorizes(layer) == expected
    torch.testing.assert_close(fact(x), layer(x), rtol=1e-5, atol=1e-5)  # starts at W̄ up to rounding
    with torch.no_grad():
        for a, b in zip(d_merged, d_fact):
            b.copy_(a.copy_(0.3 * torch.randn_like(a)))
    torch.testing.assert_close(fact(x), merged(x), rtol=1e-5, atol=1e-5)
    g_merged = torch.autograd.grad((merged(x) ** 2).sum(), d_merged)[0]
    g_fact = torch.autograd.grad((fact(x) ** 2).sum(), d_fact)[0]
    torch.testing.assert_close(g_fact, g_merged, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fact.weight, merged.weight)  # `.weight` reads W(δ) either way
    clone = copy.deepcopy(fact)  # a copy's factorized forward is bound to the copy, not to the original
    assert not _spectral.is_factorized(fact) or clone.forward.__self__ is clone
    out = fact(x)
    _spectral.fold(fact)
    assert not _spectral.is_factorized(fact) and not parametrize.is_parametrized(fact)
    torch.testing.assert_close(fact(x), out, rtol=1e-5, atol=1e-5)


def test_factorized_trace_term_matches_the_merged_one(task, backdoored_model, splits):
    batch = task.to_device(task.collate([splits.holdout[i] for i in range(16)]))
    merged, fact = copy.deepcopy(backdoored_model).train(), copy.deepcopy(backdoored_model).train()
    d_merged, d_fact = _spectral.apply_spectral(merged), _spectral.apply_spectral(fact, factorized=True)
    assert any(_spectral.is_factorized(m) for m in fact.modules())
    with torch.no_grad():
        for a, b in zip(d_merged, d_fact):
            b.copy_(a.uniform_(-0.2, 0.2, generator=generator(2, "trace")))
    t_merged, t_fact = trace_term(merged, batch, task, d_merged), trace_term(fact, batch, task, d_fact)
    torch.testing.assert_close(t_fact, t_merged, rtol=1e-3, atol=1e-6)
    g_merged = torch.autograd.grad(t_merged, d_merged)
    g_fact = torch.autograd.grad(t_fact, d_fact)
    for a, b in zip(g_merged, g_fact):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4 * float(a.abs().max()))


def test_factorized_fast_fip_returns_a_plain_model_and_reports_its_layers(task, backdoored_model, splits,
                                                                           test_images):
    cfg = FastFIPConfig.from_dict({"factorized": True, "fit": {"steps": 4, "batch_size": 16}})
    assert "factorized" in cfg.to_dict() and "factorized" not in FastFIPConfig().to_dict()  # default: old ids
    d = FastFIP(cfg)
    out = d.purify(backdoored_model, splits.holdout, task, rng=generator(0, "defense"))
    assert not any(parametrize.is_parametrized(m) or _spectral.is_factorized(m) for m in out.modules())
    assert d.report["factorized_layers"] > 0
    assert torch.isfinite(_outputs(out, test_images)).all()


def test_fast_fip_can_also_tune_biases_and_norm_layers(task, backdoored_model, splits):
    cfg = FastFIPConfig.from_dict({"tune_norm_and_bias": True, "fit": {"steps": 4, "batch_size": 16}})
    assert "tune_norm_and_bias" in cfg.to_dict() and "tune_norm_and_bias" not in FastFIPConfig().to_dict()
    start = copy.deepcopy(backdoored_model)
    extra = [(n, p) for n, p in start.named_parameters()
             if n.endswith("bias") or any(n.startswith(m) for m, mod in start.named_modules()
                                          if m and isinstance(mod, _spectral.NORM_LAYERS))]
    n_deltas = sum(min(m.weight.shape[0], m.weight[0].numel()) for m in start.modules()
                   if isinstance(m, _spectral.SPECTRAL_LAYERS))
    assert extra and n_deltas
    d = FastFIP(cfg)
    out = d.purify(backdoored_model, splits.holdout, task, rng=generator(0, "defense"))
    assert d.report["tuned_params"] == n_deltas + sum(p.numel() for _, p in extra)
    after = dict(out.named_parameters())
    assert all(not torch.equal(p, after[n]) for n, p in extra)  # each of them was trained
    assert all(p.requires_grad for p in out.parameters())  # folded back to a plain, trainable model


# -- the objective -----------------------------------------------------------------------------------------------
def test_objective_adds_retention_every_step_and_trace_every_kth(task, backdoored_model, splits):
    model = backdoored_model.train()
    params = list(model.parameters())
    anchor = [p.detach().clone() for p in params]
    fisher = [torch.rand_like(p) for p in params]
    with torch.no_grad():  # move away from θ̄ so that the retention term is non-zero
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
    cfg = FIPConfig(eta_f=0.7, eta_r=3.0, trace_every=4, sample_labels=False)
    hook = FIPObjective(task, params, anchor, fisher, cfg, generator(0, "labels"))
    batch = task.to_device(task.collate([splits.holdout[i] for i in range(16)]))
    base = task.loss(model, batch)
    retention = sum((f * (p - a) ** 2).sum() for f, p, a in zip(fisher, params, anchor))

    off_step = hook.on_loss(model, batch, base, step=1)
    torch.testing.assert_close(off_step, base + 0.5 * 3.0 * retention)
    on_step = hook.on_loss(model, batch, base, step=4)
    t = trace_term(model, batch, task, params)
    torch.testing.assert_close(on_step, base + 0.5 * 3.0 * retention + 0.7 * t, rtol=1e-5, atol=1e-6)
    assert on_step.requires_grad


def test_fisher_is_computed_at_the_backdoored_weights_and_normalised(task, backdoored_model, splits, monkeypatch):
    seen = {}
    import defenses.fip as fip_module

    def spy(model, data, task_, params):
        seen["weights"] = [p.detach().clone() for p in params]
        seen["n"] = len(data)
        return diagonal_fisher(model, data, task_, params)

    monkeypatch.setattr(fip_module, "diagonal_fisher", spy)
    start = [p.detach().clone() for p in backdoored_model.parameters()]
    holdout = splits.holdout
    d = FIP(FIPConfig(fit=FitConfig(steps=2, batch_size=16, lr=0.005, momentum=0.95)))
    d.purify(backdoored_model, holdout, task, rng=generator(0, "defense"))
    assert seen["n"] == len(holdout)  # F̄ uses the clean holdout only
    assert all(torch.equal(a, b) for a, b in zip(seen["weights"], start))  # ... at θ̄, before any step


# -- both defenses end to end ------------------------------------------------------------------------------------
def test_fip_tunes_every_parameter_and_reports(task, backdoored_model, splits):
    n_params = count_tuned(list(backdoored_model.parameters()))
    start = copy.deepcopy(backdoored_model)
    d = FIP(FIPConfig(fit=FitConfig(steps=6, batch_size=16, lr=0.005, momentum=0.95)))
    out = d.purify(backdoored_model, splits.holdout, task, rng=generator(0, "defense"))
    assert d.report["tuned_params"] == n_params and d.report["steps"] == 6
    assert torch.isfinite(torch.tensor(d.report["final_loss"]))
    moved = [not torch.equal(a, b) for a, b in zip(start.parameters(), out.parameters())]
    assert all(moved)


def test_fast_fip_returns_a_plain_model_with_few_tuned_parameters(task, backdoored_model, splits, test_images):
    n_params = count_tuned(list(backdoored_model.parameters()))
    before = _outputs(backdoored_model, test_images)
    d = FastFIP(FastFIPConfig(fit=FitConfig(steps=6, batch_size=16, lr=0.01, optimizer="adam")))
    out = d.purify(backdoored_model, splits.holdout, task, rng=generator(0, "defense"))
    assert not any(parametrize.is_parametrized(m) for m in out.modules())
    assert 0 < d.report["tuned_params"] < 0.01 * n_params
    assert count_tuned(list(out.parameters())) == n_params  # same architecture after folding
    assert not torch.equal(_outputs(out, test_images), before)  # the shifts did move the function


def test_purification_is_deterministic_given_the_rng(task, backdoored_model, splits):
    cfg = FIPConfig(fit=FitConfig(steps=5, batch_size=16, lr=0.005, momentum=0.95))
    a = FIP(cfg).purify(copy.deepcopy(backdoored_model), splits.holdout, task, rng=generator(3, "defense"))
    b = FIP(cfg).purify(copy.deepcopy(backdoored_model), splits.holdout, task, rng=generator(3, "defense"))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_released_variant_is_labelled_and_has_no_retention(task, backdoored_model, splits, monkeypatch):
    import defenses.fip as fip_module

    def forbidden(*args, **kwargs):
        raise AssertionError("the released variant has no retention term, so no Fisher is computed")

    monkeypatch.setattr(fip_module, "diagonal_fisher", forbidden)
    d = FIP(FIPConfig(variant="released", probes=3, fit=FitConfig(steps=3, batch_size=16, lr=0.005)))
    d.purify(backdoored_model, splits.holdout, task, rng=generator(0, "defense"))
    assert d.report["variant"] == "released"


def test_released_trace_term_is_a_zero_mean_linear_function_of_the_gradient():
    from defenses.fip import released_trace_term

    model = nn.Sequential(nn.Linear(4, 3))
    batch = {"x": torch.randn(5, 4, generator=generator(0, "x")), "y": torch.tensor([0, 1, 2, 0, 1])}
    params = list(model.parameters())
    values = torch.tensor([float(released_trace_term(model, batch, params, 1, generator(s, "probe")).detach())
                           for s in range(400)])
    scale = values.abs().mean()
    assert abs(float(values.mean())) < 0.2 * scale  # zero mean over probes, unlike ‖g‖² ≥ 0
    assert (values < 0).any() and (values > 0).any()


def test_trace_step_updates_batchnorm_statistics_once(task, backdoored_model, splits):
    """Only the ordinary forward of a step moves BN running statistics; the trace term's forwards do not."""
    from defenses.fisher import frozen_norm_stats

    model = backdoored_model.train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    batch = task.to_device(task.collate([splits.holdout[i] for i in range(16)]))
    before = bn.running_mean.clone()
    with frozen_norm_stats(model):
        trace_term(model, task.sample_model_labels(model, batch, generator(0, "l")), task, list(model.parameters()))
    assert torch.equal(bn.running_mean, before) and bn.momentum == 0.1
    task.loss(model, batch)
    assert not torch.equal(bn.running_mean, before)
