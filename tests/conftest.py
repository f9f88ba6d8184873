"""Shared fixtures: a tiny mock suite with defects and a store extracted from it on real Dask."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr

from casbi_store.mock import generate_suite, preset
from casbi_store.store.extraction_run import extract_suite

TINY_SEED = 1
if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test runs the suite on 2 pytest-xdist workers on 2 cores: one torch/BLAS thread per
    # worker (and the processes it starts), instead of two each fighting for the same cores
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
REPO = Path(__file__).resolve().parents[1]
# written by the tools that run the tests (git, pip -e, pytest, ruff, Python's bytecode), not by tests
TOOL_PATHS = {".git", ".venv", ".pytest_cache", ".ruff_cache", "__pycache__"}
# written by the docs build, which `make test` runs beside the tests
DOCS_OUTPUT = ("docs/_build", "docs/reference")


def _tool_path(path: str) -> bool:
    """``path`` (relative to the work tree) is one of the tools' or the docs build's outputs."""
    parts = Path(path).parts
    return (any(part in TOOL_PATHS or part.endswith(".egg-info") for part in parts)
            or "/".join(parts[:2]) in DOCS_OUTPUT)


def work_tree_state(root: Path = REPO) -> dict[str, object]:
    """What a test run must leave as it found it: git's view of the work tree (ignored files
    included), the size and modification time of every file outside the tools' own folders
    (``demo/``, ``catalogs/``, any other ignored output), and the bytes of ``catalogs/``."""
    state: dict[str, object] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):  # a tree without git: stat only
        status = subprocess.run(
            ["git", "status", "--porcelain", "--ignored=matching", "--untracked-files=all"],
            cwd=root, capture_output=True, text=True, timeout=60).stdout.splitlines()
        state["git status"] = "\n".join(line for line in status if not _tool_path(line[3:]))
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not _tool_path(os.path.relpath(os.path.join(folder, d), root))]
        for name in files:
            path = Path(folder, name)
            with contextlib.suppress(OSError):  # removed while we walk: the next state shows it
                st = path.stat()
                key = path.relative_to(root).as_posix()
                state[key] = (st.st_size, st.st_mtime_ns)
                if key.startswith("catalogs/"):
                    state[key] += (hashlib.sha256(path.read_bytes()).hexdigest(),)
    return state


# make test runs the suite on 2 pytest-xdist workers (-n 2 --dist loadfile --no-loadscope-reorder):
# each test file is one unit of work (its module fixtures built once), and the units go out in
# this order, the longest first (seconds of one file run alone on 2 cores, roughly), so that
# neither worker starts a long one as the other runs out of work; the rest in collection order.
LONGEST_FIRST = ("test_store_safety",   # 150: the kill harness (tests/kill_harness.py)
                 "test_cli",            # 95: the tiny pipeline run by the wheel's casbi-store
                 "test_trainingsets",   # 50
                 "test_docs",           # 45: the README's one-liners on the tiny preset
                 "test_evaluate",       # 45
                 "test_compose", "test_slurm", "test_scheduler", "test_s3", "test_packaging")


def pytest_collection_modifyitems(config, items):
    if config.getoption("dist", "no") != "no" or os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


# the interpreters the suite starts (CLIs, Dask workers, the wheel's venv) write their bytecode
# once and reuse it, as Makefile's `unexport PYTHONDONTWRITEBYTECODE` does for `make test`
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@pytest.fixture(scope="session", autouse=True)
def work_tree_unchanged():
    """Tests write only into their temporary folders: the run fails (an error at the teardown of
    the last test) when the work tree differs after it, naming what changed; e.g. a ``compose``
    run from the repo without ``--catalog`` rewrote ``catalogs/casbi.yaml`` (issue 22)."""
    before = work_tree_state()
    yield
    after = work_tree_state()
    if after != before:
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        lines = [f"{k}: {'written' if k not in before else 'removed' if k not in after else 'changed'}"
                 for k in changed if k != "git status"]
        if "git status" in changed:
            lines.append("git status --porcelain --ignored: " + " | ".join(
                sorted(set(after["git status"].splitlines())
                       ^ set(before["git status"].splitlines()))))
        pytest.fail(f"the test run changed the work tree {REPO} (tests must write only under "
                    "their tmp_path; or another process wrote there meanwhile):\n  "
                    + "\n  ".join(lines[:30]), pytrace=False)


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory) -> Path:
    """The tiny preset with every defect (read-only for tests: copy before changing it)."""
    out = tmp_path_factory.mktemp("suite") / "tiny"
    generate_suite(out, preset("tiny", seed=TINY_SEED, defects=True), workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def dask_client():
    """One real 2-worker LocalCluster (processes, as ``cluster_client`` starts it) shared by the
    session's in-process extractions, so that each does not pay a cluster start-up. Not the
    default client: composes and other dask work keep running on local threads."""
    import dask
    from dask.distributed import Client, LocalCluster

    from casbi_store.store.cluster import DASK_SETTINGS, WORKER_ENV

    with dask.config.set(DASK_SETTINGS):  # read when the scheduler and workers start
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR,
                               env=dict(WORKER_ENV))
    with cluster, Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="session")
def tiny_store(tiny_suite, dask_client, tmp_path_factory) -> tuple[Path, object]:
    """The tiny suite extracted on the 2-worker LocalCluster; returns (store path, summary)."""
    store = tmp_path_factory.mktemp("store") / "tiny.zarr"
    summary = extract_suite(tiny_suite, store, client=dask_client, progress=False)
    return store, summary


def copy_suite(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def store_arrays(store: Path) -> dict[str, np.ndarray]:
    """Every array of every group as readers see it (shapes from the consolidated metadata), for
    equality checks (attributes like run times excluded). Read with zarr, not xarray: the same
    arrays and values, three times faster (the kill harness reads a store twice per kill). Through
    one commit's snapshot, as ``open_store`` reads: a commit killed past its commit point reads as
    before until the next writer rolls it forward."""
    from casbi_store.store.io import open_snapshot

    root = zarr.open_consolidated(open_snapshot(str(store)), mode="r", zarr_format=2)
    out = {}
    for group in ("galaxies", "stars", "histograms", "errors"):
        for name, arr in root[group].arrays():
            values = arr[...]
            if values.dtype.kind in "OTU":
                values = np.asarray([str(v) for v in values.ravel()], dtype=object)
            out[f"{group}/{name}"] = values
    return out


def assert_same_arrays(a: dict, b: dict, skip: tuple[str, ...] = ()) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        if key.split("/")[-1] in skip:
            continue
        assert a[key].shape == b[key].shape, key
        assert np.array_equal(a[key], b[key], equal_nan=a[key].dtype.kind == "f"), key


def consolidate_whole_store(store: Path) -> None:
    """Rebuild a store's whole ``.zmetadata`` from what is on disk, as a test that edits arrays
    behind the store's back needs (``trainingsets.consolidate`` rewrites only the training sets);
    zarr's note that the ``.locks`` folder is not Zarr is expected and silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Object at \.locks is not recognized")
        zarr.consolidate_metadata(store, zarr_format=2)


def store_with_set(tiny_store_path: Path, folder: Path, **spec) -> Path:
    """A copy of the tiny store with one training set composed into it (spec fields as kwargs)."""
    from casbi_store.compose import ComposeSpec, compose

    path = folder / "store.zarr"
    shutil.copytree(tiny_store_path, path)
    compose(path, ComposeSpec(version="v1", **spec), progress=False)
    return path


SURVEY_OBSERVATION = dict(n_obs_min=100, n_obs_max=3000, feh_err=0.05, feh_err_spread=0.3,
                          ofe_err=0.03, ofe_err_spread=0.3)
SURVEY_NET = dict(epochs=1, batch_size=64, hidden_features=8, num_transforms=1, embedding_dim=8,
                  conv_channels=(4,), patience=5, learning_rate=2e-3, representation="normalised")


@pytest.fixture(scope="session")
def tiny_survey(tiny_store, tmp_path_factory):
    """(store, [classifier, theta]): models of the normalised representation trained for one
    epoch on a tiny observation-model set ``sky:v1`` (N_sub 3-6, 100-3000 stars per halo)."""
    from casbi_store.learn.modelfolder import load_model
    from casbi_store.learn.trainer import TrainConfig, train

    folder = tmp_path_factory.mktemp("survey")
    store = store_with_set(tiny_store[0], folder, name="sky", n_sub_min=3, n_sub_max=6,
                           train_per_n=30, test_per_n=5, seed=2, observation=SURVEY_OBSERVATION)
    for task in ("nsub_classifier", "theta"):
        train(store, "sky", "v1", task, folder / task, TrainConfig(**SURVEY_NET))
    return store, [load_model(folder / t) for t in ("nsub_classifier", "theta")]


@pytest.fixture(scope="session")
def tiny_survey_run(tiny_survey, tmp_path_factory) -> tuple[Path, str]:
    """(folder, printed): ``casbi-store survey`` of two tables of ``sky:v1``'s test halos, as the
    pipeline's survey stage writes it (tables, observation.nc, posterior.nc, coverage)."""
    import io

    from casbi_store.cli import main

    store, models = tiny_survey
    out = tmp_path_factory.mktemp("survey-run") / "survey"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["survey", str(store), "--set", "sky:v1", "--models",
                     *(str(m.path) for m in models), "--out", str(out), "--tables", "2",
                     "--samples", "100", "--ranks", "2"]) == 0
    return out, printed.getvalue()


def run_outside(args: list, cwd: Path | None = None, timeout: float = 600) -> str:
    """Run a command outside the checkout's import path (no PYTHONPATH, no VIRTUAL_ENV); its
    output, or a failure that shows it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: rc {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@dataclass(frozen=True)
class WheelVenv:
    """The package as people install it: ``dist`` (the sdist and the wheel ``python -m build``
    made) and ``venv`` (a fresh venv holding torch and that wheel, nothing of the checkout)."""

    dist: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def exe(self) -> Path:
        return self.venv / "bin" / "casbi-store"


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory) -> WheelVenv:
    """``python -m build`` of this checkout (an sdist, then the wheel from it; uv makes build's
    isolated environments), and a fresh venv with ``torch==2.13.0`` and that wheel, installed by
    uv from the sources and constraints pip is configured with (``.ci/uv_sources.py``). Built once
    per run, whichever xdist worker asks first (the others wait on a lock and reuse it). From the
    cache that installing the checkout's venv filled this takes ~15-25 s on 2 cores."""
    import fcntl

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's popen-gwN
    folder, dist, venv = shared / "wheel", shared / "wheel" / "dist", shared / "wheel" / "venv"
    with open(shared / "wheel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            run_outside([sys.executable, "-m", "build", "--installer", "uv", "--outdir", dist, REPO],
                        timeout=900)
            (wheel,) = dist.glob("*.whl")
            uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
            assert uv, "uv not found: pip install -e '.[test]'"
            sources = run_outside([sys.executable, REPO / ".ci" / "uv_sources.py"]).split()
            run_outside([uv, "venv", "--quiet", "--python", sys.executable, venv])
            run_outside([uv, "pip", "install", "--quiet", "--python", venv / "bin" / "python",
                         *sources, "torch==2.13.0", wheel], timeout=900)
            (folder / "built").touch()
    return WheelVenv(dist, venv)


HTTP_SERVER = """
import functools, http.server, sys

class NoListing(http.server.SimpleHTTPRequestHandler):
    def list_directory(self, path):
        self.send_error(404, "directory listing disabled")
        return None

    def log_message(self, *args):
        pass

handler = functools.partial(NoListing, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def serve_http(folder: Path):
    """A real HTTP server (separate process, no directory listings) on loopback; yields its URL."""
    server = subprocess.Popen([sys.executable, "-c", HTTP_SERVER, str(folder)],
                              stdout=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{int(server.stdout.readline())}"
    finally:
        server.terminate()
        server.wait(timeout=10)
