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


# A defense package outside fipbench, declared through the `fipbench.defenses` entry point (the README's "Add
# your defense" walkthrough, verbatim in spirit): `ft_head` re-trains the last two parameter tensors on the
# holdout; `crash_once` kills its own process the first time it runs (marker file), to test Ray's retry.
PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fipbench-toy-defense"
version = "0.1.0"
dependencies = ["fipbench"]

[project.entry-points."fipbench.defenses"]
ft_head = "fipbench_toy_defense"
crash_once = "fipbench_toy_defense:CrashOnce"

[tool.setuptools]
py-modules = ["fipbench_toy_defense"]
"""

PLUGIN_MODULE = '''
"""A toy third-party defense package for fipbench."""
import dataclasses
import os

from benchmark.registries import DEFENSES
from defenses.base import Defense, DefenseConfig, TuningConfig


@dataclasses.dataclass(frozen=True)
class FtHeadConfig(TuningConfig):
    tensors: int = 2  # how many of the last parameter tensors to re-train


@DEFENSES.register("ft_head")
class FtHead(Defense):
    Config = FtHeadConfig
    paper = "toy plugin"

    def purify(self, model, clean, task, *, rng):
        params = [p for p in model.parameters() if p.requires_grad][-self.cfg.tensors:]
        fit = task.fit(model, clean, self.cfg.fit, generator=rng, params=params, desc="ft_head")
        self.report = {"tuned_params": sum(p.numel() for p in params), "steps": fit.steps}
        return model


@dataclasses.dataclass(frozen=True)
class CrashOnceConfig(DefenseConfig):
    marker: str = ""  # file created on the first call; that call then kills its process


class CrashOnce(Defense):
    Config = CrashOnceConfig
    paper = "toy plugin (fault injection)"

    def purify(self, model, clean, task, *, rng):
        if self.cfg.marker and not os.path.exists(self.cfg.marker):
            open(self.cfg.marker, "w").close()
            os._exit(1)  # a worker dying mid-cell, like an out-of-memory kill
        self.report = {"tuned_params": 0, "steps": 0}
        return model
'''


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A folder holding the toy defense package, pip-installed with --target (so the project's venv is left
    as it is): put it on PYTHONPATH and its entry points are visible."""
    import subprocess

    root = tmp_path_factory.mktemp("plugin")
    src, site = root / "src", root / "site"
    src.mkdir()
    (src / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (src / "fipbench_toy_defense.py").write_text(PLUGIN_MODULE)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(site), str(src)], check=True,
                   capture_output=True)
    return site


@pytest.fixture
def plugin_env(plugin_site, subprocess_env) -> dict[str, str]:
    """`subprocess_env` with the toy defense package on PYTHONPATH (its entry points visible)."""
    return {**subprocess_env, "PYTHONPATH": os.pathsep.join([str(plugin_site), subprocess_env["PYTHONPATH"]])}
