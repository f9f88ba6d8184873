"""Extraction on an external cluster: `dask scheduler` and `dask worker` processes on loopback."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_arrays, store_arrays

from casbi_store.store.extraction_run import extract_suite

BIN = Path(sys.executable).parent


@contextlib.contextmanager
def _external_cluster(folder: Path):
    """A `dask scheduler` and two `dask worker` processes on loopback; yields the address."""
    sched_file = folder / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", ":0", "--scheduler-file", sched_file],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), "dask scheduler did not start"
        for _ in range(2):
            procs.append(subprocess.Popen(
                [BIN / "dask", "worker", "--scheduler-file", sched_file, "--nthreads", "1",
                 "--host", "127.0.0.1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        import json

        from dask.distributed import Client

        address = json.loads(sched_file.read_text())["address"]
        with Client(address) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    """One external cluster for the tests that only need one to run on (start-ups are slow);
    the killed-worker test uses it last, its nanny restarts the killed worker."""
    with _external_cluster(tmp_path_factory.mktemp("scheduler")) as address:
        yield address


@pytest.fixture
def external_cluster(tmp_path):
    """A fresh external cluster: the pipeline test asks the scheduler which task kinds it ran."""
    with _external_cluster(tmp_path) as address:
        yield address


def test_external_scheduler_gives_the_same_store(tiny_suite, tiny_store, shared_cluster,
                                                 tmp_path):
    store = tmp_path / "external.zarr"
    summary = extract_suite(tiny_suite, store, scheduler=shared_cluster, progress=False)
    assert summary.ok == tiny_store[1].ok
    assert_same_arrays(store_arrays(tiny_store[0]), store_arrays(store))


def test_compose_on_external_cluster_gives_the_same_version(tiny_store, shared_cluster, tmp_path):
    """compose's Dask graph runs on whatever client is active: real scheduler + worker processes."""
    from conftest import store_with_set
    from dask.distributed import Client

    from casbi_store.compose import ComposeSpec, compose

    local = store_with_set(tiny_store[0], tmp_path / "local", name="s", n_sub_min=2, n_sub_max=3,
                           train_per_n=20, test_per_n=5, seed=3)
    import shutil

    remote = tmp_path / "remote.zarr"
    shutil.copytree(tiny_store[0], remote)
    with Client(shared_cluster) as client:
        entry = compose(remote, ComposeSpec(name="s", version="v1", n_sub_min=2, n_sub_max=3,
                                            train_per_n=20, test_per_n=5, seed=3), progress=False)
        assert client.run(os.getpid)  # the workers are separate processes
    from casbi_store.compose import registry

    assert entry["checksum"] == registry(str(local), "s")["v1"]["checksum"]


def test_a_worker_killed_mid_extraction_is_survived(tiny_suite, tiny_store, shared_cluster, tmp_path):
    """SIGKILL a worker process while it runs an extraction task (as a pre-empted SLURM job would
    be): its nanny restarts it, Dask re-runs the task, and the store is the clean run's."""
    import signal
    import threading

    from dask.distributed import Client

    store = tmp_path / "killed.zarr"
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(summary=extract_suite(
        tiny_suite, store, scheduler=shared_cluster, progress=False)))
    killed = None
    with Client(shared_cluster) as client:
        pids = client.run(os.getpid)
        run.start()
        deadline = time.time() + 120
        while killed is None and time.time() < deadline and run.is_alive():
            busy = [w for w, keys in client.processing().items()
                    if any("extract" in str(k) for k in keys)]
            if busy:
                killed = pids[busy[0]]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.02)
        run.join(timeout=300)
    assert killed is not None, "no extraction task was seen running"
    assert result["summary"].ok == tiny_store[1].ok
    assert_same_arrays(store_arrays(tiny_store[0]), store_arrays(store))


def test_pipeline_cluster_section_runs_extract_and_compose_there(external_cluster, tmp_path):
    """A pipeline's `cluster:` section: extraction and composition both run on that cluster (the
    scheduler saw their tasks); the set equals one composed on local threads; the mock stage's
    physics reaches the suite."""
    import yaml
    from dask.distributed import Client

    from casbi_store.cli import main
    from casbi_store.compose import ComposeSpec, compose

    spec = {"name": "clus", "version": "v1", "seed": 2, "n_sub_min": 2, "n_sub_max": 4,
            "train_per_n": 20, "test_per_n": 5}
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({
        "workdir": str(tmp_path / "work"),
        "mock": {"preset": "tiny", "seed": 3, "physics": {"ia_min_delay": 0.5, "sfe": 1.5}},
        "extract": {"store": "s.zarr"},
        "cluster": {"kind": "address", "address": external_cluster},
        "compose": {"sets": [spec]}}))
    assert main(["run", str(pipeline), "-q"]) == 0
    with Client(external_cluster) as client:
        prefixes = set(client.run_on_scheduler(lambda dask_scheduler: list(
            dask_scheduler.task_prefixes)))
    assert {"extract", "sum_histograms"} <= prefixes, prefixes
    manifest = yaml.safe_load((tmp_path / "work" / "suite" / "mock_suite.yaml").read_text())
    assert manifest["spec"]["physics"]["ia_min_delay"] == 0.5
    assert all(s["chemistry"]["ia_min_delay"] == 0.5 for s in manifest["simulations"])
    store = tmp_path / "work" / "s.zarr"
    on_cluster = compose(store, ComposeSpec(**spec), progress=False)  # published: the same entry
    local = compose(store, ComposeSpec(**{**spec, "version": "v2"}), progress=False)
    assert on_cluster["checksum"] == local["checksum"]
