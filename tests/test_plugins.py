"""A defense from a separate installable package (conftest's `plugin_site`: built and pip-installed in a temp
dir) appears in `fipbench ls defenses`, runs in a matrix and is ranked on the leaderboard, with no change to
fipbench."""

from __future__ import annotations

import subprocess
import sys

from _helpers import tiny_matrix

MATRIX = tiny_matrix("[badnets]", "[none, {name: ft_head, config: {fit: {steps: 20}}}]", epochs=2, name="plugin")


def _cli(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "benchmark.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_plugin_defense_is_listed_run_and_ranked(plugin_env, subprocess_env, tmp_path):
    env = plugin_env
    listed = _cli(["ls", "defenses"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert "ft_head" in lines and "fipbench_toy_defense" in lines["ft_head"]
    assert "crash_once" in lines and "fip" in lines  # built-ins are still there

    (tmp_path / "plugin.yaml").write_text(MATRIX)
    run = _cli(["run", "plugin.yaml", "--results", "results", "--cache", "cache", "--no-sharpness"], env, tmp_path)
    assert run.returncode == 0, run.stderr
    ranking = (tmp_path / "results" / "ranking.md").read_text()
    rows = [line for line in ranking.splitlines() if line.startswith("|") and "ft_head" in line]
    assert len(rows) == 1
    html = (tmp_path / "results" / "leaderboard.html").read_text()
    assert ">ft_head<" in html

    # The same matrix without the plugin on the path fails with a one-line error naming the unknown defense.
    bare = _cli(["run", "plugin.yaml", "--results", "results"], subprocess_env, tmp_path)
    assert bare.returncode == 2 and "unknown defense 'ft_head'" in bare.stderr
