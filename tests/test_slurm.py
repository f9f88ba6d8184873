"""Real SLURM jobs: ``casbi-store run`` on ``pipelines/slurm_check.yaml`` submits sbatch jobs to a
one-node SLURM (``slurm_cluster``), workers join, the tiny suite is extracted and a set composed;
the store and the set equal a LocalCluster run's. A job cancelled mid-run is replaced, and a
partition or account the cluster refuses is one error line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import assert_same_arrays, store_arrays
from slurm_cluster import REPO, slurm_fixture  # noqa: F401  (the fixture `slurm`)

from casbi_store.cli.config import load_pipeline
from casbi_store.compose import compose

CLI = [sys.executable, "-m", "casbi_store.cli"]
PIPELINE = REPO / "pipelines" / "slurm_check.yaml"
JOB = "casbi-store"  # dask-jobqueue's job name (casbi_store.store.cluster)


def pipeline(tmp_path: Path, suite: Path, compose_stage: bool = True, **cluster) -> Path:
    """The shipped check pipeline on this cluster: the session's tiny suite (the mock stage's
    suite, already written), the test cluster's account, job logs in ``tmp_path/jobs``."""
    data = yaml.safe_load(PIPELINE.read_text())
    del data["mock"]
    data["workdir"] = str(tmp_path / "run")
    data["extract"]["suite"] = str(suite)
    data["cluster"].update({"account": "casbi", "extra": {"log_directory": str(tmp_path / "jobs")},
                            **cluster})
    if not compose_stage:
        del data["compose"]
    out = tmp_path / "slurm_check.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def submitted(tmp_path: Path) -> list[str]:
    """Ids of the jobs that ran (each writes its log in the pipeline's log directory)."""
    return sorted({p.stem.rsplit("-", 1)[1] for p in (tmp_path / "jobs").glob(f"{JOB}-*.err")})


@pytest.fixture(scope="module")
def local_set(tiny_store, tmp_path_factory) -> str:
    """The checksum of the check pipeline's set composed on the session's LocalCluster store."""
    store = tmp_path_factory.mktemp("local") / "tiny.zarr"
    shutil.copytree(tiny_store[0], store)
    spec = load_pipeline(PIPELINE).compose.sets[0]
    return compose(store, spec, progress=False)["checksum"]


def test_pipeline_on_slurm_jobs_equals_a_local_cluster(slurm, tiny_suite, tiny_store, local_set,
                                                       tmp_path):
    proc = subprocess.run([*CLI, "run", str(pipeline(tmp_path, tiny_suite)), "-q"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    jobs = submitted(tmp_path)
    # real sbatch jobs ran the workers: two were submitted; when the first job's worker finishes
    # the tiny suite before the second job starts, the client cancels that one unstarted
    assert 1 <= len(jobs) <= 2
    for job in jobs:
        info = slurm.job(job)
        assert (info["JobName"], info["Account"]) == (JOB, "casbi")
        assert info["JobState"] in ("COMPLETED", "CANCELLED")  # cancelled by the client at exit
    assert_same_arrays(store_arrays(tmp_path / "run" / "store.zarr"), store_arrays(tiny_store[0]))
    checksum = re.search(r"tiny_set:v1: .* checksum (\w+)", proc.stdout).group(1)
    assert local_set.startswith(checksum)
    doc = (REPO / "docs" / "cluster.md").read_text()
    assert f"checksum {checksum}" in doc, "docs/cluster.md quotes the check's checksum"


def test_a_cancelled_job_is_replaced_and_the_store_unchanged(slurm, tiny_suite, tiny_store,
                                                             tmp_path):
    """scancel the only job once it has staged a first snapshot: the client resubmits it after
    ``lost-worker-timeout``, the new job's worker finishes, and the store is the clean one."""
    env = {**os.environ, "DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT": "2s"}
    log = tmp_path / "client.log"
    run = subprocess.Popen([*CLI, "-v", "run", str(pipeline(tmp_path, tiny_suite, False, jobs=1)),
                            "-q"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                           stderr=log.open("w"), text=True)
    staging = tmp_path / "run" / "store.zarr.staging"
    deadline = time.monotonic() + 90
    while not [p for p in staging.glob("*.json") if ".tmp" not in p.name]:
        assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    first = slurm.queued(JOB)
    slurm.command("scancel", *first)
    staged_at_kill = len(list(staging.glob("*.json")))
    try:
        run.wait(timeout=120)
    except subprocess.TimeoutExpired:
        run.kill()
        raise AssertionError(log.read_text()[-5000:]) from None
    err = log.read_text()
    assert run.returncode == 0, err[-5000:]
    assert len(first) == 1 and slurm.job(first[0])["JobState"] == "CANCELLED"
    assert staged_at_kill < 21  # killed mid-run: the tiny suite has 21 snapshots
    jobs = submitted(tmp_path)
    assert len(jobs) == 2 and first[0] in jobs  # the cancelled job, then its replacement
    assert f"job {first[0]} " in err and "submitting a replacement" in err
    assert_same_arrays(store_arrays(tmp_path / "run" / "store.zarr"), store_arrays(tiny_store[0]))


@pytest.mark.parametrize("option, value, message", [
    ("queue", "gpu", "invalid partition specified: gpu"),
    ("account", "nobody", "invalid account 'nobody'"),
])
def test_a_refused_partition_or_account_is_one_line(slurm, tiny_suite, tmp_path, option, value,
                                                    message):
    path = pipeline(tmp_path, tiny_suite, False, **{option: value})
    proc = subprocess.run([*CLI, "run", str(path), "-q"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"casbi-store: error: {path}: cluster: sbatch refused the job: ")
    assert message in last
    assert slurm.queued(JOB) == []  # nothing left queued
