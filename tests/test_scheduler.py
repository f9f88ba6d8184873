"""Extraction on an external cluster: `dask scheduler` and `dask worker` processes on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_arrays, store_arrays

from casbi_store.extraction_run import extract_suite

BIN = Path(sys.executable).parent


@pytest.fixture
def external_cluster(tmp_path):
    sched_file = tmp_path / "scheduler.json"
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


def test_external_scheduler_gives_the_same_store(tiny_suite, tiny_store, external_cluster,
                                                 tmp_path):
    store = tmp_path / "external.zarr"
    summary = extract_suite(tiny_suite, store, scheduler=external_cluster, progress=False)
    assert summary.ok == tiny_store[1].ok
    assert_same_arrays(store_arrays(tiny_store[0]), store_arrays(store))
