"""Result records, the artifact cache and resume: schema round-trip, corrupt files, safe checkpoint loading,
and a run killed with SIGKILL that finishes on the next invocation without recomputing finished cells."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _helpers import tiny_matrix
from torch import nn

from benchmark._schema import SCHEMA_VERSION, check_record
from benchmark.cache import ArtifactCache, load_weights
from benchmark.cli import main
from benchmark.errors import FipbenchError
from benchmark.store import ResultStore

TINY = tiny_matrix("[badnets]", "[none, {name: finetune, config: {fit: {steps: 2}}}]")

# Four cells, two artifacts; the finetune cells take long enough (a few seconds) for a kill to land mid-run.
KILLABLE = tiny_matrix("[badnets, blend]", "[none, {name: finetune, config: {fit: {steps: 60}}}]",
                       name="killable")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(results dir, cache dir, argv) of one finished tiny run."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "tiny.yaml").write_text(TINY)
    argv = ["run", str(root / "tiny.yaml"), "--results", str(root / "results"), "--cache", str(root / "cache")]
    assert main(argv) == 0
    return root / "results", root / "cache", argv


def _records(results: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((results / "records").glob("*.json"))}


# -- records -------------------------------------------------------------------------------------------------
def test_cached_cells_made_on_another_device_are_named_and_kept(tiny_run):
    """A cell id names what was run, not where: a run on another kind of device keeps the stored records (nothing
    is recomputed) and says how many were made elsewhere."""
    from benchmark.runner import Runner
    from benchmark.spec import load_matrix

    results, cache, argv = tiny_run
    cells = load_matrix(Path(argv[1])).cells
    before = _records(results)
    for device, expected in (("cuda", "note: 2 of them were made on cpu, not cuda"), ("cpu", None)):
        logs: list[str] = []
        Runner(results, cache, device=device, log=logs.append).run(cells)  # every cell cached: nothing runs
        notes = [line.strip() for line in logs if "note:" in line]
        assert (notes[0].startswith(expected) and len(notes) == 1) if expected else not notes
    assert _records(results) == before


def test_record_round_trips_through_json(tiny_run):
    results, _, _ = tiny_run
    store = ResultStore(results)
    recs = store.all()
    assert len(recs) == 2
    for rec in recs:
        assert rec["schema_version"] == SCHEMA_VERSION
        again = check_record(json.loads(json.dumps(rec)))
        assert again == rec
        assert store.get(rec["cell_id"]) == rec
    assert not list((results / "records").glob(".*.tmp"))  # atomic writes leave no temp files


def test_records_name_what_decides_rounding(tiny_run):
    # A model re-trained on another host drifts (README, "Same machine, same numbers"): records say which CPU,
    # which of torch's kernel ISAs and how many threads made them, and old records without those still load.
    results, _, _ = tiny_run
    for rec in ResultStore(results).all():
        env = rec["environment"]
        assert env["cpu"] and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert isinstance(env["threads"], int) and env["threads"] >= 1
        old = copy.deepcopy(rec)
        for key in ("cpu", "cpu_capability", "threads"):
            old["environment"].pop(key)
        assert check_record(old) == old


@pytest.mark.parametrize("mutate, fragment", [
    (lambda r: r.pop("metrics"), "lacks metrics"),
    (lambda r: r.update(schema_version=SCHEMA_VERSION + 1), "schema_version"),
    (lambda r: r["spec"].pop("seed"), "spec lacks seed"),
    (lambda r: r.update(metrics=None), "needs metrics"),
])
def test_check_record_names_the_bad_field(tiny_run, mutate, fragment):
    rec = copy.deepcopy(ResultStore(tiny_run[0]).all()[0])
    mutate(rec)
    with pytest.raises(ValueError, match=fragment):
        check_record(rec)


def _edit_asr(text: str) -> str:
    rec = json.loads(text)
    rec["metrics"]["asr"] = 0.0  # valid JSON, valid schema, but not what was measured
    return json.dumps(rec)


@pytest.mark.parametrize("damage, fragment", [
    (lambda text: '{"schema_version": 1, "cell_id": ', "invalid record"),  # a torn write
    (_edit_asr, "does not match its digest"),  # an edited number
])
def test_corrupt_record_is_recomputed(tiny_run, capsys, damage, fragment):
    results, _, argv = tiny_run
    before = _records(results)
    victim = sorted(before)[0]
    (results / "records" / victim).write_text(damage(before[victim]))
    assert main(argv) == 0
    assert fragment in capsys.readouterr().err
    after = _records(results)
    assert set(after) == set(before)
    assert check_record(json.loads(after[victim]))["cell_id"] + ".json" == victim
    for name in before:
        if name != victim:
            assert after[name] == before[name]  # the others were not recomputed


# -- artifacts -----------------------------------------------------------------------------------------------
def test_corrupt_artifact_is_rebuilt_not_trusted(tiny_run, capsys):
    results, cache, argv = tiny_run
    (art,) = [d for d in cache.iterdir() if d.is_dir() and not d.name.startswith(".")]
    manifest = json.loads((art / "manifest.json").read_text())
    weights = art / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x00" * 8  # flip the last weights
    weights.write_bytes(bytes(data))
    for p in (results / "records").glob("*.json"):
        p.unlink()
    assert main(argv) == 0
    assert "corrupt" in capsys.readouterr().err
    rebuilt = json.loads((art / "manifest.json").read_text())
    from benchmark._io import sha256_file

    assert sha256_file(weights) == rebuilt["weights_sha256"]
    assert rebuilt["poisoned_index_hash"] == manifest["poisoned_index_hash"]
    assert rebuilt["weights_sha256"] == manifest["weights_sha256"]  # same seed, same CPU → same weights


def test_artifact_cache_round_trip(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    cache = ArtifactCache(tmp_path)
    cache.save("k", model, {"artifact_key": "k"})
    fresh = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    manifest = cache.load("k", fresh)
    assert manifest is not None and manifest["artifact_key"] == "k"
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert cache.load("missing", fresh) is None


# -- safe checkpoint loading ---------------------------------------------------------------------------------
class _Payload:
    """Anything that is not a tensor: unpickling it would run arbitrary code in a hostile file."""


def test_pickle_checkpoint_is_refused(tmp_path):
    model = nn.Linear(3, 2)
    path = tmp_path / "model.pt"
    torch.save({"weight": model.weight.data, "bias": model.bias.data, "extra": _Payload()}, path)
    with pytest.raises(FipbenchError, match="refusing to unpickle"):
        load_weights(nn.Linear(3, 2), path)


def test_weights_only_state_dict_loads(tmp_path):
    model = nn.Linear(3, 2)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    fresh = nn.Linear(3, 2)
    load_weights(fresh, path)
    assert torch.equal(fresh.weight, model.weight)


def test_checkpoint_for_another_model_is_a_one_line_error(tmp_path):
    from safetensors.torch import save_model

    path = tmp_path / "model.safetensors"
    save_model(nn.Linear(3, 2), str(path))
    with pytest.raises(FipbenchError, match="does not fit model") as err:
        load_weights(nn.Linear(5, 2), path)
    assert "\n" not in str(err.value)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FipbenchError, match="not a valid safetensors file"):
        load_weights(nn.Linear(3, 2), tmp_path / "bad.safetensors")


# -- resume --------------------------------------------------------------------------------------------------
def _default_sigint() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and Python keeps an ignored
    # SIGINT ignored: the child would never see the Ctrl-C this test sends when the suite itself runs in the
    # background (`bash .ci/run &`).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(cfg: Path, results: Path, cache: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmark.cli", "run", str(cfg), "--results", str(results),
                             "--cache", str(cache), "--threads", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


# SIGINT (Ctrl-C) here; SIGKILL at random moments, several times, in test_repeated_random_sigkills_lose_nothing.
@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_killed_run_resumes_without_recomputing(tmp_path, subprocess_env, sig):
    cfg = tmp_path / "killable.yaml"
    cfg.write_text(KILLABLE)
    results, cache = tmp_path / "results", tmp_path / "cache"
    proc = _spawn(cfg, results, cache, subprocess_env)
    deadline = time.monotonic() + 300
    while not list((results / "records").glob("*.json")) and time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be interrupted: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.send_signal(sig)  # at least one cell finished; another is mid-way
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "run the same command again to resume" in err, err[-2000:]
    finished = _records(results)
    assert 1 <= len(finished) < 4
    for text in finished.values():
        check_record(json.loads(text))  # nothing torn
    assert not list((results / "records").glob(".*"))

    # The rerun completes the matrix and leaves every finished record byte-identical (not recomputed).
    proc = _spawn(cfg, results, cache, subprocess_env)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    after = _records(results)
    assert len(after) == 4
    for name, text in finished.items():
        assert after[name] == text
    artifacts = [d for d in cache.iterdir() if not d.name.startswith(".")]  # a kill mid-save leaves a dot-dir
    assert len(artifacts) == 2
    assert (results / "leaderboard.md").is_file()


def test_same_seed_gives_identical_metrics(tiny_run, tmp_path):
    """A second run from scratch (fresh cache and results) reproduces every metric exactly on CPU."""
    results, _, _ = tiny_run
    (tmp_path / "tiny.yaml").write_text(TINY)
    assert main(["run", str(tmp_path / "tiny.yaml"), "--results", str(tmp_path / "r"),
                 "--cache", str(tmp_path / "c")]) == 0
    first = {r["cell_id"]: r["metrics"] for r in ResultStore(results).all()}
    second = {r["cell_id"]: r["metrics"] for r in ResultStore(tmp_path / "r").all()}
    assert first == second


if os.name != "posix":  # SIGKILL semantics
    pytestmark = pytest.mark.skip("POSIX only")


def test_repeated_random_sigkills_lose_nothing(tmp_path, subprocess_env):
    """SIGKILL the run at random moments, several times: every record on disk stays valid and byte-identical
    across later kills, and the final rerun completes the matrix with exactly the numbers of a run that was
    never interrupted (same seeds, same thread count)."""
    import random

    cfg = tmp_path / "killable.yaml"
    cfg.write_text(KILLABLE)
    results, cache = tmp_path / "results", tmp_path / "cache"
    rng = random.Random(0)
    kept: dict[str, str] = {}
    kills = 0
    for _ in range(5):
        proc = _spawn(cfg, results, cache, subprocess_env)
        try:
            proc.wait(timeout=rng.uniform(2.0, 9.0))  # import + data take ~3 s; a cell ~1-5 s
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            kills += 1
        else:
            proc.communicate()
            break
        now = _records(results)
        for name, text in kept.items():
            assert now[name] == text, f"{name} changed after a kill"
        store = ResultStore(results)
        assert all(store.get(Path(name).stem) is not None for name in now), "a torn or invalid record"
        kept = now
    assert kills >= 2, "the kills should land mid-run"
    proc = _spawn(cfg, results, cache, subprocess_env)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    final = _records(results)
    assert len(final) == 4 and all(final[name] == text for name, text in kept.items())
    artifacts = [d for d in cache.iterdir() if not d.name.startswith(".")]  # a kill mid-save leaves a dot-dir
    assert len(artifacts) == 2 and (results / "leaderboard.md").is_file()

    clean = tmp_path / "clean"
    proc = _spawn(cfg, clean / "results", clean / "cache", subprocess_env)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    metrics = lambda root: {r["cell_id"]: r["metrics"] for r in ResultStore(root).all()}  # noqa: E731
    assert metrics(results) == metrics(clean / "results")


def test_a_defense_that_does_not_fit_the_model_is_a_skipped_record(tiny_run, tmp_path, monkeypatch, capsys):
    """NotApplicable from a defense (Fine-Pruning on a ViT, ANP on SSD) and from the sharpness figures (a model
    without second derivatives) is recorded, with its reason, and the run goes on to the next cell."""
    from benchmark.errors import NotApplicable
    from benchmark.registries import DEFENSES
    from defenses import fisher

    def no_fit(self, *a, **k):
        raise NotApplicable("clp needs convolutions followed by BatchNorm; this model has none")

    def no_second_order(*a, **k):
        with fisher.second_order("the sharpness figures"):
            raise RuntimeError("derivative for aten::hardsigmoid_backward is not implemented")

    monkeypatch.setattr(DEFENSES.get("clp"), "purify", no_fit)
    monkeypatch.setattr(fisher, "sharpness", no_second_order)
    _, cache, _ = tiny_run
    (tmp_path / "m.yaml").write_text(tiny_matrix("[badnets]", "[clp, {name: finetune, config: {fit: {steps: 2}}}]"))
    # a fresh cache: the backdoored model's own sharpness is measured (and found missing) too
    assert main(["run", str(tmp_path / "m.yaml"), "--results", str(tmp_path / "r"),
                 "--cache", str(tmp_path / "c")]) == 0
    recs = {r["spec"]["defense"]: r for r in ResultStore(tmp_path / "r").all()}
    assert recs["clp"]["status"] == "skipped" and "followed by BatchNorm" in recs["clp"]["reason"]
    ft = recs["finetune"]
    assert ft["status"] == "ok"
    assert ft["metrics"]["sharpness_before"] is None and ft["metrics"]["sharpness_after"] is None
    assert "no sharpness figures: the sharpness figures cannot run: it needs second derivatives" in \
        capsys.readouterr().out
