"""The matrix at the command line: --only/--skip filters, --dry-run, and the bad-input table of the README
(each mistake: exit status 2, one line naming the problem and the fix, results/ left byte-identical)."""

from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from _helpers import tiny_matrix

from benchmark.cli import main
from benchmark.plan import CellFilter, select
from benchmark.spec import load_matrix, parse_matrix
from benchmark.store import ResultStore

REPO_ROOT = Path(__file__).resolve().parents[1]

MATRIX = {"name": "m", "seeds": [0, 1], "groups": [
    {"task": "image_classification", "dataset": "digits", "model": "small_cnn",
     "attacks": ["none", "badnets", {"name": "blend", "label": "blend-soft", "config": {"alpha": 0.1}}],
     "defenses": ["none", "finetune", "fip", "fast_fip"]},
    {"task": "point_cloud", "dataset": "solids", "model": "small_pointnet",
     "attacks": ["pointba_i"], "defenses": ["none", "fip"]}]}

TINY = tiny_matrix("[badnets]", "[none, {name: finetune, label: ft2, config: {fit: {steps: 2}}}]")


@pytest.fixture(scope="module")
def cells():
    return parse_matrix(MATRIX, "m.yaml").cells


def _ids(cells) -> set[tuple[str, str, str, int]]:
    return {(c.task, c.attack.label, c.defense.label, c.seed) for c in cells}


# -- filters -------------------------------------------------------------------------------------------------
def test_only_and_skip_select_cells(cells):
    assert len(cells) == 2 * (12 + 2)
    fip = select(cells, only=["defense=fip,fast_fip"])
    assert {c.defense.name for c in fip} == {"fip", "fast_fip"} and len(fip) == 2 * (6 + 1)
    both = select(cells, only=["task=image_classification", "defense=fip", "seed=1"])  # repeated --only: and
    assert _ids(both) == {("image_classification", a, "fip", 1) for a in ("none", "badnets", "blend-soft")}
    assert len(select(cells, only=["attack=blend"])) == 8  # the registry name matches a relabelled entry
    assert len(select(cells, only=["attack=blend-*"])) == 8  # globs match labels
    assert len(select(cells, only=["point_cloud"])) == 4  # a bare pattern matches any field
    skipped = select(cells, skip=["attack=none", "task=point_cloud"])  # repeated --skip: or
    assert all(c.attack.name != "none" and c.task != "point_cloud" for c in skipped) and len(skipped) == 16
    assert select(cells, only=["defense=fip"], skip=["seed=0"]) == [
        c for c in cells if c.defense.name == "fip" and c.seed == 1]
    key = next(c for c in cells if c.attack.label == "blend-soft" and c.seed == 1).artifact_key()
    one_model = select(cells, only=[f"artifact={key}"])  # every defense cell of one backdoored model, no other
    assert _ids(one_model) == {("image_classification", "blend-soft", d, 1)
                               for d in ("none", "finetune", "fip", "fast_fip")}
    assert len(select(cells, only=[f"artifact={key[:6]}*"])) == 4


@pytest.mark.parametrize("flag, text, fragment", [
    ("only", "defence=fip", "unknown --only field 'defence'"),
    ("only", "defense=", "no pattern"),
    ("only", "defense=fpi", "matches no cell"),
    ("skip", "attack=wanet", "matches no cell"),
])
def test_bad_filters_are_one_line_errors(cells, flag, text, fragment):
    from _helpers import one_line_error

    msg = one_line_error(select, cells, **{flag: [text]})
    assert fragment in msg


def test_filter_str_round_trips():
    assert str(CellFilter.parse("defense=fip,fast_fip")) == "defense=fip,fast_fip"
    assert str(CellFilter.parse("fip")) == "fip"


def test_dry_run_reports_done_and_pending_and_runs_nothing(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    base = ["run", str(cfg), "--results", str(tmp_path / "r"), "--cache", str(tmp_path / "c"), "--no-sharpness"]
    assert main([*base, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 cells: 0 done, 2 pending; 1 backdoored model to train" in out
    assert "train" in out and "shared" in out
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()

    assert main([*base, "--only", "defense=none"]) == 0  # runs one cell and trains the artifact
    capsys.readouterr()
    assert main([*base, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    none_row = next(line for line in lines if " none " in line and "badnets" in line)
    ft_row = next(line for line in lines if " ft2 " in line)
    assert none_row.split()[:2] == ["done", "cached"] and ft_row.split()[:2] == ["pending", "cached"]
    assert lines[-1] == "2 cells: 1 done, 1 pending; 0 backdoored models to train"
    assert len(ResultStore(tmp_path / "r").all()) == 1


# -- bad input -----------------------------------------------------------------------------------------------
def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def _write_pickle_checkpoint(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Evil()}, path)


def _cifar_truncated(root: Path) -> None:
    from test_real_datasets import write_cifar

    write_cifar(root)
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:300])


def _group(dataset: str = "digits", attacks: str = "[badnets]") -> str:
    return tiny_matrix(attacks, "[none]", dataset=dataset, name="bad")


# (case, matrix YAML or None, extra argv, set-up, fragments the message must contain)
BAD_INPUT = [
    ("missing dataset root", _group("cifar10"), ["--data-root", "{tmp}/nowhere"], None,
     ["cifar-10-batches-py", "--data-root"]),
    ("truncated dataset file", _group("cifar10"), ["--data-root", "{tmp}/data"], _cifar_truncated,
     ["data_batch_2 is malformed"]),
    ("malformed YAML", "name: bad\ngroups: [\n  - task: x\n", [], None, ["malformed YAML at line"]),
    ("unknown attack, near miss", _group(attacks="[badnet]"), [], None, ["unknown attack 'badnet'",
                                                                          "did you mean 'badnets'"]),
    ("unknown config key", _group(attacks="[{name: badnets, config: {patch_sise: 3}}]"), [], None,
     ["patch_sise", "did you mean 'patch_size'"]),
    ("incompatible attack/task", _group(attacks="[trigger_words]"), [], None,
     ["attack 'trigger_words' does not support task 'image_classification'", "fipbench ls attacks"]),
    ("unknown filter field", _group(), ["--only", "defence=fip"], None, ["unknown --only field 'defence'"]),
    ("filter that matches nothing", _group(), ["--skip", "attack=wanet"], None, ["matches no cell"]),
    ("unknown executor", _group(), ["--executor", "rey"], None, ["unknown executor 'rey'", "'ray'"]),
]


@pytest.fixture
def populated_results(tmp_path):
    """A results/ folder holding one real committed record and a leaderboard, to check nothing changes."""
    results = tmp_path / "results"
    (results / "records").mkdir(parents=True)
    record = next((REPO_ROOT / "results" / "records").glob("*.json"))
    shutil.copy(record, results / "records" / record.name)
    (results / "leaderboard.md").write_text("# untouched\n")
    return results


@pytest.mark.parametrize("case, yaml_text, extra, setup, fragments", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_and_leaves_results_unchanged(tmp_path, populated_results, capsys, no_env_root,
                                                            case, yaml_text, extra, setup, fragments):
    if setup is not None:
        setup(tmp_path / "data")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    before = _tree_digest(populated_results)
    argv = ["run", str(cfg), "--results", str(populated_results), "--cache", str(tmp_path / "cache"),
            *[a.format(tmp=tmp_path) for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fipbench: error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert _tree_digest(populated_results) == before


def test_pickle_checkpoint_is_refused_at_the_cli(tmp_path, capsys):
    path = tmp_path / "model.pt"
    _write_pickle_checkpoint(path)
    assert main(["sharpness", str(path), "--dataset", "digits", "--arch", "small_cnn"]) == 2
    captured = capsys.readouterr()
    assert "refusing to unpickle" in captured.err and "\n" not in captured.err.strip()
    assert "this must never run" not in captured.out


def test_unknown_preset_lists_the_presets(capsys):
    assert main(["run", "quik"]) == 2
    err = capsys.readouterr().err
    assert "no config or preset named 'quik'" in err and "quick" in err


def test_committed_results_hold_the_quick_preset():
    """results/ (committed) has a valid record for every cell of the quick preset."""
    store = ResultStore(REPO_ROOT / "results")
    missing = [c.describe() for c in load_matrix(REPO_ROOT / "configs" / "quick.yaml").cells
               if store.get(c.cell_id()) is None]
    assert not missing, f"{len(missing)} quick cells without a committed record, e.g. {missing[:2]}"


def test_pickle_fixture_really_is_a_pickle(tmp_path):
    path = tmp_path / "model.pt"
    _write_pickle_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_committed_leaderboard_rows_are_unambiguous():
    """No two committed records of different configs share a leaderboard row (same labels and seed): the
    leaderboard would show only the newest of them."""
    rows: dict[tuple, set[str]] = {}
    for rec in ResultStore(REPO_ROOT / "results").all():
        s = rec["spec"]
        key = (s["task"], s["dataset"], s["model"], s["attack_label"], s["defense_label"], s["seed"])
        rows.setdefault(key, set()).add(rec["config_hash"])
    clashes = {k: v for k, v in rows.items() if len(v) > 1}
    assert not clashes, f"relabel one side in its config: {list(clashes)[:3]}"
