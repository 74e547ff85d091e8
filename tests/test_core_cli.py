"""The `metriclens` command: pyproject.toml declares it (and the packages and pins of requirements.txt), and its
entry function dispatches to the same subcommands as `python -m core`."""
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from core import __main__ as cli

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_declares_the_command_packages_and_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {"metriclens": "core.__main__:console"}
    assert set(project["tool"]["setuptools"]["packages"]["find"]["include"]) >= {"core*", "dashboard*", "benchmarks*"}
    runtime = []
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.strip() == "# tests":
            break
        if line.strip() and not line.startswith("#"):
            runtime.append(line.strip())
    assert project["project"]["dependencies"] == runtime          # one set of pins, repeated, never drifting


def test_console_dispatches_every_subcommand(capsys):
    with pytest.raises(SystemExit) as done:
        cli.console(["--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: metriclens") and "{" + ",".join(cli.SUBCOMMANDS) + "}" in usage.replace(" ", "")
    for name in cli.SUBCOMMANDS:
        with pytest.raises(SystemExit) as done:
            cli.console([name, "--help"])
        assert done.value.code == 0 and f"metriclens {name}" in capsys.readouterr().out


def test_dashboard_runs_streamlit_on_loopback_like_make_run(capsys, monkeypatch):
    monkeypatch.delenv("METRICLENS_ADDRESS", raising=False)
    assert cli.console(["dashboard", "--dry-run"]) == 0
    command = capsys.readouterr().out.split()
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4] == str(REPO / "app.py")
    assert command[command.index("--server.address") + 1] == "127.0.0.1"


def test_a_real_subcommand_runs_through_the_console(tmp_path, capsys):
    """`metriclens umap RUN` on a run without artifacts fails the way `python -m core umap` does: exit 2 and a
    message that names the file (the dispatcher reaches the command and its error handling)."""
    (tmp_path / "config.json").write_text("{}")
    assert cli.console(["umap", str(tmp_path)]) == 2
    assert "embeddings.npy" in capsys.readouterr().err


def test_python_dash_m_core_keeps_working():
    out = subprocess.run([sys.executable, "-m", "core", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m core")
