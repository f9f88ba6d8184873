"""Issue 21 §4: the package people install. ``python -m build`` makes an sdist and, from it, a
wheel; the wheel installs into a fresh venv (torch pinned first, as the README says) and runs
``casbi-store --help`` and ``--version`` there, outside the checkout; ``tests/test_cli.py``'s
``test_run_tiny_pipeline`` runs the tiny pipeline with that venv's ``casbi-store``.

Part of ``make test``: uv builds (``build[uv]``) and fills the venv from the cache the checkout's
own venv filled, so the whole check costs ~25 s (fixture ``wheel_venv`` in conftest.py)."""

from __future__ import annotations

import tarfile
import tomllib
import zipfile
from pathlib import Path

from conftest import run_outside

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_wheel_and_sdist_build_install_and_run(wheel_venv, tmp_path):
    dist, venv = wheel_venv.dist, wheel_venv.venv
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

    assert "extract" in run_outside([wheel_venv.exe, "--help"], cwd=tmp_path)
    assert run_outside([wheel_venv.exe, "--version"], cwd=tmp_path).strip() == f"casbi-store {VERSION}"
    where = run_outside([wheel_venv.python, "-c", "import casbi_store, torch; "
                         "print(casbi_store.__file__, torch.__version__)"], cwd=tmp_path)
    assert where.startswith(str(venv)), where  # the wheel's package, not the checkout's
    assert where.split()[1] == "2.13.0+cpu", where  # the pinned CPU build, not a CUDA one
