"""The package imports correctly from any working folder (issue 10, item 5).

The README's layout puts the clone, a folder named ``margin_theory``, beside ``../shared``;
run from the folder holding it, ``import margin_theory`` used to find that folder first (as
an empty namespace package) when the install was setuptools' editable import-hook finder,
which Python consults only after ``sys.path``. ``pyproject.toml`` now makes the editable
install a static ``.pth`` path entry, which ``sys.path`` search ranks above a namespace
portion.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = "import margin_theory, sys; print(margin_theory.__version__); print(margin_theory.__file__)"


def _parent_with_clone(tmp_path: Path) -> Path:
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "margin_theory").symlink_to(REPO, target_is_directory=True)
    return parent


def test_import_from_the_folder_holding_the_clone(tmp_path):
    """As the test session imports it (editable install in CI, PYTHONPATH here)."""
    import margin_theory

    parent = _parent_with_clone(tmp_path)
    for code in (PROBE, "import runpy, sys; sys.argv = ['x', '--help']; "
                        "runpy.run_module('margin_theory.check', run_name='__main__')"):
        res = subprocess.run([sys.executable, "-c", code], cwd=parent, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-c", PROBE], cwd=parent, capture_output=True, text=True, timeout=120)
    version, where = res.stdout.split()
    assert version == margin_theory.__version__
    assert Path(where).resolve() == (REPO / "margin_theory" / "__init__.py").resolve()


def test_pyproject_selects_the_static_pth_editable_mode():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    # setuptools' editable_wheel uses a static .pth for package_dir == {"": <dir>} with a simple layout
    assert cfg.get("package-dir") == {"": "."} and cfg["packages"] == ["margin_theory"]


@pytest.mark.slow
def test_fresh_editable_install_imports_from_the_parent_folder(tmp_path):
    """A throwaway venv (system site-packages for setuptools, no network): ``pip install -e``
    of a copy of the repo, then the import from the folder holding a ``margin_theory`` clone."""
    import importlib.util

    if importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("pip") is None:
        pytest.skip("pip/setuptools not available")
    src = tmp_path / "clone"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build",
                                                               ".hypothesis", ".pytest_cache", "runs", "results"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True, timeout=300)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps",
                          "--no-index", "-e", str(src)], capture_output=True, text=True, timeout=600, env=env,
                         cwd=tmp_path)
    if res.returncode != 0:
        pytest.skip(f"editable install unavailable offline: {res.stderr.strip().splitlines()[-1:]}")
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "margin_theory").symlink_to(src, target_is_directory=True)
    res = subprocess.run([str(py), "-c", PROBE], cwd=parent, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert Path(res.stdout.split()[1]).resolve() == (src / "margin_theory" / "__init__.py").resolve()
