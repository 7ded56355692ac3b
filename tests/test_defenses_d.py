"""Behaviour of fine_pruning, nad, clp, ft_sam and awm (beyond the enrollment tests' plumbing)."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

from benchmark.rng import generator
from defenses import _d_layers
from defenses.awm import AWM, AWMConfig
from defenses.clp import CLP, CLPConfig, channel_lipschitz
from defenses.fine_pruning import FinePruning, FinePruningConfig, channel_activations, find_feature_linear
from defenses.ft_sam import FTSAM, FTSAMConfig
from defenses.nad import AttentionDistillation, attention_loss, attention_map


@pytest.fixture(scope="module")
def plain_task():
    """The digits task without training augmentation, so a hand computation sees fit's exact batch."""
    from tasks.image_classification import ImageClassificationConfig, ImageClassificationTask

    return ImageClassificationTask("digits", ImageClassificationConfig(holdout_fraction=0.05, augment=False))


# -- fine-pruning -------------------------------------------------------------------------------------------

def test_fine_pruning_prunes_least_active_channels_first_and_keeps_them_pruned(task, splits, backdoored_model):
    clean = splits.holdout
    name, linear, channels, k = find_feature_linear(backdoored_model, _d_layers.example_input(clean, task))
    assert (channels, k) == (128, 1) and isinstance(linear, nn.Linear)
    acts = channel_activations(backdoored_model, linear, clean, task, channels, 256)
    keys = list(backdoored_model.state_dict())
    cfg = FinePruningConfig.from_dict({"fit": {"steps": 3, "batch_size": 32}, "once_prune_ratio": 0.05,
                                       "acc_ratio": 0.5})  # the 3-epoch fixture is fragile: allow a deep cut
    d = FinePruning(cfg)
    out = d.purify(backdoored_model, clean, task, rng=generator(0, "fp"))
    n = d.report["pruned"]
    assert n > 0
    assert d.report["pruned_channels"] == torch.argsort(acts)[:n].tolist()  # least active first
    weight = dict(out.named_modules())[name].weight  # [out, C*k], folded
    pruned = torch.tensor(d.report["pruned_channels"])
    assert torch.all(weight[:, pruned] == 0), "pruned columns must stay zero through fine-tuning"
    kept = torch.ones(channels, dtype=torch.bool)
    kept[pruned] = False
    assert torch.all(weight[:, kept].abs().sum(0) > 0)
    # the stop criterion: holdout accuracy kept within acc_ratio of the unpruned model's
    assert d.report["holdout_acc_pruned"] >= (1 - cfg.acc_ratio) * d.report["holdout_acc_unpruned"]
    assert list(out.state_dict()) == keys


# -- CLP ----------------------------------------------------------------------------------------------------

def _uniform_net() -> nn.Module:
    # 16 channels: with n channels one outlier's z-score is at most (n - 1) / sqrt(n), which exceeds u = 3
    # only from n = 11 on
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(0.1)  # every channel the same kernel: the same Lipschitz bound
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.fill_(0.1)
    return net.eval()


def test_clp_prunes_exactly_the_planted_channel():
    net = _uniform_net()
    with torch.no_grad():
        net[3].weight[5] *= 50  # channel 5 of the second conv: a huge Lipschitz constant
    before = copy.deepcopy(net.state_dict())
    fake_task = types.SimpleNamespace(input_shape=(3, 8, 8), device=torch.device("cpu"))
    d = CLP(CLPConfig())
    out = d.purify(net, [], fake_task, rng=generator(0, "clp"))  # data-free: an empty holdout is enough
    after = out.state_dict()
    assert d.report["pruned"] == 1 and d.report["pruned_per_layer"] == {"1": 0, "4": 1}
    assert after["4.weight"][5] == 0 and after["4.bias"][5] == 0
    for key in before:
        if key not in ("4.weight", "4.bias"):
            assert torch.equal(before[key], after[key]), key
    keep = [i for i in range(16) if i != 5]
    assert torch.equal(after["4.weight"][keep], before["4.weight"][keep])


def test_clp_uclc_is_the_bn_scaled_spectral_norm():
    net = _uniform_net()
    with torch.no_grad():
        net[1].running_var.fill_(4.0)
        net[1].weight.fill_(-3.0)
    lips = channel_lipschitz(net[0], net[1])
    w = net[0].weight[0].reshape(3, 9)
    expected = torch.linalg.svdvals(w).max() * 3.0 / torch.sqrt(torch.tensor(4.0 + net[1].eps))
    assert torch.allclose(lips, expected.expand(16))


def test_conv_bn_pairs_follow_the_dataflow_in_preact_blocks():
    from tasks.image_classification.models import PreActResNet18

    model = PreActResNet18(3, 10, [0.5] * 3, [0.5] * 3)
    tr = _d_layers.trace(model, torch.zeros(2, 3, 32, 32))
    # pre-activation: conv1's output feeds bn2 of the same block; conv2's output feeds a residual add, no BN
    assert ("layers.0.conv1", "layers.0.bn2") in tr.conv_bn
    assert not any(conv.endswith("conv2") for conv, _ in tr.conv_bn)


# -- NAD ----------------------------------------------------------------------------------------------------

def test_nad_attention_loss_zero_for_identical_models_and_positive_otherwise(task, splits, backdoored_model):
    x = _d_layers.example_input(splits.holdout, task, n=16)
    names = _d_layers.stage_outputs(_d_layers.trace(backdoored_model, x), 3)
    # the small CNN (Normalize at index 0) has two conv stages: the ReLU after conv2 (full size), after conv3 (1/2)
    assert names == ["6", "10"]
    teacher = copy.deepcopy(backdoored_model)
    hook = AttentionDistillation(backdoored_model, teacher, names, [1000.0, 1000.0], 2.0)
    loss = backdoored_model(x).sum() * 0
    assert float(hook.on_loss(backdoored_model, {"x": x}, loss, 0).detach()) == 0.0
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator(0, "noise")))
    backdoored_model(x)
    assert float(hook.on_loss(backdoored_model, {"x": x}, loss, 0).detach()) > 0.0
    hook.on_fit_end(backdoored_model)


def test_attention_map_is_unit_norm_and_channel_pooled():
    fm = torch.randn(4, 6, 5, 5, generator=generator(0, "fm"))
    am = attention_map(fm, 2.0)  # [4, 25]
    assert am.shape == (4, 25) and torch.allclose(am.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(am, attention_map(fm * 3.0, 2.0), atol=1e-6)  # scale-free
    assert float(attention_loss(fm, fm, 2.0)) == 0.0


def test_stage_outputs_of_torchvision_resnet_are_its_last_three_layers():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10)
    names = _d_layers.stage_outputs(_d_layers.trace(model, torch.zeros(1, 3, 64, 64)), 3)
    assert names == ["layer2", "layer3", "layer4"]
    name, linear, channels, k = find_feature_linear(model, torch.zeros(1, 3, 64, 64))
    assert (name, channels, k) == ("fc", 512, 1)


# -- FT-SAM -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("adaptive", [True, False])
def test_ft_sam_step_equals_a_hand_computed_sam_step(plain_task, adaptive):
    data = [plain_task.splits().holdout[i] for i in range(16)]
    c, h, w = plain_task.input_shape
    with torch.random.fork_rng(devices=[]):  # the constructor's own init draws are overwritten below
        model = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=generator(0, "sam-init", tuple(p.shape))))
    ref = copy.deepcopy(model)
    lr, mom, wd, rho = 0.1, 0.9, 1e-3, 0.5 if not adaptive else 2.0
    cfg = FTSAMConfig.from_dict({"rho": rho, "adaptive": adaptive, "fit": {
        "steps": 1, "batch_size": 16, "lr": lr, "momentum": mom, "weight_decay": wd, "schedule": "constant"}})
    FTSAM(cfg).purify(model, data, plain_task, rng=generator(0, "sam"))

    batch = plain_task.collate(data)
    params = list(ref.parameters())
    g = torch.autograd.grad(plain_task.loss(ref, batch), params)
    t = [p.detach().abs() if adaptive else torch.ones_like(p) for p in params]
    norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g)))
    e = [rho * ti ** 2 * gi / (norm + 1e-12) for ti, gi in zip(t, g)]
    with torch.no_grad():
        for p, ei in zip(params, e):
            p.add_(ei)
    g_sam = torch.autograd.grad(plain_task.loss(ref, batch), params)
    with torch.no_grad():
        for p, ei, gs in zip(params, e, g_sam):
            p.sub_(ei)
            p.sub_(lr * (gs + wd * p))  # SGD's first step: momentum buffer = gradient
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6), float((a - b).abs().max())


# -- AWM ----------------------------------------------------------------------------------------------------

def test_awm_mask_lies_in_unit_interval_and_l1_makes_it_sparse(task, splits, backdoored_model):
    before = {k: v.clone() for k, v in backdoored_model.state_dict().items()}
    # a strong L1 weight and a large mask lr, so that two Adam steps (≈ lr each) reach the clip at 0
    cfg = AWMConfig.from_dict({"outer": 2, "inner": 1, "batch_size": 64, "gamma": 1.0, "mask_lr": 0.6})
    d = AWM(cfg)
    out = d.purify(backdoored_model, splits.holdout, task, rng=generator(0, "awm"))
    after = out.state_dict()
    assert list(after) == list(before)
    convs = [n for n, m in out.named_modules() if isinstance(m, nn.Conv2d)]
    for name in convs:
        w0, w1 = before[f"{name}.weight"], after[f"{name}.weight"]
        nz = w0 != 0
        ratio = w1[nz] / w0[nz]  # the folded mask
        assert ratio.min() >= -1e-6 and ratio.max() <= 1 + 1e-6
    assert d.report["mask_zero"] > 0.05, d.report  # the L1 term drives entries to exactly 0 (clipped)
    for key in before:  # only conv weights change
        if not any(key == f"{n}.weight" for n in convs):
            assert torch.equal(before[key], after[key]), key
    assert all(p.requires_grad for p in out.parameters())
