"""Shared fixtures: the embedded digits task, a briefly trained BadNets-backdoored small CNN, tiny settings.

Everything here is sized for a 2-core CPU: the whole suite should stay within a few minutes.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the suite also runs without an editable install
    sys.path.insert(0, str(REPO_ROOT))

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _no_progress_bars():
    """Progress bars are a display setting; keep them off (also for subprocesses, which inherit os.environ)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FIPBENCH_PROGRESS", "0")
        yield


@pytest.fixture(scope="session")
def task():
    """The real image-classification task on the embedded digits data, 5 % defense holdout."""
    from tasks.image_classification import ImageClassificationConfig, ImageClassificationTask

    return ImageClassificationTask("digits", ImageClassificationConfig(holdout_fraction=0.05))


@pytest.fixture(scope="session")
def splits(task):
    return task.splits()


@pytest.fixture(scope="session")
def _backdoored(task, splits):
    """(model, attack): small_cnn trained 3 epochs on BadNets-poisoned digits; enough for a working backdoor."""
    from attacks.badnets import BadNets, BadNetsConfig
    from benchmark.rng import generator
    from tasks.base import FitConfig

    attack = BadNets(BadNetsConfig(), seed=0)
    poisoned = attack.poison(task, splits.train)
    model = task.build_model("small_cnn", generator(0, "init", "small_cnn"))
    task.fit(model, poisoned, FitConfig(epochs=3, batch_size=64, lr=0.05), generator=generator(0, "train"))
    model.eval()
    return model, attack


@pytest.fixture(scope="session")
def backdoor_attack(_backdoored):
    return _backdoored[1]


@pytest.fixture
def backdoored_model(_backdoored):
    """A fresh deep copy per test, so purification in one test cannot leak into another."""
    return copy.deepcopy(_backdoored[0]).eval()


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for `python -m benchmark.cli ...` subprocesses: repo importable, no progress bars."""
    env = dict(os.environ)
    env["FIPBENCH_PROGRESS"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="session")
def det_task():
    """The object-detection task on the embedded generated shapes scenes, 5 % defense holdout."""
    from tasks.object_detection import ObjectDetectionConfig, ObjectDetectionTask

    return ObjectDetectionTask("shapes", ObjectDetectionConfig(holdout_fraction=0.05))


@pytest.fixture(scope="session")
def vid_task():
    """The video-recognition task on the embedded generated motion clips, 5 % defense holdout."""
    from tasks.video_recognition import VideoRecognitionConfig, VideoRecognitionTask

    return VideoRecognitionTask("motions", VideoRecognitionConfig(holdout_fraction=0.05))


@pytest.fixture(scope="session")
def pc_task():
    """The point-cloud task on the embedded generated solids, 5 % defense holdout."""
    from tasks.point_cloud import PointCloudConfig, PointCloudTask

    return PointCloudTask("solids", PointCloudConfig(holdout_fraction=0.05))


@pytest.fixture(scope="session")
def txt_task():
    """The language-generation task on the embedded generated translation corpus, 2 % defense holdout."""
    from tasks.language_generation import LanguageGenerationConfig, LanguageGenerationTask

    return LanguageGenerationTask("toy_mt", LanguageGenerationConfig(holdout_fraction=0.02))


@pytest.fixture
def no_env_root(monkeypatch):
    """No $FIPBENCH_DATA: a loader given no root must fail, whatever the machine's environment says."""
    monkeypatch.delenv("FIPBENCH_DATA", raising=False)
