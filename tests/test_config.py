"""benchmark.config.Config through real component configs, and matrix validation (benchmark.spec, `validate`)."""

from __future__ import annotations

import dataclasses
import itertools
import textwrap
from pathlib import Path

import pytest

from attacks.badnets import BadNetsConfig
from benchmark.cli import main
from benchmark.errors import FipbenchError
from benchmark.spec import load_matrix, parse_matrix, validate
from defenses.fip import FastFIPConfig, FIPConfig
from tasks.base import FitConfig


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, f"error message spans lines: {msg!r}"
    return msg


# -- Config --------------------------------------------------------------------------------------------------
def test_unknown_key_is_one_line_error_with_close_match():
    with pytest.raises(FipbenchError) as info:
        FIPConfig.from_dict({"eta_ff": 1.0}, "defense fip")
    msg = one_line(info)
    assert "'eta_ff'" in msg and "did you mean 'eta_f'" in msg and "defense fip" in msg
    assert "known:" in msg and "trace_every" in msg


def test_unknown_key_in_attack_and_fit_configs():
    with pytest.raises(FipbenchError, match="did you mean 'patch_size'"):
        BadNetsConfig.from_dict({"patch_sise": 4})
    with pytest.raises(FipbenchError, match="did you mean 'epochs'"):
        FitConfig.from_dict({"epoch": 4}, "train")


@pytest.mark.parametrize("cls,key,value,field", [
    (FIPConfig, "eta_f", "big", "FIPConfig.eta_f"),
    (FitConfig, "epochs", 2.5, "FitConfig.epochs"),
    (FitConfig, "epochs", True, "FitConfig.epochs"),  # a bool is not an integer
    (FitConfig, "optimizer", "rmsprop", "FitConfig.optimizer"),
    (FitConfig, "steps", "ten", "FitConfig.steps"),
    (BadNetsConfig, "corner", "middle", "BadNetsConfig.corner"),
    (BadNetsConfig, "value", None, "BadNetsConfig.value"),
    (FIPConfig, "fit", 3, "FIPConfig.fit"),
])
def test_wrong_type_names_the_field(cls, key, value, field):
    with pytest.raises(FipbenchError) as info:
        cls.from_dict({key: value}, "where-it-came-from")
    msg = one_line(info)
    assert field in msg and repr(value) in msg and "where-it-came-from" in msg


def test_literal_error_lists_choices():
    with pytest.raises(FipbenchError, match="'sgd', 'adam'"):
        FitConfig(optimizer="rmsprop")  # type: ignore[arg-type]


@pytest.mark.parametrize("cls,values,field", [
    (BadNetsConfig, {"poison_rate": 1.5}, "poison_rate"),
    (BadNetsConfig, {"poison_rate": -0.1}, "poison_rate"),
    (BadNetsConfig, {"value": 2.0}, "value"),
    (BadNetsConfig, {"patch_size": 0}, "patch_size"),
    (BadNetsConfig, {"target": -1}, "target"),
    (FitConfig, {"lr": 0.0}, "lr"),
    (FitConfig, {"epochs": 0}, "epochs"),
    (FitConfig, {"steps": 0}, "steps"),
    (FIPConfig, {"eta_r": -1.0}, "eta_r"),
    (FIPConfig, {"trace_every": 0}, "trace_every"),
])
def test_range_checks(cls, values, field):
    with pytest.raises(FipbenchError) as info:
        cls.from_dict(values)
    msg = one_line(info)
    assert f"{cls.__name__}.{field}" in msg


def test_numbers_are_coerced_and_configs_are_frozen():
    cfg = FIPConfig.from_dict({"eta_f": 1, "eta_r": 2})
    assert cfg.eta_f == 1.0 and isinstance(cfg.eta_f, float)
    assert isinstance(cfg.eta_r, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.eta_f = 3.0  # type: ignore[misc]
    assert FitConfig.from_dict({"steps": None}).steps is None


def test_to_dict_round_trips():
    cfg = FastFIPConfig.from_dict({"eta_f": 0.25, "fit": {"steps": 7}})
    again = FastFIPConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert isinstance(cfg.to_dict()["fit"], dict)


def test_nested_fit_override_keeps_component_defaults():
    base = FIPConfig()
    cfg = FIPConfig.from_dict({"fit": {"lr": 0.1}})
    assert cfg.fit.lr == 0.1
    assert cfg.fit == base.fit.replace(lr=0.1)  # every other training default is the component's, not FitConfig's
    assert cfg.eta_f == base.eta_f

    # Fast FIP's own fit defaults (optimizer etc.) survive a partial override too.
    fast_base = FastFIPConfig()
    fast = FastFIPConfig.from_dict({"fit": {"steps": 5}})
    assert fast.fit == fast_base.fit.replace(steps=5)
    assert fast.fit.optimizer == fast_base.fit.optimizer
    assert fast.fit != FitConfig(steps=5)


def test_nested_unknown_or_bad_key_is_reported_with_path():
    with pytest.raises(FipbenchError) as info:
        FIPConfig.from_dict({"fit": {"lrr": 0.1}}, "defense fip")
    msg = one_line(info)
    assert "did you mean 'lr'" in msg and "defense fip.fit" in msg
    with pytest.raises(FipbenchError) as info:
        FIPConfig.from_dict({"fit": {"lr": -1.0}}, "defense fip")
    assert "FitConfig.lr" in one_line(info)


# -- the run matrix ------------------------------------------------------------------------------------------
GOOD = """\
name: tiny
seeds: [0, 1]
groups:
  - task: image_classification
    dataset: digits
    model: small_cnn
    task_config: {holdout_fraction: 0.05}
    train: {epochs: 1, lr: 0.05}
    attacks: [none, {name: badnets, label: badnets-a2a, config: {label_mode: all2all}}]
    defenses: [none, finetune, {name: fast_fip, config: {eta_f: 0.5, fit: {steps: 3}}}]
"""


def write(tmp_path, text: str, name: str = "m.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_matrix_expands_to_the_cross_product(tmp_path):
    matrix = load_matrix(write(tmp_path, GOOD))
    validate(matrix)
    assert matrix.name == "tiny"
    assert len(matrix.cells) == 2 * 2 * 3
    got = {(c.seed, c.attack.label, c.defense.label) for c in matrix.cells}
    want = set(itertools.product([0, 1], ["none", "badnets-a2a"], ["none", "finetune", "fast_fip"]))
    assert got == want
    cell = next(c for c in matrix.cells if c.defense.label == "fast_fip")
    assert cell.defense.config == {"eta_f": 0.5, "fit": {"steps": 3}}
    assert cell.train == {"epochs": 1, "lr": 0.05}
    assert len({c.cell_id() for c in matrix.cells}) == 12
    # The backdoored model depends on (attack, seed), not on the defense.
    assert len({c.artifact_key() for c in matrix.cells}) == 2 * 2


def test_malformed_yaml_reports_line(tmp_path):
    path = write(tmp_path, "name: x\nseeds: [0\ngroups:\n  - task: a\n")
    with pytest.raises(FipbenchError) as info:
        load_matrix(path)
    msg = one_line(info)
    assert "malformed YAML" in msg and "line " in msg and str(path) in msg


def test_unknown_attack_name_with_near_miss(tmp_path):
    with pytest.raises(FipbenchError) as info:
        load_matrix(write(tmp_path, GOOD.replace("attacks: [none,", "attacks: [badnet,")))
    msg = one_line(info)
    assert "unknown attack 'badnet'" in msg and "did you mean 'badnets'" in msg and "attacks[0]" in msg


def test_unknown_defense_model_dataset_names(tmp_path):
    for old, new, hint in [("finetune,", "fine_tune,", "'finetune'"), ("model: small_cnn", "model: smallcnn",
                                                                         "'small_cnn'"),
                           ("dataset: digits", "dataset: digit", "'digits'")]:
        with pytest.raises(FipbenchError, match=f"did you mean {hint}"):
            load_matrix(write(tmp_path, GOOD.replace(old, new)))


def test_unknown_group_key(tmp_path):
    with pytest.raises(FipbenchError) as info:
        load_matrix(write(tmp_path, GOOD.replace("    train:", "    trian:")))
    msg = one_line(info)
    assert "unknown group key 'trian'" in msg and "did you mean 'train'" in msg and "groups[0]" in msg


def test_unknown_matrix_and_entry_keys(tmp_path):
    with pytest.raises(FipbenchError, match="did you mean 'seeds'"):
        load_matrix(write(tmp_path, GOOD.replace("seeds:", "seed:")))
    with pytest.raises(FipbenchError, match="did you mean 'config'"):
        load_matrix(write(tmp_path, GOOD.replace("config: {label_mode", "configs: {label_mode")))


def test_a_group_with_its_own_seeds_replaces_the_matrix_seeds(tmp_path):
    second = GOOD[GOOD.index("  - task:"):].replace("attacks: [none, {name: badnets, label: badnets-a2a, config: "
                                                    "{label_mode: all2all}}]", "attacks: [blend]")
    matrix = load_matrix(write(tmp_path, GOOD + second.replace("  - task:", "  - seeds: [2, 3, 4]\n    task:")))
    validate(matrix)
    seeds = {label: sorted({c.seed for c in matrix.cells if c.attack.label == label}) for label in
             ("none", "badnets-a2a", "blend")}
    assert seeds == {"none": [0, 1], "badnets-a2a": [0, 1], "blend": [2, 3, 4]}
    assert len(matrix.cells) == 12 + 3 * 3
    with pytest.raises(FipbenchError, match=r"groups\[1\]: seeds must be a non-empty list of integers"):
        load_matrix(write(tmp_path, GOOD + second.replace("  - task:", "  - seeds: 3\n    task:")))


def test_duplicate_labels(tmp_path):
    with pytest.raises(FipbenchError) as info:
        load_matrix(write(tmp_path, GOOD.replace("defenses: [none, finetune,", "defenses: [none, none,")))
    assert "label 'none' is used twice" in one_line(info)


def test_duplicate_cells_are_caught_by_validate(tmp_path):
    matrix = load_matrix(write(tmp_path, GOOD.replace("seeds: [0, 1]", "seeds: [0, 0]")))
    with pytest.raises(FipbenchError) as info:
        validate(matrix)
    assert "identical" in one_line(info)


def test_bad_component_config_is_caught_by_validate(tmp_path):
    matrix = load_matrix(write(tmp_path, GOOD.replace("eta_f: 0.5", "eta_f: -1")))
    with pytest.raises(FipbenchError) as info:
        validate(matrix)
    msg = one_line(info)
    assert "eta_f" in msg and "fast_fip" in msg and str(tmp_path) in msg


@pytest.mark.parametrize("data,fragment", [
    ([1, 2], "must be a mapping"),
    ({"seeds": [], "groups": []}, "seeds must be a non-empty list"),
    ({"seeds": [0], "groups": []}, "'groups' must be a non-empty list"),
    ({"groups": [{"task": "image_classification", "dataset": "digits", "model": "small_cnn",
                  "attacks": ["none"]}]}, "missing required key 'defenses'"),
    ({"groups": [{"task": "image_classification", "dataset": "digits", "model": "small_cnn",
                  "attacks": [], "defenses": ["none"]}]}, "non-empty list"),
    ({"groups": [{"task": "image_classification", "dataset": "digits", "model": "small_cnn",
                  "attacks": ["none"], "defenses": ["none"], "train": [1]}]}, "'train' must be a mapping"),
])
def test_parse_matrix_structure_errors(data, fragment):
    with pytest.raises(FipbenchError, match=fragment.replace("(", r"\(")):
        parse_matrix(data, "inline")


def test_cli_validate_exit_codes(tmp_path, capsys):
    good = write(tmp_path, GOOD, "good.yaml")
    assert main(["validate", str(good)]) == 0
    out = capsys.readouterr()
    assert "ok, 12 cells" in out.out

    bad = write(tmp_path, GOOD.replace("attacks: [none,", "attacks: [badnet,"), "bad.yaml")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fipbench: error: ") and "did you mean 'badnets'" in err
    assert err.count("\n") == 1 and err.endswith("\n"), f"not a single line: {err!r}"

    broken = write(tmp_path, "groups: [\n", "broken.yaml")
    assert main(["validate", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "line" in err and err.count("\n") == 1

    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and err.count("\n") == 1


def test_cli_validate_quick_preset(capsys):
    assert main(["validate", "quick"]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    """Every matrix under configs/ (presets and paper matrices) names real components with valid configs."""
    from benchmark.spec import load_matrix, validate

    matrix = load_matrix(path)
    validate(matrix)
    assert matrix.cells
