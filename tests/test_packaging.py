"""A non-editable wheel installs metrix, metrix.app/export/index and the `metrix` command,
and puts no generic top-level `app`, `export` or `index` module into site-packages."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import metrix
from metrix.cli import app

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "metrix", "app", "export", "index"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy so setuptools' build/ and egg-info never land in the checkout.
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, src],
        check=True,
    )
    (built,) = out.glob("metrix-*.whl")
    return built


def test_wheel_contains_only_the_metrix_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"metrix", f"metrix-{metrix.__version__}.dist-info"}
    for package in ("app", "export", "index", "losses"):
        assert f"metrix/{package}/__init__.py" in names


@pytest.mark.slow
def test_non_editable_install_in_a_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], check=True)
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # Dependencies (typer, torch) come from this environment's site-packages as a plain path:
    # its .pth files, including the editable-install hook for the checkout, are not run.
    (site / "_deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    for generic in ("app", "export", "index"):
        assert not (site / generic).exists() and not (site / f"{generic}.py").exists()

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import metrix.app, metrix.export, metrix.index, metrix.losses, metrix.mixup; print(metrix.app.__file__)"
    where = subprocess.check_output([python, "-c", code], text=True, cwd=tmp_path, env=env).strip()
    assert Path(where).is_relative_to(site), f"imported from {where}, not from the installed wheel"

    help_text = subprocess.check_output([venv / "bin" / "metrix", "--help"], text=True, cwd=tmp_path, env=env)
    assert "info" in help_text and "Usage" in help_text
    version = subprocess.check_output([venv / "bin" / "metrix", "--version"], text=True, cwd=tmp_path, env=env)
    assert version.strip() == f"metrix {metrix.__version__}"


def test_cli_help_lists_commands_and_version_works():
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "info" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"metrix {metrix.__version__}"
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0 and "torch threads" in result.output


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "metrix", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"metrix {metrix.__version__}"
