"""The package installs as ONE top-level package, `cnncc`, with ir/ and backends/ mapped inside it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"cnncc": "cnncc", "ir": "cnncc.ir", "backends": "cnncc.backends"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _package_folders() -> set[str]:
    """Every folder with an __init__.py under the three source roots, by installed name."""
    found = set()
    for folder, dotted in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            if "__pycache__" not in rel:
                found.add(".".join((dotted, *rel)))
    return found


def test_top_level_is_exactly_the_required_layout():
    for name in ["pyproject.toml", "cnncc", "ir", "backends", "tests", "examples", "README.md"]:
        assert (ROOT / name).exists(), f"{name} is missing at the top level"


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    missing = _package_folders() - listed
    assert not missing, f"package folders missing from pyproject's packages list: {sorted(missing)}"
    stale = listed - _package_folders()
    assert not stale, f"pyproject lists packages with no folder: {sorted(stale)}"


def test_package_dir_maps_ir_and_backends_inside_cnncc():
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    assert mapping == {"cnncc": "cnncc", "cnncc.ir": "ir", "cnncc.backends": "backends"}


def test_wheel_installs_one_package_and_imports_from_outside(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(wheels)], check=True,
                   capture_output=True)
    (wheel,) = wheels.glob("cnncc-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        tops = {n.split("/")[0] for n in names}
        zf.extractall(tmp_path / "site")
    assert {t for t in tops if not t.endswith(".dist-info")} == {"cnncc"}, tops
    assert "cnncc/backends/cuda/cuda_emu.h" in names, "the CUDA emulation header is not shipped"
    # Import the unpacked wheel from an unrelated folder; the editable install must not be used.
    code = ("import cnncc.ir, cnncc.backends, cnncc.backends.reference, sys; "
            "print(cnncc.ir.__file__); print(cnncc.backends.__file__); "
            "import importlib.util as u; print(u.find_spec('ir'), u.find_spec('backends'))")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out[0].startswith(str(tmp_path / "site")), out
    assert out[1].startswith(str(tmp_path / "site")), out
    assert out[2] == "None None", "a top-level 'ir' or 'backends' module is importable"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [ln.strip() for ln in readme if ln.strip().startswith("python3 -m pytest")]
    assert len(commands) == 1, commands
    ci = [ln.split("#")[0].strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[0] in ci, f"{commands[0]!r} is not a line of .ci/run"
