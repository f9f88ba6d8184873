"""Sharing through object storage: a local S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

from casbi_store.compose import ComposeSpec, compose
from casbi_store.compose.catalog import read_registry, update_catalog
from casbi_store.store.validate import validate_store

SPEC = dict(name="nsub_uniform", n_sub_min=2, n_sub_max=4, train_per_n=10, test_per_n=4)


@pytest.fixture
def s3(monkeypatch):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        deadline = time.time() + 30
        while True:
            try:
                fs = s3fs.S3FileSystem()
                fs.mkdir("casbi")
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        yield fs, env
    finally:
        server.terminate()
        server.wait(timeout=30)
        s3fs.S3FileSystem.clear_instance_cache()


def test_store_and_catalog_on_s3(s3, tiny_store, tmp_path):
    fs, env = s3
    local = tmp_path / "store.zarr"
    shutil.copytree(tiny_store[0], local)
    compose(local, ComposeSpec(version="v1", **SPEC), progress=False)
    catalog = update_catalog(tmp_path / "casbi.yaml", local)
    fs.put(str(local), "casbi/store.zarr", recursive=True)
    fs.put(str(catalog), "casbi/casbi.yaml")

    # written through s3fs: a second version composed straight into the bucket
    compose("s3://casbi/store.zarr", ComposeSpec(version="v2", seed=5, **SPEC), progress=False)
    assert list(read_registry("s3://casbi/store.zarr")["nsub_uniform"]) == ["v1", "v2"]
    assert validate_store("s3://casbi/store.zarr") == []

    # read from another process through the catalog's s3:// URL
    out = tmp_path / "x.npy"
    code = ("import intake, numpy as np; "
            "cat = intake.open_catalog('s3://casbi/casbi.yaml'); "
            "ds = cat.nsub_uniform(version='v1', split='test').to_dask(); "
            f"np.save({str(out)!r}, ds.x.values)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ref = xr.open_zarr(local, group="training_sets/nsub_uniform/v1/test", consolidated=True)
    assert np.load(out).tobytes() == ref.x.values.tobytes()
