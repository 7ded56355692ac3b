"""The CUDA path, on a machine with a GPU (skipped where torch sees none, e.g. in CI): every registered attack
prepares, poisons and trains with its hooks on a CUDA task of its modality; every defense purifies a CUDA model of
every modality it declares and returns it on the GPU with finite metrics; FIP's pieces (trace term, diagonal
Fisher, Fast FIP's exact spectral start and fold-back) agree with the CPU computation; and Faster R-CNN's
second-order RoIAlign swap works on CUDA tensors.  `pytest tests/test_cuda.py` on a GPU machine runs it."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from attacks.base import Subset
from benchmark.registries import ATTACKS, DEFENSES
from benchmark.rng import generator
from _helpers import assert_defense_runs
from tasks.base import FitConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

MODEL = {"image": "small_cnn", "detection": "small_fcos", "video": "small_c3d",
         "points": "small_pointnet", "text": "small_marian"}
BACKDOOR = {"image": "badnets", "detection": "baddet_gma", "video": "badnets", "points": "pointba_i",
            "text": "trigger_words"}  # a plain poison-label attack per modality
N_TRAIN = {"image": 400, "detection": 64, "video": 160, "points": 160, "text": 200}


def _task(modality: str, device: str):
    from tasks.image_classification import ImageClassificationConfig, ImageClassificationTask
    from tasks.language_generation import LanguageGenerationConfig, LanguageGenerationTask
    from tasks.object_detection import ObjectDetectionConfig, ObjectDetectionTask
    from tasks.point_cloud import PointCloudConfig, PointCloudTask
    from tasks.video_recognition import VideoRecognitionConfig, VideoRecognitionTask

    made = {"image": lambda: ImageClassificationTask("digits", ImageClassificationConfig(holdout_fraction=0.05),
                                                     device=device),
            "detection": lambda: ObjectDetectionTask("shapes", ObjectDetectionConfig(holdout_fraction=0.05),
                                                     device=device),
            "video": lambda: VideoRecognitionTask("motions", VideoRecognitionConfig(holdout_fraction=0.05),
                                                  device=device),
            "points": lambda: PointCloudTask("solids", PointCloudConfig(holdout_fraction=0.05), device=device),
            "text": lambda: LanguageGenerationTask("toy_mt", LanguageGenerationConfig(holdout_fraction=0.02),
                                                   device=device)}
    return made[modality]()


@pytest.fixture(scope="module")
def cuda_tasks():
    """modality -> its task on the embedded data, on the GPU (built once: the text task trains a tokenizer)."""
    return {m: _task(m, "cuda") for m in MODEL}


def _on_gpu(model: torch.nn.Module) -> bool:
    return all(t.is_cuda for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())


def _attack_modality(name: str) -> str:
    mods = ATTACKS.get(name).modalities
    return "image" if "image" in mods else next(m for m in MODEL if m in mods)


@pytest.mark.parametrize("name", [n for n in ATTACKS.names() if n != "none"])
def test_every_attack_prepares_poisons_and_trains_on_cuda(name, cuda_tasks):
    modality = _attack_modality(name)
    task = cuda_tasks[modality]
    cls = ATTACKS.get(name)
    attack = cls(cls.Config.from_dict(cls.smoke_overrides, f"{name}.smoke_overrides"), seed=0)
    train = Subset(task.splits().train, range(N_TRAIN[modality]))
    attack.prepare(task, train, generator=generator(0, "attack-prepare", name))
    poisoned = attack.poison(task, train)
    model = task.build_model(MODEL[modality], generator(0, "init"))
    fit = task.fit(model, poisoned, FitConfig(steps=3, batch_size=32, lr=0.01), hooks=attack.train_hooks(task),
                   generator=generator(0, "train", name))
    assert fit.steps == 3 and math.isfinite(fit.final_loss) and _on_gpu(model)
    test = Subset(task.splits().test, range(40))
    triggered, clean = attack.triggered_test(task, test)
    assert math.isfinite(task.metrics(model.eval(), test)[task.metric_name])
    if len(triggered):
        assert math.isfinite(task.backdoor_metrics(model, triggered, clean)["asr"])


@pytest.fixture(scope="module")
def cuda_backdoors(cuda_tasks):
    """modality -> (model on the GPU, attack): its CPU model fitted 2 epochs on a slice poisoned by its BACKDOOR
    attack; enough for a defense to run on, not a working backdoor."""
    out = {}
    for modality, task in cuda_tasks.items():
        attack = ATTACKS.get(BACKDOOR[modality])()
        train = Subset(task.splits().train, range(N_TRAIN[modality]))
        model = task.build_model(MODEL[modality], generator(0, "init"))
        task.fit(model, attack.poison(task, train), FitConfig(epochs=2, batch_size=32, lr=0.02),
                 generator=generator(0, "train"))
        out[modality] = (model.eval(), attack)
    return out


PAIRS = [(d, m) for d in DEFENSES.names() for m in MODEL if {"*", m} & set(DEFENSES.get(d).modalities)]


@pytest.mark.parametrize(("name", "modality"), PAIRS)
def test_every_defense_purifies_on_cuda_and_stays_there(name, modality, cuda_tasks, cuda_backdoors):
    task = cuda_tasks[modality]
    model, attack = cuda_backdoors[modality]
    assert_defense_runs(task, model, attack, name, Subset(task.splits().test, range(40)))
    cls = DEFENSES.get(name)
    out = cls(cls.Config.from_dict(cls.smoke_overrides)).purify(copy.deepcopy(model), task.splits().holdout,
                                                                 task, rng=generator(0, "defense", name))
    assert _on_gpu(out)


def _small_net() -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.double()


def test_fip_terms_on_cuda_match_the_cpu():
    from defenses.fisher import diagonal_fisher, trace_term
    from tasks.base import Sample

    cpu_task, gpu_task = _task("image", "cpu"), _task("image", "cuda")
    g = torch.Generator().manual_seed(1)
    samples = [Sample(x=torch.rand(1, 8, 8, generator=g, dtype=torch.float64), y=i % 10, index=i)
               for i in range(24)]
    batch = cpu_task.collate(samples)
    values = {}
    for name, task in (("cpu", cpu_task), ("cuda", gpu_task)):
        net = _small_net().to(task.device)
        params = list(net.parameters())
        t = trace_term(net, task.to_device(batch), task, params)
        fisher = diagonal_fisher(net, samples, task, params)
        values[name] = (t.detach().cpu(), [f.detach().cpu() for f in fisher])
    torch.testing.assert_close(values["cuda"][0], values["cpu"][0], rtol=1e-9, atol=1e-12)
    for a, b in zip(values["cuda"][1], values["cpu"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("factorized", [False, True])
def test_fast_fip_starts_exactly_and_folds_back_on_cuda(cuda_tasks, cuda_backdoors, factorized):
    from defenses import _spectral

    task = cuda_tasks["image"]
    model = copy.deepcopy(cuda_backdoors["image"][0])
    x = task.to_device(task.collate([task.splits().test[i] for i in range(32)]))["x"]
    with torch.no_grad():
        before = model(x)
    deltas = _spectral.apply_spectral(model, factorized=factorized)
    assert any(map(_spectral.is_factorized, model.modules())) == factorized
    assert deltas and all(d.is_cuda and float(d.detach().abs().max()) == 0.0 for d in deltas)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)  # cuSOLVER's SVD, fp32
        for d in deltas:
            d.add_(0.01)
        shifted = model(x)
    _spectral.fold(model)
    assert _on_gpu(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), shifted, rtol=1e-4, atol=1e-4)


def test_faster_rcnn_fip_step_on_cuda(cuda_tasks):
    """Faster R-CNN's pure-PyTorch RoIAlign (second-order regions only) runs on CUDA tensors: one FIP run of two
    steps on a random-init detector, weights finite and still on the GPU."""
    task = cuda_tasks["detection"]
    model = task.build_model("fasterrcnn_mobilenet_v3_large_fpn", generator(0, "init"))
    cls = DEFENSES.get("fip")
    fip = cls(cls.Config.from_dict({"fit": {"steps": 2, "batch_size": 4}, "trace_every": 1}))
    out = fip.purify(model, Subset(task.splits().holdout, range(8)), task, rng=generator(0, "fip"))
    assert _on_gpu(out) and all(torch.isfinite(p).all() for p in out.parameters())


def test_fit_seeds_dropout_on_cuda_and_restores_the_gpu_rng(cuda_tasks):
    """Task.fit's dropout masks come from the cell's generator on the GPU too (whatever the global CUDA RNG
    holds, the same seed gives the same weights), and the caller's CUDA RNG state is left as it was."""
    task = cuda_tasks["image"]
    data = Subset(task.splits().train, range(256))

    def fitted(global_seed: int) -> torch.Tensor:
        n_in = math.prod(data[0].x.shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n_in, 32), torch.nn.Dropout(0.5),
                                      torch.nn.Linear(32, 10))
        torch.manual_seed(global_seed)  # the caller's global state, CUDA's included
        state = torch.cuda.get_rng_state()
        task.fit(net, data, FitConfig(steps=8, batch_size=32, lr=0.1), generator=generator(0, "train"))
        assert torch.equal(torch.cuda.get_rng_state(), state)
        return torch.cat([p.detach().flatten() for p in net.parameters()]).cpu()

    assert torch.equal(fitted(1), fitted(2))
