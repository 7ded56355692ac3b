"""Image models: every registered architecture builds for every input size used, is seeded by its generator,
has normalisation inside, trains, takes a local weight file through `init_weights`, and survives Fast FIP's
spectral reparametrisation and fold-back (the path every defense takes)."""

from __future__ import annotations

import pytest
import torch

from benchmark.errors import FipbenchError
from benchmark.registries import MODELS
from benchmark.rng import generator
from defenses import _spectral
from defenses.fisher import second_order, trace_term
from tasks.base import FitConfig
from tasks.image_classification import ImageClassificationConfig, ImageClassificationTask
from tasks.image_classification.models import Normalize

# Image classifiers; detectors are built and run in tests/test_object_detection.py.
NAMES = [n for n in MODELS.names() if getattr(MODELS.get(n), "task", "image_classification") == "image_classification"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("c,size", [(1, 16), (1, 28), (3, 32), (3, 64)])
def test_builds_for_every_small_input(name, c, size):
    model = MODELS.get(name)(in_channels=c, num_classes=7, mean=[0.5] * c, std=[0.25] * c, image_size=size)
    first_leaf = next(m for m in model.modules() if not list(m.children()))
    assert isinstance(first_leaf, Normalize), f"{name}: normalisation must be the model's first layer"
    with torch.no_grad():
        assert model.eval()(torch.rand(2, c, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", NAMES)
def test_seeded_build_trains_and_folds(name, task, splits):
    a = task.build_model(name, generator(0, "init", name))
    b = task.build_model(name, generator(0, "init", name))
    c = task.build_model(name, generator(1, "init", name))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    before = {k: v.clone() for k, v in sa.items()}
    task.fit(a, splits.train[:64], FitConfig(steps=2, batch_size=32, lr=0.01), generator=generator(0, "fit"))
    assert any(not torch.equal(before[k], v) for k, v in a.state_dict().items() if v.is_floating_point())

    # Second derivatives exist (FIP's trace term, I-BAU and the sharpness figures need them; DeiT's fused
    # attention kernel has none, so the model is built with explicit attention).  Checked on one model per op
    # family: the ResNets and VGG are built from the small CNN's ops (conv, BatchNorm, ReLU, pooling, linear),
    # and a double backward through them costs 10-25 s on 2 cores.
    if name not in ("small_cnn", "mobilenet_v2", "deit_tiny"):
        return
    params = [p for p in a.parameters() if p.requires_grad]
    with second_order(name):
        trace_term(a, task.collate(splits.train[:4]), task, params).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)

    # Fast FIP's reparametrisation starts at the same function and folds back to the same plain layers.
    a.eval()
    x = torch.stack([s.x for s in splits.test[:8]])
    with torch.no_grad():
        ref = a(x)
    shifts = _spectral.apply_spectral(a)
    assert shifts
    with torch.no_grad():
        assert torch.allclose(a(x), ref, atol=1e-3, rtol=1e-3)
    folded = _spectral.fold(a)
    assert set(folded.state_dict()) == set(sa)
    with torch.no_grad():
        assert torch.allclose(folded(x), ref, atol=1e-3, rtol=1e-3)


def test_init_weights_loads_a_local_file_and_refuses_bad_ones(tmp_path, task):
    from safetensors.torch import save_model

    src = task.build_model("small_cnn", generator(5, "init"))
    path = tmp_path / "w.safetensors"
    save_model(src, str(path))
    t = ImageClassificationTask("digits", ImageClassificationConfig(holdout_fraction=0.05, init_weights=str(path)))
    got = t.build_model("small_cnn", generator(0, "init"))
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in got.state_dict().items())
    with pytest.raises(FipbenchError, match="does not fit model"):
        t.build_model("resnet18", generator(0, "init"))
    # The plain network's own state dict (torchvision / timm layout, here DataParallel-prefixed, trained for 7
    # classes): the backbone loads, the 7-class head stays at its random init, normalisation stays the model's.
    other = MODELS.get("resnet18")(in_channels=1, num_classes=7, mean=[0.1], std=[0.2], image_size=16)
    torch.save({f"module.{k}": v for k, v in other[1].state_dict().items()}, tmp_path / "net.pt")
    t = ImageClassificationTask("digits", ImageClassificationConfig(init_weights=str(tmp_path / "net.pt")))
    got, fresh = t.build_model("resnet18", generator(0, "init")), task.build_model("resnet18", generator(0, "init"))
    for k, v in got.state_dict().items():
        ref = fresh.state_dict()[k] if k.startswith(("0.", "1.fc.")) else other.state_dict()[k]
        assert torch.equal(v, ref), k
    # A backbone-only file without num_batches_tracked (older checkpoints) loads too: head and counters stay.
    backbone = {k: v for k, v in other[1].state_dict().items() if not k.startswith("fc.")
                and not k.endswith("num_batches_tracked")}
    torch.save(backbone, tmp_path / "backbone.pt")
    t = ImageClassificationTask("digits", ImageClassificationConfig(init_weights=str(tmp_path / "backbone.pt")))
    got = t.build_model("resnet18", generator(0, "init"))
    assert torch.equal(got.state_dict()["1.layer1.0.conv1.weight"], other.state_dict()["1.layer1.0.conv1.weight"])
    assert torch.equal(got.state_dict()["1.fc.weight"], fresh.state_dict()["1.fc.weight"])
    # A whole-model file with a tensor missing is named as such, not mistaken for a plain network.
    torch.save({k: v for k, v in got.state_dict().items() if k != "1.conv1.weight"}, tmp_path / "whole.pt")
    t = ImageClassificationTask("digits", ImageClassificationConfig(init_weights=str(tmp_path / "whole.pt")))
    with pytest.raises(FipbenchError, match=r"missing \['1.conv1.weight'\]"):
        t.build_model("resnet18")
    # ...but a torchvision ImageNet ResNet-18 does not fit the small-input model (7x7 RGB stem): one line
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp_path / "imagenet.pt")
    t = ImageClassificationTask("digits", ImageClassificationConfig(init_weights=str(tmp_path / "imagenet.pt")))
    with pytest.raises(FipbenchError, match=r"conv1.weight is \(64, 3, 7, 7\) in the file but \(64, 1, 3, 3\)"):
        t.build_model("resnet18")
    missing = ImageClassificationTask("digits", ImageClassificationConfig(init_weights=str(tmp_path / "nope.pt")))
    with pytest.raises(FipbenchError, match="does not exist"):
        missing.build_model("small_cnn")
