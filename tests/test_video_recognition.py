"""The video-recognition task: generated motion clips, 3D CNNs, clip-consistent augmentation, per-frame image
triggers, the clean-label video attack, video-level accuracy, and every defense that declares video support
running on a backdoored 3D CNN."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from attacks.base import Subset
from benchmark.errors import FipbenchError
from benchmark.registries import ATTACKS, DEFENSES
from benchmark.rng import generator
from _helpers import assert_defense_runs, briefly_backdoored
from tasks.base import FitConfig, Sample, labels_of
from tasks.video_recognition.data import MOTIONS, VideoData, generate_motions, render_clip


def test_motions_are_deterministic_balanced_clips(vid_task):
    x1, y1 = generate_motions(16, 8, 32, generator(3, "m"))
    x2, y2 = generate_motions(16, 8, 32, generator(3, "m"))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (16, 8, 3, 32, 32) and x1.dtype == torch.uint8
    assert torch.bincount(y1, minlength=8).tolist() == [2] * 8
    d = vid_task.data
    assert d.num_classes == len(MOTIONS) == 8 and d.clip_shape == (8, 3, 32, 32)
    assert torch.bincount(d.y_train).tolist() == [250] * 8
    s = vid_task.splits()
    assert len(s.train) + len(s.holdout) == 2000 and len(s.test) == 400
    assert labels_of(s.holdout).count(0) == round(0.05 * 250)  # stratified holdout


def test_the_class_is_in_the_motion_not_in_any_single_frame():
    """A 'right' clip played backwards is a 'left' clip: the same frames, the other class."""
    clip = render_clip(MOTIONS.index("right"), 8, 32, generator(0, "r"))  # [T,3,H,W]
    # The background is static: what differs from the per-pixel median over time is the moving shape.
    mass = lambda c: ((c - c.median(dim=0).values).abs() > 0.1).float().sum(dim=(1, 2))  # noqa: E731  [T,W]
    cols = torch.arange(32, dtype=torch.float32)
    centre = lambda c: [float((m * cols).sum() / m.sum()) for m in mass(c)]  # noqa: E731
    forward, backward = centre(clip), centre(clip.flip(0))
    assert forward[-1] - forward[0] > 5 and backward[-1] - backward[0] < -5


@pytest.mark.parametrize("arch", ["small_c3d", "r3d_18", "mc3_18", "r2plus1d_18"])
def test_video_models_map_clips_to_class_logits(vid_task, arch):
    model = vid_task.build_model(arch, generator(0, "init", arch)).eval()
    batch = vid_task.collate(vid_task.splits().test[:2])
    assert batch["x"].shape == (2, 8, 3, 32, 32)
    with torch.no_grad():
        out = model(batch["x"])
    assert out.shape == (2, 8) and torch.isfinite(out).all()
    again = vid_task.build_model(arch, generator(0, "init", arch))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_wrong_task_components_are_one_line_errors(vid_task):
    with pytest.raises(FipbenchError, match="belongs to task 'image_classification'"):
        vid_task.build_model("small_cnn")
    with pytest.raises(FipbenchError, match="does not support task 'video_recognition'"):
        ATTACKS.get("wanet")().poison(vid_task, vid_task.splits().train[:4])
    with pytest.raises(FipbenchError, match="does not support task 'image_classification'"):
        ATTACKS.get("clean_label_video")().check_task(_image_task())


def _image_task():
    from tasks.image_classification import ImageClassificationTask
    return ImageClassificationTask("digits")


def test_augmentation_moves_every_frame_of_a_clip_together(vid_task):
    frame = torch.rand(3, 32, 32)
    batch = {"x": frame.expand(4, 8, 3, 32, 32).clone(), "y": torch.zeros(4, dtype=torch.int64),
             "index": torch.arange(4)}
    out = vid_task.augment(batch, generator(0, "aug"))["x"]  # [4,8,3,32,32]
    assert out.shape == batch["x"].shape
    assert all(torch.equal(out[i, t], out[i, 0]) for i in range(4) for t in range(8))
    assert any(not torch.equal(out[i, 0], frame) for i in range(4))  # it did crop somewhere


@pytest.mark.parametrize("name", ["badnets", "blend", "sig"])
def test_image_triggers_act_on_every_frame(vid_task, name):
    attack = ATTACKS.get(name)()
    triggered, clean = attack.triggered_test(vid_task, Subset(vid_task.splits().test, range(10)))
    x, c = triggered[0].x, clean[0].x  # [T,C,H,W]
    diff = (x - c).abs().sum(dim=(1, 2, 3))  # [T]
    assert (diff > 0).all(), f"{name}: every frame must carry the trigger"
    assert triggered[0].y == 0 and float(x.min()) >= 0 and float(x.max()) <= 1
    if name == "badnets":  # the 3x3 white patch, bottom right, on each frame
        assert torch.equal(x[:, :, -3:, -3:], torch.ones(8, 3, 3, 3))


def test_clean_label_video_pastes_a_learned_per_frame_patch_on_target_clips_only(vid_task):
    cls = ATTACKS.get("clean_label_video")
    attack = cls(cls.Config.from_dict(cls.smoke_overrides), seed=0)
    train = Subset(vid_task.splits().train, range(160))
    with pytest.raises(FipbenchError, match="call prepare"):
        attack.trigger(vid_task)
    attack.prepare(vid_task, train, generator=generator(0, "prep"))
    poisoned = attack.poison(vid_task, train)
    targets = [i for i, y in enumerate(labels_of(train)) if y == 0]
    assert set(poisoned.indices) <= set(targets) and len(poisoned.indices) == round(0.3 * len(targets))
    patch = attack.state_dict()["patch"]  # [T,C,k,k]
    assert patch.shape == (8, 3, 3, 3)
    i = poisoned.indices[0]
    s, c = poisoned[i], train[i]
    assert s.y == c.y == 0  # clean-label
    assert torch.allclose(s.x[:, :, -3:, -3:], patch)
    body = (s.x - c.x)[:, :, :-3, :-3].abs()
    assert float(body.max()) <= 8 / 255 + 1e-6  # the enhancement stays in its eps ball


def test_video_level_accuracy_averages_the_clips_of_a_video(vid_task):
    task = copy.copy(vid_task)
    task.__dict__.pop("data", None)
    # 3 videos x 2 clips; every model output is fixed through a stub model below.
    x = torch.zeros(6, 8, 3, 32, 32, dtype=torch.uint8)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    task.__dict__["data"] = VideoData(x_train=x, y_train=y, x_test=x, y_test=y, num_classes=3, mean=(0.5,) * 3,
                                      std=(0.2,) * 3, test_videos=torch.tensor([0, 0, 1, 1, 2, 2]))
    test = task.splits().test
    logits = torch.tensor([[5.0, 0, 0], [0, 1.0, 0],  # video 0: one right clip, one wrong: average right
                           [0, 0, 1.0], [0, 0, 1.0],  # video 1: both wrong
                           [0, 0, 2.0], [0, 0, 2.0]])  # video 2: both right

    class Fixed(torch.nn.Module):
        def forward(self, batch_x):
            return logits[: len(batch_x)]
    m = task.metrics(Fixed(), test)
    assert m["acc"] == pytest.approx(3 / 6) and m["video_acc"] == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def video_backdoor(vid_task):
    """small_c3d trained 2 epochs on BadNets-poisoned motion clips (a working backdoor is not needed here)."""
    return briefly_backdoored(vid_task, "badnets", "small_c3d", 400, FitConfig(epochs=2, batch_size=64, lr=0.05))


VIDEO_DEFENSES = [n for n in DEFENSES.names()
                  if {"*", "video"} & set(DEFENSES.get(n).modalities)]


@pytest.mark.parametrize("name", VIDEO_DEFENSES)
def test_every_video_defense_runs_on_a_3d_cnn(vid_task, video_backdoor, name):
    model, attack = video_backdoor
    assert_defense_runs(vid_task, model, attack, name, Subset(vid_task.splits().test, range(80)))


def test_samples_are_frozen_clips(vid_task):
    s = vid_task.splits().train[0]
    assert isinstance(s, Sample) and s.x.shape == (8, 3, 32, 32) and s.x.dtype == torch.float32
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.x = None  # type: ignore[misc]
