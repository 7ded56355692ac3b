"""Behaviour of ANP, RNP, I-BAU, SAU and Neural Cleanse beyond the enrollment tests: the masked model starts as
the original function, pruning zeroes exactly the chosen neurons, I-BAU's perturbation respects its bound and its
hypergradient reduces to the plain gradient when no image carries the perturbation, SAU's shared adversarial
examples satisfy their definition, Neural Cleanse's MAD test flags a planted small-mask class."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from benchmark.rng import generator
from defenses._e_masks import MaskedModel, choose, neuron_layers, prune
from defenses.i_bau import IBAUConfig, hypergradient, universal_perturbation
from defenses.neural_cleanse import anomaly_index, flag
from defenses.sau import SAUConfig, shared, shared_pgd
from tasks.image_classification.models import PreActResNet18, small_cnn


def _models():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        a = small_cnn(3, 10, [0.5] * 3, [0.25] * 3)
        b = PreActResNet18(3, 10, [0.5] * 3, [0.25] * 3)
    # Non-trivial BatchNorm statistics and affine parameters, so that masking is visible.
    for m in list(a.modules()) + list(b.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):
            g = generator(0, "bn", m.num_features)
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return [a.eval(), b.eval()]


def _x(n=4, size=16):
    return torch.rand(n, 3, size, size, generator=generator(0, "x"))


@pytest.mark.parametrize("which", [0, 1], ids=["small_cnn", "preact_resnet18"])
def test_masked_model_with_unit_masks_and_zero_noise_is_the_original_function(which):
    model = _models()[which]
    x = _x()
    masked = MaskedModel(model, bias_noise=True)
    assert len(masked.masks) == len(neuron_layers(model)) > 0
    masked.model.eval()
    assert torch.equal(masked.model(x), model(x))
    masked.set_perturbed(True)  # zero noise: still the same function
    assert torch.equal(masked.model(x), model(x))
    masked.reset_noise(0.4, generator(0, "noise"))  # non-zero noise changes it, and stays within the bound
    assert not torch.allclose(masked.model(x), model(x))
    assert all(float(p.detach().abs().max()) <= 0.4 for p in masked.noise_params())
    masked.set_perturbed(False)
    with torch.no_grad():
        masked.masks[0].mask[3] = 0.0  # masking a neuron is zeroing its weight: same as pruning it
    pruned = prune(copy.deepcopy(model), [(masked.names[0], 3)])
    assert torch.allclose(masked.model(x), pruned(x), atol=1e-6)


def test_pruning_zeroes_exactly_the_chosen_neurons():
    model = _models()[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masked = MaskedModel(model)
    g = generator(0, "masks")
    with torch.no_grad():
        for m in masked.masks:
            m.mask.copy_(torch.rand(m.mask.shape, generator=g))
    values = masked.values()
    chosen = choose(values, "threshold", 0.2)
    assert chosen and {(n, i) for n, i, v in values if v < 0.2} == set(chosen)
    prune(model, chosen)
    after = model.state_dict()
    expected = {(f"{n}.weight", i) for n, i in chosen}
    for key, old in before.items():
        diff = (after[key] != old).flatten().nonzero().flatten().tolist()
        zeroed = {(key, i) for i in range(old.numel()) if (key, i) in expected}
        assert {(key, i) for i in diff} <= zeroed  # nothing else changed
        for _, i in zeroed:
            assert float(after[key].flatten()[i]) == 0.0
    by_fraction = choose(values, "fraction", 0.1)
    assert len(by_fraction) == round(0.1 * len(values))
    assert max(v for n, i, v in values if (n, i) in set(by_fraction)) <= \
        min(v for n, i, v in values if (n, i) not in set(by_fraction))


def test_ibau_perturbation_respects_its_l2_bound_and_hypergradient_reduces_to_gradient():
    model = _models()[0]
    batches = [{"x": _x(4), "y": torch.arange(4)}]
    big = universal_perturbation(model, batches, IBAUConfig(l2_bound=None, pert_lr=1000.0))
    assert float(big.norm()) > 0.5
    bounded = universal_perturbation(model, batches, IBAUConfig(l2_bound=0.5, pert_lr=1000.0))
    assert float(bounded.norm()) <= 0.5 + 1e-5 and bounded.shape == (1, 3, 16, 16)
    params = [p for p in model.parameters()]
    # portion 0: no image carries δ, so ∂L_o/∂δ = 0, v = 0 and the hypergradient is the plain CE gradient.
    hg = hypergradient(model, params, bounded, batches[0], IBAUConfig(portion=0.0), generator(0, "p"))
    plain = torch.autograd.grad(F.cross_entropy(model(batches[0]["x"]), batches[0]["y"]), params)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(hg, plain))
    # portion 1: every image carries δ; the implicit term makes it differ from the direct gradient alone.
    hg1 = hypergradient(model, params, bounded, batches[0], IBAUConfig(portion=1.0), generator(0, "p"))
    direct = torch.autograd.grad(F.cross_entropy(model(batches[0]["x"] + bounded), batches[0]["y"]), params)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(hg1, direct))


def test_sau_shared_adversarial_examples_satisfy_their_definition():
    model = _models()[0]
    ref = copy.deepcopy(model)
    with torch.no_grad():  # a reference that differs from the model
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator(0, "ref")))
    x = _x(16)
    with torch.no_grad():
        y = model(x).argmax(1)  # the model is right on every clean sample
    cfg = SAUConfig(adv_steps=5)
    eps = shared_pgd(model, ref, x, y, cfg)
    assert float(eps.abs().max()) <= cfg.norm_bound + 1e-7
    xa = x + eps
    with torch.no_grad():
        p, p0 = model(xa).argmax(1), ref(xa).argmax(1)
    assert torch.equal(shared(model, ref, xa, y), (p != y) & (p0 != y) & (p == p0))
    # With the model as its own reference, every adversarial example is shared.
    assert torch.equal(shared(model, model, xa, y), p != y)


def test_neural_cleanse_mad_flags_a_planted_small_mask_class():
    norms = torch.tensor([100.0, 95, 105, 98, 102, 10, 99, 101, 97, 103])
    assert flag(norms, 2.0) == [5]
    assert float(anomaly_index(norms)[5]) > 2
    big = norms.clone()
    big[5] = 400.0  # an outlier with a *large* mask is not a backdoor target
    assert flag(big, 2.0) == []
    assert flag(torch.tensor([100.0, 96, 104, 99, 101, 98, 102, 97, 103, 100]), 2.0) == []


def test_rnp_unlearning_stops_at_the_clean_threshold(task, splits, backdoored_model):
    from defenses.rnp import RNP, RNPConfig

    d = RNP(RNPConfig(batch_size=64, unlearn_epochs=30, recover_epochs=2, prune_by="fraction", amount=0.05))
    d.purify(backdoored_model, splits.holdout, task, rng=generator(0, "rnp"))
    r = d.report
    assert r["unlearn_epochs"] < 30 and r["unlearned_holdout_metric"] <= 0.2
    assert r["pruned_neurons"] == round(0.05 * r["neurons"]) > 0
