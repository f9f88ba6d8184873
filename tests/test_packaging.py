"""Issue 21 §4: the package people install. ``python -m build`` makes an sdist and, from it, a
wheel; the wheel installs into a fresh venv (torch pinned first, as the README says) and runs
``casbi-store --help``, ``--version`` and the tiny pipeline there, outside the checkout.

It costs minutes (the venv's install most of them; measured in the report of issue 21), so it runs only with
``CASBI_PACKAGING=1``: ``make package-check``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

pytestmark = pytest.mark.skipif(os.environ.get("CASBI_PACKAGING") != "1",
                                reason="builds and installs the package (minutes): make package-check")


def _run(args: list, cwd: Path | None = None, timeout: float = 900) -> str:
    """Run outside the checkout's import path; the output, or a failure that shows it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: rc {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.timeout(1800)
def test_wheel_and_sdist_build_install_and_run(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", dist, ROOT])
    (wheel,), (sdist,) = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert wheel.name == f"casbi_store-{VERSION}-py3-none-any.whl"

    # the sdist carries what the README and the docs use; the wheel the package and its entry points
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"pipelines/tiny.yaml", "docs/conf.py", "docs/STORE.md", "CHANGELOG.md", "README.md",
            "tests/test_docs.py", "casbi_store/cli/config.py",
            "casbi_store/evaluation/templates/report.html.j2"} <= names
    assert not [n for n in names if n.startswith(("docs/_build", "docs/reference"))]
    with zipfile.ZipFile(wheel) as whl:
        files = set(whl.namelist())
        entry_points = whl.read(f"casbi_store-{VERSION}.dist-info/entry_points.txt").decode()
    assert "casbi_store/evaluation/templates/report.html.j2" in files  # the report's template
    assert "casbi_store/learn/tasks/theta.py" in files and not [f for f in files if f.startswith("tests/")]
    assert "casbi-store = casbi_store.cli:main" in entry_points and "casbi_training_set" in entry_points

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    python, exe = venv / "bin" / "python", venv / "bin" / "casbi-store"
    # --no-compile: bytecode is written on first import instead (a third of the install's time)
    _run([python, "-m", "pip", "install", "--quiet", "--no-compile", "torch==2.13.0"])
    _run([python, "-m", "pip", "install", "--quiet", "--no-compile", wheel])

    work = tmp_path / "work"
    work.mkdir()
    assert "extract" in _run([exe, "--help"], cwd=work)
    assert _run([exe, "--version"], cwd=work).strip() == f"casbi-store {VERSION}"
    where = _run([python, "-c", "import casbi_store; print(casbi_store.__file__)"], cwd=work)
    assert where.startswith(str(venv)), where  # the wheel's package, not the checkout's

    shutil.copy(ROOT / "pipelines" / "tiny.yaml", work / "tiny.yaml")
    printed = _run([exe, "run", "tiny.yaml", "--quiet"], cwd=work)
    assert (work / "tiny-run" / "report" / "report.html").stat().st_size > 50_000, printed
    assert (work / "tiny-run" / "models" / "theta" / "ensemble.json").is_file()
