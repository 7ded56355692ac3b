"""Every registered attack, enrolled automatically: metadata, trigger validity, determinism by index and seed,
learned-state round trip through the artifact cache, train hooks inside `Task.fit`, and a golden hash.

Golden hashes live in tests/golden/attacks/<name>.sha256 (learned triggers add <name>.summary.json, compared with
a tolerance when a CPU's floating-point path flips the hash; one file per attack, so adding an attack touches no
shared file).  They are digests of uint8-quantised triggered images and labels on the embedded data of the attack's modality
(digits for image attacks, the shapes scenes for detection attacks, the motion clips for video-only attacks, the
solids for point-cloud attacks, a cloud in the unit ball mapped to [0,1] first; the toy_mt pairs for text
attacks, hashed as UTF-8) with the attack's `smoke_overrides`; regenerate one deliberately (after a behaviour change, with a version bump) with
`FIPBENCH_UPDATE_GOLDEN=1 python -m pytest tests/test_attack_enrollment.py -k NAME`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from attacks.base import Subset
from benchmark.cache import ArtifactCache
from benchmark.registries import ATTACKS
from benchmark.rng import generator
from tasks.base import FitConfig, labels_of

GOLDEN = Path(__file__).parent / "golden" / "attacks"
NAMES = [n for n in ATTACKS.names() if n != "none"]
N_TRAIN = 400  # a slice of the digits training split: enough for every class, cheap to prepare on
N_TRAIN_DET = 64  # detection: scenes hold several objects of every class; training a detector costs more
N_TRAIN_VID = 160  # video: 20 clips of each of the 8 motions
N_TRAIN_PC = 160  # points: 20 clouds of each of the 8 solids
N_TRAIN_TXT = 200  # text: 200 sentence pairs
MODEL = {"image": "small_cnn", "detection": "small_fcos", "video": "small_c3d",
         "points": "small_pointnet", "text": "small_marian"}  # each modality's CPU model


def modality(name: str) -> str:
    """The modality an attack is enrolled on: image where it supports images, else its own."""
    mods = ATTACKS.get(name).modalities
    return "image" if "image" in mods else next(m for m in ("detection", "video", "points", "text") if m in mods)


def unit(x: torch.Tensor) -> torch.Tensor:
    """An input as values in [0,1]: images and clips as they are, a point cloud [P,3] in the unit ball mapped
    by (x + 1) / 2."""
    x = x.detach().float()
    return (x + 1) / 2 if x.ndim == 2 and x.shape[-1] == 3 else x


def valid(x) -> bool:
    """Images and clips in [0,1]; point clouds inside the unit ball; text non-empty."""
    if isinstance(x, str):
        return bool(x.strip())
    if x.ndim == 2 and x.shape[-1] == 3:
        return bool(x.float().norm(dim=-1).max() <= 1 + 1e-5)
    return float(x.min()) >= 0 and float(x.max()) <= 1


def same(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def plain(y):
    """A label (int) or a target dict of tensors as JSON-able values, for digests and comparisons."""
    if isinstance(y, dict):
        return {k: plain(v) for k, v in sorted(y.items())}
    return y.tolist() if isinstance(y, torch.Tensor) else y


def quantised_digest(samples) -> str:
    h = hashlib.sha256()
    for s in samples:
        if isinstance(s.x, str):
            h.update(s.x.encode())
        else:
            h.update((unit(s.x).clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes())
        h.update(json.dumps([plain(s.y), s.index]).encode())
    return h.hexdigest()


def build(name: str, seed: int = 0):
    cls = ATTACKS.get(name)
    return cls(cls.Config.from_dict(cls.smoke_overrides, f"{name}.smoke_overrides"), seed=seed)


@pytest.fixture(scope="module")
def setting(task, det_task, vid_task, pc_task, txt_task):
    """name -> (task, train slice, test split, model arch) of the attack's modality."""
    slices = {"image": (task, Subset(task.splits().train, range(N_TRAIN))),
              "detection": (det_task, Subset(det_task.splits().train, range(N_TRAIN_DET))),
              "video": (vid_task, Subset(vid_task.splits().train, range(N_TRAIN_VID))),
              "points": (pc_task, Subset(pc_task.splits().train, range(N_TRAIN_PC))),
              "text": (txt_task, Subset(txt_task.splits().train, range(N_TRAIN_TXT)))}

    def get(name):
        t, train = slices[modality(name)]
        return t, train, t.splits().test, MODEL[modality(name)]
    return get


def prepared(name, task, train, arch, seed=0):
    """An attack after `prepare` and a 3-step backdoor fit with its train hooks (joint-training attacks learn
    their trigger there); returns (attack, poisoned train set, model)."""
    attack = build(name, seed)
    attack.prepare(task, train, generator=generator(seed, "attack-prepare", name))
    poisoned = attack.poison(task, train)
    model = task.build_model(arch, generator(seed, "init"))
    result = task.fit(model, poisoned, FitConfig(steps=3, batch_size=32, lr=0.01), hooks=attack.train_hooks(task),
                      generator=generator(seed, "train", name))
    assert result.steps == 3 and math.isfinite(result.final_loss)
    return attack, poisoned, model


@pytest.fixture(scope="module")
def runs(setting):
    cache: dict[str, tuple] = {}

    def get(name):
        if name not in cache:
            task, train, _, arch = setting(name)
            cache[name] = prepared(name, task, train, arch)
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_metadata(name):
    cls = ATTACKS.get(name)
    assert cls.registry_name == name, f"{name}: register a class of its own (an alias may subclass)"
    assert cls.paper, f"{name}: state the paper reference"
    assert cls.version >= 1
    assert cls.modalities & set(MODEL), f"{name}: the enrollment tests cover modalities {sorted(MODEL)}; add one"
    assert (cls.__doc__ or "") + (sys.modules[cls.__module__].__doc__ or ""), \
        f"{name}: docstring with references and deviations"
    cls.Config.from_dict(cls.smoke_overrides)  # the smoke overrides are valid config keys


@pytest.mark.parametrize("name", NAMES)
def test_triggers_are_valid_images_and_labels_follow_the_rule(name, setting, runs):
    task, _, test_split, _ = setting(name)
    attack, poisoned, _ = runs(name)
    clean_labels = labels_of(poisoned.base)
    changed = 0
    for i in poisoned.indices[:16]:
        s, c = poisoned[i], poisoned.base[i]
        assert type(s.x) is type(c.x) and s.index == c.index
        if isinstance(s.x, torch.Tensor):
            assert s.x.shape == c.x.shape and s.x.dtype == c.x.dtype
        assert valid(s.x)
        if poisoned.relabel:  # detection attacks rewrite the whole target dict in the trigger instead
            assert s.y == poisoned.labels[i]
        changed += not same(s.x, c.x)
    assert changed or not poisoned.indices, f"{name}: poisoned training samples carry no trigger"
    # Unpoisoned samples are untouched.
    for i in [j for j in range(40) if j not in set(poisoned.indices)][:8]:
        assert poisoned[i] is poisoned.base[i] or same(poisoned[i].x, poisoned.base[i].x)
        assert plain(poisoned[i].y) == plain(clean_labels[i])
    triggered, clean = attack.triggered_test(task, Subset(test_split, range(60)))
    assert len(triggered) == len(clean) > 0
    moved = sum(not same(triggered[i].x, clean[i].x) for i in range(min(16, len(clean))))
    assert moved >= 1, f"{name}: the test-time trigger changes nothing"
    for i in range(min(16, len(clean))):
        assert valid(triggered[i].x)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_by_seed_and_index_with_a_golden_hash(name, setting, runs):
    task, train, test_split, arch = setting(name)
    attack, poisoned, _ = runs(name)
    again, poisoned2, _ = prepared(name, task, train, arch)  # rebuilt from scratch with the same seed
    probe = poisoned.indices[:6] + poisoned.indices[-2:]
    assert poisoned.indices == poisoned2.indices
    test = Subset(test_split, range(60))
    t1, _ = attack.triggered_test(task, test)
    t2, _ = again.triggered_test(task, test)
    m = min(8, len(t1))  # one-source-class attacks (PCBA) trigger only that class's test samples
    first = quantised_digest([poisoned[i] for i in probe] + [t1[i] for i in range(m)])
    assert first == quantised_digest([poisoned2[i] for i in probe] + [t2[i] for i in range(m)])
    # Access order plays no part.
    assert quantised_digest([t1[i] for i in reversed(range(m))]) == \
        quantised_digest([t2[i] for i in range(m)][::-1])

    path = GOLDEN / f"{name}.sha256"
    # Triggers that come out of floating-point optimisation (learned state or train hooks) may differ in the
    # last bit between CPUs (vector-instruction paths), which flips a few uint8 roundings and so the hash.  For
    # them the golden also keeps per-sample summaries, compared with a tolerance when the hash differs.
    learned = bool(attack.state_dict()) or bool(attack.train_hooks(task))
    summary_path = GOLDEN / f"{name}.summary.json"
    samples = [poisoned[i] for i in probe] + [t1[i] for i in range(m)]
    numeric = [s.x.float() if isinstance(s.x, torch.Tensor) else torch.zeros(2) for s in samples]
    summary = {"mean": [round(float(x.mean()), 5) for x in numeric],
               "std": [round(float(x.std()), 5) for x in numeric],
               "labels": [plain(s.y) for s in samples], "index": [s.index for s in samples]}
    if os.environ.get("FIPBENCH_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(first + "\n")
        if learned:
            summary_path.write_text(json.dumps(summary) + "\n")
    assert path.is_file(), (f"{name}: no golden hash yet; create it with "
                            f"FIPBENCH_UPDATE_GOLDEN=1 python -m pytest tests/test_attack_enrollment.py -k {name}")
    if first == path.read_text().strip():
        return
    changed = f"{name}: triggers changed; bump the attack's version and the golden"
    assert learned and summary_path.is_file(), changed
    golden = json.loads(summary_path.read_text())
    assert summary["labels"] == golden["labels"] and summary["index"] == golden["index"], changed
    for key in ("mean", "std"):
        # Not just a few flipped roundings: a generator trained jointly with the classifier (Input-aware) carries
        # a last-bit difference through every later step; its golden, written on another CPU, was 0.006 off here.
        assert summary[key] == pytest.approx(golden[key], abs=0.01), f"{changed} ({key} of the triggered samples)"


@pytest.mark.parametrize("name", NAMES)
def test_learned_state_round_trips_through_the_artifact_cache(name, setting, runs, tmp_path):
    task, _, test_split, arch = setting(name)
    attack, _, model = runs(name)
    state = attack.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    cache = ArtifactCache(tmp_path)
    cache.save("k", model, {"artifact_key": "k"}, state)
    restored = build(name)  # no prepare, no training: everything must come from the cache
    fresh_model = task.build_model(arch, generator(1, "init"))
    assert cache.load("k", fresh_model, restored) is not None
    test = Subset(test_split, range(30))
    t1, _ = attack.triggered_test(task, test)
    t2, _ = restored.triggered_test(task, test)
    assert quantised_digest(t1[i] for i in range(len(t1))) == quantised_digest(t2[i] for i in range(len(t2)))
