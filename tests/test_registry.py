"""benchmark._registry.Registry: duplicates, unknown names, lazy loading, built-in table, entry-point plugins,
and an import-light `fipbench ls`."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import uuid
from importlib.metadata import EntryPoint

import pytest

import benchmark._registry as registry_mod
from benchmark._registry import Registry
from benchmark.errors import FipbenchError
from benchmark.registries import ALL, ATTACKS, DEFENSES


@pytest.fixture
def tmp_modules(tmp_path, monkeypatch):
    """`write(stem, source, name=None) -> module name`: a throw-away importable module under tmp_path (unique
    name), forgotten from sys.modules afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(stem: str, source: str, name: str | None = None) -> str:
        name = name or unique(stem)
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        importlib.invalidate_caches()
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def unique(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:10]}"


# -- registration --------------------------------------------------------------------------------------------
def test_duplicate_name_raises():
    reg: Registry[object] = Registry("widget", builtin={})

    @reg.register("a")
    class A:
        pass

    with pytest.raises(ValueError, match="duplicate widget name 'a'"):
        @reg.register("a")
        class B:
            pass

    assert reg.get("a") is A  # the first registration stands


def test_reregistering_the_same_object_is_allowed_and_sets_registry_name():
    reg: Registry[object] = Registry("widget", builtin={})

    class A:
        pass

    reg.register("a")(A)
    reg.register("a")(A)  # e.g. a module imported twice: idempotent
    assert reg.get("a") is A
    assert A.registry_name == "a"


def test_unknown_name_error_has_close_match_and_known_names():
    with pytest.raises(FipbenchError) as info:
        ATTACKS.get("badnet")
    msg = str(info.value)
    assert "did you mean 'badnets'" in msg
    assert "known: " in msg
    for name in ATTACKS.names():
        assert name in msg.split("known: ", 1)[1]
    assert "\n" not in msg


def test_unknown_name_without_close_match_still_lists_names():
    with pytest.raises(FipbenchError) as info:
        DEFENSES.get("zzzzzz")
    msg = str(info.value)
    assert "did you mean" not in msg
    assert "fast_fip" in msg and "finetune" in msg


def test_contains_and_iter():
    assert "badnets" in ATTACKS
    assert "badnet" not in ATTACKS
    assert 3 not in ATTACKS  # type: ignore[operator]
    assert list(ATTACKS) == ATTACKS.names() == sorted(ATTACKS.names())


# -- lazy loading --------------------------------------------------------------------------------------------
def test_names_does_not_import_builtin_modules(tmp_modules):
    widgets = unique("fakewidgets")
    reg_mod = tmp_modules("fakereg", f"""
        from benchmark._registry import Registry
        REG = Registry("widget", builtin={{"alpha": "{widgets}"}})
    """)
    tmp_modules("", f"""
        from {reg_mod} import REG

        @REG.register("alpha")
        class Alpha:
            pass
    """, name=widgets)
    reg = importlib.import_module(reg_mod).REG

    assert reg.names() == ["alpha"]
    assert "alpha" in reg
    assert reg.origin("alpha") == widgets
    assert widgets not in sys.modules, "names()/contains/origin must not import the component module"

    cls = reg.get("alpha")
    assert widgets in sys.modules
    assert cls.__name__ == "Alpha" and cls.__module__ == widgets
    assert cls.registry_name == "alpha"


def test_builtin_module_that_registers_nothing_is_a_clear_error(tmp_modules):
    empty = tmp_modules("emptymod", "X = 1\n")
    reg: Registry[object] = Registry("widget", builtin={"beta": empty})
    with pytest.raises(FipbenchError, match="registers no such name"):
        reg.get("beta")


def test_every_builtin_name_loads_and_no_stray_names():
    for kind, reg in ALL.items():
        loaded = reg.load_all()
        assert set(loaded) == set(reg._builtin), f"{kind}: load_all() differs from the built-in table"
        # Importing every built-in module registers exactly the built-in names: nothing unlisted.
        assert set(reg._entries) == set(reg._builtin), (
            f"{kind}: modules registered {sorted(set(reg._entries) - set(reg._builtin))} that are not in "
            f"benchmark/registries.py, or missed {sorted(set(reg._builtin) - set(reg._entries))}")
        for name, obj in loaded.items():
            assert obj is reg.get(name)
            assert getattr(obj, "registry_name", name) == name
            # The table names the module that actually defines/registers the entry.
            assert reg._builtin[name] in sys.modules


def test_component_classes_carry_metadata():
    for name, cls in ATTACKS.load_all().items():
        assert isinstance(cls.version, int) and cls.modalities, name
        assert hasattr(cls, "Config")
    for name, cls in DEFENSES.load_all().items():
        assert isinstance(cls.version, int) and cls.modalities, name
        cls.Config()  # defaults construct and validate


# -- entry-point plugins -------------------------------------------------------------------------------------
def _fake_entry_points(group_name: str, eps: list[EntryPoint]):
    def entry_points(*, group: str | None = None, **_kw):
        return [ep for ep in eps if ep.group == group] if group == group_name else []

    return entry_points


def test_entry_point_plugin_object_is_discovered_lazily(tmp_modules, monkeypatch):
    plugin = tmp_modules("fipplugin", """
        class Gadget:
            pass
    """)
    group = "fipbench.test_widgets"
    ep = EntryPoint(name="gadget", value=f"{plugin}:Gadget", group=group)
    monkeypatch.setattr(registry_mod, "entry_points", _fake_entry_points(group, [ep]))

    reg: Registry[object] = Registry("widget", builtin={"alpha": "nowhere.at_all"}, group=group)
    assert reg.names() == ["alpha", "gadget"]
    assert "gadget" in reg
    assert reg.origin("gadget") == f"{plugin}:Gadget"
    assert plugin not in sys.modules, "discovering a plugin must not import it"

    obj = reg.get("gadget")
    assert plugin in sys.modules
    assert obj is sys.modules[plugin].Gadget
    assert obj.registry_name == "gadget"
    assert reg.get("gadget") is obj


def test_entry_point_plugin_module_that_registers_itself(tmp_modules, monkeypatch):
    reg_mod = tmp_modules("pluginreg", """
        from benchmark._registry import Registry
        REG = Registry("widget", builtin={}, group="fipbench.test_self")
    """)
    plugin = tmp_modules("fipplugin_self", f"""
        from {reg_mod} import REG

        @REG.register("selfreg")
        def make():
            return 42
    """)
    ep = EntryPoint(name="selfreg", value=plugin, group="fipbench.test_self")
    monkeypatch.setattr(registry_mod, "entry_points", _fake_entry_points("fipbench.test_self", [ep]))
    reg = importlib.import_module(reg_mod).REG
    assert reg.names() == ["selfreg"]
    assert plugin not in sys.modules
    assert reg.get("selfreg")() == 42


def test_entry_point_shadowing_a_builtin_name_is_refused(tmp_modules, monkeypatch):
    plugin = tmp_modules("fipplugin_bad", "class Bad:\n    pass\n")
    group = "fipbench.test_clash"
    ep = EntryPoint(name="alpha", value=f"{plugin}:Bad", group=group)
    monkeypatch.setattr(registry_mod, "entry_points", _fake_entry_points(group, [ep]))
    reg: Registry[object] = Registry("widget", builtin={"alpha": "somewhere"}, group=group)
    with pytest.raises(FipbenchError, match="built-in name"):
        reg.names()


def test_unknown_name_error_includes_plugin_names(tmp_modules, monkeypatch):
    plugin = tmp_modules("fipplugin_named", "class G:\n    pass\n")
    group = "fipbench.test_named"
    ep = EntryPoint(name="gizmo", value=f"{plugin}:G", group=group)
    monkeypatch.setattr(registry_mod, "entry_points", _fake_entry_points(group, [ep]))
    reg: Registry[object] = Registry("widget", builtin={}, group=group)
    with pytest.raises(FipbenchError, match=r"did you mean 'gizmo'\?.*known: gizmo"):
        reg.get("gizmoo")


# -- the CLI listing stays import-light ----------------------------------------------------------------------
def test_fipbench_ls_does_not_import_torch(repo_root, subprocess_env):
    code = textwrap.dedent("""
        import sys
        from benchmark.cli import main
        rc = main(['ls'])
        heavy = sorted(m for m in ('torch', 'numpy', 'pandas', 'sklearn') if m in sys.modules)
        print('RC', rc)
        print('HEAVY', ','.join(heavy) or '-')
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, env=subprocess_env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "RC 0" in lines
    assert "HEAVY -" in lines, f"`fipbench ls` imported heavy modules: {lines[-1]}"
    for kind, reg in ALL.items():
        assert f"{kind}:" in lines
        for name in reg.names():
            assert any(line.split()[:1] == [name] for line in lines), f"{kind} {name} not listed"
