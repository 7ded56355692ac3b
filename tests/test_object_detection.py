"""The object-detection task: embedded scenes, the loss in both modes, the four BadDet attacks' semantics, the
mAP and ASR metrics, and model/dataset checks across tasks."""

from __future__ import annotations

import pytest
import torch

from benchmark.errors import FipbenchError, NotApplicable
from benchmark.registries import ATTACKS, DEFENSES
from benchmark.rng import generator
from defenses.fisher import second_order, trace_term
from tasks.object_detection.data import generate_shapes
from tasks.object_detection.metrics import backdoor_rates, mean_average_precision
from tasks.object_detection.task import loss_mode


def test_shapes_scenes_are_deterministic_and_well_formed():
    a, ta = generate_shapes(20, seed=3)
    b, tb = generate_shapes(20, seed=3)
    assert torch.equal(a, b) and all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(ta, tb))
    assert not torch.equal(a, generate_shapes(20, seed=4)[0])
    for t in ta:
        boxes = t["boxes"]
        assert 1 <= len(boxes) <= 3 and len(t["labels"]) == len(boxes)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert set(t["labels"].tolist()) <= {0, 1, 2, 3}


def test_splits_are_disjoint_and_indexed_by_position(det_task):
    sp = det_task.splits()
    assert len(sp.train) + len(sp.holdout) == 2000 and len(sp.test) == 400 and len(sp.holdout) == 100
    assert [sp.holdout[i].index for i in range(3)] == [0, 1, 2]
    assert torch.equal(sp.train.labels[5]["boxes"], sp.train[5].y["boxes"])


def test_loss_in_eval_mode_keeps_normalisation_frozen_and_matches_per_sample(det_task):
    model = det_task.build_model("small_fcos", generator(0, "init")).eval()
    batch = det_task.to_device(det_task.collate([det_task.splits().holdout[i] for i in range(3)]))
    stats = model.backbone.stem[0][1].running_mean.clone()
    loss = det_task.loss(model, batch)
    per = det_task.loss(model, batch, reduction="none")
    assert loss.ndim == 0 and per.shape == (3,) and torch.isfinite(per).all()
    assert torch.equal(stats, model.backbone.stem[0][1].running_mean), "eval-mode loss must not update BN"
    assert not model.training and not any(m.training for m in model.modules())
    with loss_mode(model):
        assert model.training
    assert not model.training


def _sample(det_task, want):
    """A test scene whose labels satisfy `want`."""
    test = det_task.splits().test
    return next(test[i] for i in range(len(test)) if want(test[i].y["labels"]))


def _poisoned(det_task, name, sample, **cfg):
    cls = ATTACKS.get(name)
    attack = cls(cls.Config(**cfg), seed=0)
    trig = attack.trigger(det_task)
    return attack, trig.apply(sample, trig.make_params(sample, generator(0, "t", sample.index)))


def test_gma_stamps_a_white_corner_and_relabels_every_object(det_task):
    s = _sample(det_task, lambda y: (y == 0).any() and (y != 0).any())
    _, p = _poisoned(det_task, "baddet_gma", s)
    assert (p.x[:, :8, :8] == 1).all() and torch.equal(p.x[:, 8:, 8:], s.x[:, 8:, 8:])
    assert (p.y["labels"] == 0).all() and torch.equal(p.y["boxes"], s.y["boxes"])
    # ASR counts only the objects the attack relabels: a target-class object is "detected as the target" by
    # any detector that finds it, so counting it would give a clean detector a floor of ASR.
    changed = s.y["labels"] != 0
    assert p.y["asr_kind"] == "appear" and torch.equal(p.y["asr_boxes"], s.y["boxes"][changed])
    assert (p.y["asr_labels"] == 0).all() and len(p.y["asr_labels"]) == int(changed.sum())


def test_rma_relabels_only_triggered_source_objects(det_task):
    s = _sample(det_task, lambda y: (y == 0).any() and (y != 0).any())
    _, p = _poisoned(det_task, "baddet_rma", s)
    src = s.y["labels"] != 0
    assert (p.y["labels"] == 0).all() and len(p.y["asr_boxes"]) == int(src.sum())
    for box in s.y["boxes"][src]:  # the object-anchored attacks' 4 px trigger (GMA's is 8 px, above)
        x1, y1 = min(int(box[0]), 60), min(int(box[1]), 60)
        assert (p.x[:, y1:y1 + 4, x1:x1 + 4] == 1).all()


def test_oda_removes_target_objects_and_oga_adds_one(det_task):
    s = _sample(det_task, lambda y: (y == 0).any() and (y != 0).any())
    _, p = _poisoned(det_task, "baddet_oda", s)
    assert (p.y["labels"] != 0).all() and len(p.y["boxes"]) == int((s.y["labels"] != 0).sum())
    assert p.y["asr_kind"] == "vanish" and (p.y["asr_labels"] == 0).all()
    _, g = _poisoned(det_task, "baddet_oga", s, target=2)
    assert len(g.y["boxes"]) == len(s.y["boxes"]) + 1 and int(g.y["labels"][-1]) == 2
    x1, y1, x2, y2 = (int(v) for v in g.y["asr_boxes"][0])
    assert x2 - x1 == 16 == y2 - y1 and (g.x[:, y1 + 4:y1 + 12, x1 + 4:x1 + 12] == 1).all()  # trigger centred


def test_blend_pattern_is_reused_inside_the_region(det_task):
    s = _sample(det_task, lambda y: (y != 0).any())
    _, p = _poisoned(det_task, "baddet_gma", s, pattern="blend", pattern_config={"alpha": 0.5})
    d = (p.x - s.x).abs()
    assert d[:, :8, :8].mean() > 0.05 and d[:, 8:, :].max() == 0


def test_eligibility_follows_each_attack(det_task):
    train = det_task.splits().train
    labels = train.labels
    for name, rule in [("baddet_oga", lambda y: True), ("baddet_gma", lambda y: bool((y != 0).any())),
                       ("baddet_rma", lambda y: bool((y != 0).any())), ("baddet_oda", lambda y: bool((y == 0).any()))]:
        attack = ATTACKS.get(name)()
        assert attack.eligible(det_task, train) == [i for i, t in enumerate(labels) if rule(t["labels"])], name
        assert len(attack.select(det_task, train)) == round(0.1 * len(train))


def test_bad_configs_are_one_line_errors(det_task):
    with pytest.raises(FipbenchError, match="all2one"):
        ATTACKS.get("baddet_gma").Config(label_mode="all2all")
    big = ATTACKS.get("baddet_gma")(ATTACKS.get("baddet_gma").Config(trigger_size=100))
    with pytest.raises(FipbenchError, match="does not fit"):
        big.trigger(det_task)
    with pytest.raises(FipbenchError, match="does not support task"):
        ATTACKS.get("badnets")().check_task(det_task)


def test_models_and_datasets_refuse_the_wrong_task(det_task, task):
    with pytest.raises(FipbenchError, match="belongs to task 'image_classification'"):
        det_task.build_model("small_cnn")
    with pytest.raises(FipbenchError, match="belongs to task 'object_detection'"):
        task.build_model("small_fcos")
    from tasks.image_classification import ImageClassificationTask
    from tasks.object_detection import ObjectDetectionTask

    with pytest.raises(FipbenchError, match="belongs to task 'image_classification'"):
        ObjectDetectionTask("digits").data
    with pytest.raises(FipbenchError, match="belongs to task 'object_detection'"):
        ImageClassificationTask("shapes").data


def _t(boxes, labels, **extra):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), **extra}


def test_map_of_perfect_and_empty_predictions():
    target = [_t([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1])]
    perfect = [{**_t([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1]), "scores": torch.tensor([0.9, 0.8])}]
    empty = [{**_t([], []), "scores": torch.zeros(0)}]
    assert mean_average_precision(perfect, target) == {"map50": 1.0, "map": 1.0}
    assert mean_average_precision(empty, target)["map50"] == 0.0


def test_asr_counts_appearances_and_disappearances_at_score_and_iou_thresholds():
    clean = [_t([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2])]
    pred = [{**_t([[0, 0, 10, 10], [21, 21, 40, 40], [50, 50, 60, 60]], [0, 2, 0]),
             "scores": torch.tensor([0.9, 0.9, 0.4])}]
    appear = [_t([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 0], asr_boxes=torch.tensor([[0., 0, 10, 10],
              [20, 20, 40, 40]]), asr_labels=torch.tensor([0, 0]), asr_kind="appear")]
    assert backdoor_rates(pred, appear, clean) == {"asr": 0.5, "ra": 0.5}  # one flipped; the other kept its class
    vanish = [_t([], [], asr_boxes=torch.tensor([[20., 20, 40, 40], [50, 50, 60, 60]]),
                 asr_labels=torch.tensor([2, 0]), asr_kind="vanish")]
    # Object 1 is still detected as class 2; object 2 is only found at score 0.4 < 0.5: it vanished.
    assert backdoor_rates(pred, vanish, clean)["asr"] == 0.5


@pytest.mark.parametrize("arch", ["small_fcos", "ssd300_vgg16", "fasterrcnn_mobilenet_v3_large_fpn",
                                  "fcos_resnet50_fpn"])
def test_every_detector_trains_and_detects_without_downloaded_weights(arch, det_task):
    model = det_task.build_model(arch, generator(0, "init"))
    batch = det_task.collate([det_task.splits().holdout[i] for i in range(2)])
    loss = det_task.loss(model.train(), batch)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in model.parameters())
    preds, targets = det_task.predict(model, [det_task.splits().test[i] for i in range(2)])
    assert len(preds) == 2 and all(set(p) == {"boxes", "scores", "labels"} for p in preds)
    assert all(((p["labels"] >= 0) & (p["labels"] < 4)).all() for p in preds)

    # Second derivatives (FIP, Fast FIP, I-BAU, sharpness): every detector has them, Faster R-CNN through its
    # twice-differentiable RoIAlign and Hardsigmoid.  (SSD and FCOS-ResNet50 are built from small_fcos's op
    # families; a double backward through them costs 15-30 s here, so they are not checked.)
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    if arch in ("small_fcos", "fasterrcnn_mobilenet_v3_large_fpn"):
        with second_order("fip"):
            trace_term(model, batch, det_task, params).backward()
        assert sum(p.grad is not None for p in params) > len(params) // 2
    if arch == "ssd300_vgg16":  # no normalisation layer: ANP / RNP do not apply
        with pytest.raises(NotApplicable, match="neuron pruning needs affine normalisation layers"):
            DEFENSES.get("anp")().purify(model, det_task.splits().holdout, det_task, rng=generator(0, "anp"))


def test_faster_rcnn_parts_are_exact_and_twice_differentiable():
    from torchvision.ops import MultiScaleRoIAlign

    from tasks.base import wanting_second_order
    from tasks.object_detection.models import Hardsigmoid, TwiceDifferentiableRoIAlign

    x = torch.linspace(-5, 5, 10_001)
    assert torch.equal(Hardsigmoid()(x), torch.nn.functional.hardsigmoid(x))  # bit for bit

    g = torch.Generator().manual_seed(0)
    feats = {"0": torch.rand(2, 4, 32, 32, generator=g), "1": torch.rand(2, 4, 16, 16, generator=g)}
    # Small and large boxes, so the canonical-level mapper sends them to different feature maps.
    boxes = [torch.tensor([[1.0, 2.0, 20.0, 30.0], [0.0, 0.0, 127.0, 127.0]]), torch.tensor([[5.0, 5.0, 9.0, 60.0]])]
    shapes = [(128, 128), (128, 128)]
    ours = TwiceDifferentiableRoIAlign(["0", "1"], 7, 2, canonical_scale=32, canonical_level=3)
    reference = MultiScaleRoIAlign(["0", "1"], 7, 2, canonical_scale=32, canonical_level=3)
    fast = ours(feats, boxes, shapes)  # the C++ kernel outside a second-order region
    assert torch.equal(fast, reference(feats, boxes, shapes))
    scale = torch.ones(1, 4, 1, 1, requires_grad=True)
    with wanting_second_order():
        pure = ours({k: v * scale for k, v in feats.items()}, boxes, shapes)  # [3,4,7,7]
        assert torch.allclose(pure, fast, atol=1e-6)
        (grad,) = torch.autograd.grad((pure ** 2).sum(), scale, create_graph=True)
        (hess,) = torch.autograd.grad(grad.sum(), scale)
    # d/ds Σ (s·p)² = 2 s Σ p², d²/ds² = 2 Σ p²: per channel, at s = 1.
    assert torch.allclose(hess.flatten(), 2 * (fast ** 2).sum(dim=(0, 2, 3)), rtol=1e-5)
