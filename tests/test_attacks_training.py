"""Behaviour of the training-controlled attacks (WaNet, BppAttack, Input-aware, LIRA) on the embedded digits."""

from __future__ import annotations

import math

import pytest
import torch

from attacks.base import Subset
from attacks.bpp import Bpp, BppConfig, squeeze
from attacks.input_aware import InputAware, InputAwareConfig, mask
from attacks.lira import Lira, LiraConfig
from attacks.wanet import WaNet, WaNetConfig
from benchmark.rng import generator
from tasks.base import FitConfig


@pytest.fixture(scope="module")
def small(splits):
    return Subset(splits.train, range(320))


def batch_of(task, data, positions):
    return task.collate([data[i] for i in positions])


def fit_briefly(task, attack, data, steps=6):
    model = task.build_model("small_cnn", generator(0, "init"))
    task.fit(model, attack.poison(task, data), FitConfig(steps=steps, batch_size=32, lr=0.05),
             hooks=attack.train_hooks(task), generator=generator(0, "fit"))
    return model


# -- WaNet ----------------------------------------------------------------------------------------------------
def test_wanet_warp_is_identity_at_zero_strength_and_moves_pixels_otherwise(task, splits):
    s = splits.test[0]
    still = WaNet(WaNetConfig(s=0.0)).trigger(task).apply(s, {})
    assert torch.allclose(still.x, s.x, atol=1e-5)
    warped = WaNet(WaNetConfig()).trigger(task).apply(s, {})
    assert (warped.x - s.x).abs().max() > 0.05
    assert float(warped.x.min()) >= 0 and float(warped.x.max()) <= 1
    # Warping moves pixels, it does not add a pattern: an all-constant image stays constant inside.
    flat = WaNet(WaNetConfig()).trigger(task).apply(s.__class__(torch.full_like(s.x, 0.5), 0, 0), {})
    assert torch.allclose(flat.x[:, 2:-2, 2:-2], torch.full_like(flat.x[:, 2:-2, 2:-2], 0.5), atol=1e-5)


def test_wanet_noise_mode_samples_keep_clean_labels_and_spare_the_backdoor_samples(task, small):
    attack = WaNet(WaNetConfig(poison_rate=0.2), seed=1)
    poisoned = attack.poison(task, small)
    (hook,) = attack.train_hooks(task)
    positions = list(range(64))
    batch = task.to_device(batch_of(task, poisoned, positions))
    out = hook.on_batch(batch, step=7)
    assert torch.equal(out["y"], batch["y"])
    changed = [i for i in positions if not torch.equal(out["x"][i], batch["x"][i])]
    assert len(changed) == int(int(64 * 0.2) * 2.0)
    assert not set(changed) & set(poisoned.indices)
    # Noise mode is not the trigger warp: the random offsets make it differ from the backdoor image.
    trig = attack.trigger(task)
    i = changed[0]
    assert not torch.allclose(out["x"][i], trig.apply(small[i], {}).x, atol=1e-3)
    again = hook.on_batch(batch, step=7)
    assert torch.equal(again["x"], out["x"])  # deterministic by (seed, step)
    assert not torch.equal(hook.on_batch(batch, step=8)["x"], out["x"])


# -- BppAttack ------------------------------------------------------------------------------------------------
def floyd_steinberg_reference(img: torch.Tensor, levels: int) -> torch.Tensor:
    """The authors' row-by-row error diffusion, in float64, for comparison."""
    img = img.double().clone()
    c, h, w = img.shape
    q = levels - 1
    for y in range(h):
        for x in range(w):
            old = img[:, y, x].clone()
            new = (old * q).round().clamp(0, q) / q
            err = old - new
            img[:, y, x] = new
            if x + 1 < w:
                img[:, y, x + 1] += err * 7 / 16
            if y + 1 < h:
                if x > 0:
                    img[:, y + 1, x - 1] += err * 3 / 16
                img[:, y + 1, x] += err * 5 / 16
                if x + 1 < w:
                    img[:, y + 1, x + 1] += err * 1 / 16
    return img.float()


@pytest.mark.parametrize("levels", [2, 8])
def test_bpp_squeezing_gives_at_most_squeeze_num_levels_and_is_floyd_steinberg(levels):
    x = torch.rand(2, 3, 9, 13, generator=torch.Generator().manual_seed(0))
    out = squeeze(x, levels, dithering=True)
    grid = torch.arange(levels) / (levels - 1)
    for img in out:
        for ch in img:
            values = ch.unique()
            assert len(values) <= levels
            assert all(torch.isclose(grid, v).any() for v in values)
    ref = torch.stack([floyd_steinberg_reference(img, levels) for img in x])
    assert torch.allclose(out, ref, atol=1e-6)
    # Dithering keeps the local mean that plain rounding loses (error diffusion).
    assert (out.mean() - x.mean()).abs() < (squeeze(x, levels, False) - x).abs().mean()


def test_bpp_trigger_and_contrastive_negatives(task, splits, small):
    s = splits.test[3]
    for dithering in (False, True):
        trig = Bpp(BppConfig(dithering=dithering)).trigger(task).apply(s, {})
        assert not torch.equal(trig.x, s.x) and len(trig.x.unique()) <= 8
    attack = Bpp(BppConfig(poison_rate=0.2), seed=2)
    poisoned = attack.poison(task, small)
    (hook,) = attack.train_hooks(task)
    batch = task.to_device(batch_of(task, poisoned, range(50)))
    out = hook.on_batch(batch, step=0)
    assert torch.equal(out["y"], batch["y"])  # negatives keep their clean label
    changed = [i for i in range(50) if not torch.equal(out["x"][i], batch["x"][i])]
    assert 0 < len(changed) <= int(50 * 0.2)
    assert not set(changed) & set(poisoned.indices)
    for i in changed:  # a negative is NOT the squeezed image itself (that is the trigger)
        assert not torch.equal(out["x"][i], squeeze(batch["x"][i:i + 1], 8, attack.cfg.dithering)[0])
        assert float(out["x"][i].min()) >= 0 and float(out["x"][i].max()) <= 1


# -- Input-aware ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def input_aware(task, small):
    """(attack, G/M state before the backdoor fit): mask pre-trained, then a short joint fit."""
    attack = InputAware(InputAwareConfig(mask_epochs=6, poison_rate=0.2), seed=0)
    attack.build(task.input_shape)
    untrained_mask = attack.nets[1]
    attack.prepare(task, small, generator=generator(0, "prep"))
    before = {k: v.clone() for k, v in attack.state_dict().items()}
    fit_briefly(task, attack, small)
    return attack, before, untrained_mask


def test_input_aware_mask_pretraining_and_joint_generator_training(task, splits, input_aware):
    attack, before, _ = input_aware
    x = task.collate([splits.test[i] for i in range(32)])["x"]
    fresh = InputAware(seed=0)
    fresh.build(task.input_shape)
    with torch.no_grad():
        density = float(mask(attack.nets[1].eval(), x).mean())
        untrained = float(mask(fresh.nets[1].eval(), x).mean())
    assert density < 0.6 * untrained  # the norm loss drives the mask towards mask_density
    after = attack.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("G."))  # G learned in fit
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("M."))  # M frozen after prepare


@pytest.mark.parametrize("mode", ["all2one", "all2all"])
def test_input_aware_trigger_is_sample_specific_and_cross_samples_keep_clean_labels(task, splits, small,
                                                                                     input_aware, mode):
    trained, _, _ = input_aware
    attack = InputAware(InputAwareConfig(poison_rate=0.2, label_mode=mode), seed=0)
    attack.load_state_dict(trained.state_dict())
    triggered, clean = attack.triggered_test(task, Subset(splits.test, range(40)))
    d0, d1 = triggered[0].x - clean[0].x, triggered[1].x - clean[1].x
    assert not torch.allclose(d0, d1, atol=1e-3)  # the trigger depends on the image
    assert [t.y for t in triggered] == [task.backdoor_label(c.y, mode, 0) for c in clean]

    (hook,) = attack.train_hooks(task)
    hook.on_fit_start(task.build_model("small_cnn", generator(0, "m")), task)
    batch = task.to_device(batch_of(task, small, range(40)))
    out = hook.on_batch(batch, step=3)
    n = int(0.2 * 40)
    expected = torch.tensor([task.backdoor_label(int(v), mode, 0) for v in batch["y"][:n]])
    assert torch.equal(out["y"][:n], expected)
    assert torch.equal(out["y"][n:], batch["y"][n:])  # cross samples (n..2n) and the rest keep clean labels
    assert all(not torch.equal(out["x"][i], batch["x"][i]) for i in range(2 * n))
    assert torch.equal(out["x"][2 * n:], batch["x"][2 * n:])
    assert hook.div is not None and torch.isfinite(hook.div)


@pytest.mark.parametrize("schedule", ["constant", "task"])
def test_input_aware_generator_lr_follows_the_classifier_schedule_when_asked(task, small, input_aware, schedule):
    trained, _, _ = input_aware
    attack = InputAware(InputAwareConfig(poison_rate=0.2, lr_g_schedule=schedule), seed=0)
    attack.load_state_dict(trained.state_dict())
    (hook,) = attack.train_hooks(task)
    seen = []
    original = hook.on_step_end

    def record(model, step):  # G's lr as it steps, next to the classifier's ratio for that step
        original(model, step)
        seen.append((hook.lr_ratio, hook.opt.param_groups[0]["lr"]))

    hook.on_step_end = record
    model = task.build_model("small_cnn", generator(0, "init"))
    task.fit(model, small, FitConfig(steps=4, batch_size=32, lr=0.05), hooks=[hook], generator=generator(0, "f"))
    ratios = [r for r, _ in seen]
    assert ratios == pytest.approx([(1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)])  # cosine, per step
    expected = [0.01 * r for r in ratios] if schedule == "task" else [0.01] * 4
    assert [lr for _, lr in seen] == pytest.approx(expected)
    # an `added` field: the default stays out of cell ids and artifact keys (stored results keep theirs)
    assert ("lr_g_schedule" in attack.cfg.to_dict()) == (schedule == "task")


# -- LIRA -----------------------------------------------------------------------------------------------------
def test_lira_perturbation_respects_eps_and_generator_trains_only_in_stage_one(task, splits, small):
    eps = 0.02
    attack = Lira(LiraConfig(eps=eps, stage1_fraction=1.0), seed=0)
    attack.prepare(task, small, generator=generator(0, "prep"))
    init = {k: v.clone() for k, v in attack.state_dict().items()}
    fit_briefly(task, attack, small, steps=4)
    trained = attack.state_dict()
    assert any(not torch.equal(init[k], trained[k]) for k in trained)
    triggered, clean = attack.triggered_test(task, Subset(splits.test, range(30)))
    for i in range(len(clean)):
        delta = (triggered[i].x - clean[i].x).abs().max()
        assert 0 < delta <= eps + 1e-6
        assert triggered[i].y == 0

    (hook,) = attack.train_hooks(task)
    hook.on_fit_start(task.build_model("small_cnn", generator(0, "m")), task)
    batch = task.to_device(batch_of(task, small, range(32)))
    out = hook.on_batch(batch, step=0)  # alpha 0.5: the batch plus one triggered copy of every sample
    assert out["x"].shape[0] == 64 and torch.equal(out["y"][32:], torch.zeros(32, dtype=torch.int64))
    assert (out["x"][32:] - batch["x"]).abs().max() <= eps + 1e-6

    frozen = Lira(LiraConfig(eps=eps, stage1_fraction=0.0), seed=0)
    frozen.prepare(task, small, generator=generator(0, "prep"))
    start = {k: v.clone() for k, v in frozen.state_dict().items()}
    fit_briefly(task, frozen, small, steps=3)
    assert all(torch.equal(start[k], v) for k, v in frozen.state_dict().items())  # stage II: T fixed


def test_lira_stage_one_is_a_fraction_of_the_run(task, small):
    attack = Lira(LiraConfig(stage1_fraction=0.5), seed=0)
    attack.prepare(task, small, generator=generator(0, "prep"))
    (hook,) = attack.train_hooks(task)
    model = task.build_model("small_cnn", generator(0, "init"))
    task.fit(model, attack.poison(task, small), FitConfig(steps=6, batch_size=32, lr=0.05), hooks=[hook],
             generator=generator(0, "fit"))
    assert hook.total_steps == 6 and hook.stage1_steps == 3
    assert hook.in_stage1(2) and not hook.in_stage1(3)
