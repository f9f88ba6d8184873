"""Cluster specs: validation, SLURM/PBS job scripts as dask-jobqueue writes them, pipeline YAML."""

import re

import pytest

from casbi_store.cli.config import ConfigError, load_pipeline
from casbi_store.store.cluster import ClusterSpec, job_script


def _directives(script: str, prefix: str) -> list[str]:
    return [line[len(prefix):].strip() for line in script.splitlines() if line.startswith(prefix)]


def test_slurm_job_script_carries_the_spec():
    spec = ClusterSpec(kind="slurm", cores=4, memory="16GB", walltime="04:00:00", queue="cpu",
                       account="nihao", processes=2, job_script_prologue=("module load python",),
                       job_extra_directives=("--exclusive",))
    script = job_script(spec)
    d = _directives(script, "#SBATCH")
    assert {"-p cpu", "-A nihao", "--cpus-per-task=4", "-t 04:00:00", "--exclusive"} <= set(d)
    mem = next(x for x in d if x.startswith("--mem="))
    assert 14 <= int(re.sub(r"\D", "", mem)) <= 16  # GB as SLURM counts them
    body = script.split("module load python", 1)
    assert len(body) == 2 and "OMP_NUM_THREADS=1" in body[0]  # our env before the user's prologue
    worker = body[1].strip().splitlines()[-1]
    assert "--nworkers 2" in worker and "--nthreads 2" in worker  # 2 processes x 2 threads = 4 cores


def test_pbs_job_script_carries_the_spec():
    script = job_script(ClusterSpec(kind="pbs", cores=2, memory="8GB", queue="workq", account="proj",
                                    walltime="02:30:00"))
    d = _directives(script, "#PBS")
    assert {"-q workq", "-A proj", "-l walltime=02:30:00"} <= set(d)
    assert any(x.startswith("-l select=1:ncpus=2:mem=") for x in d)
    assert "--nworkers 2 " in script and "--nthreads 1 " in script  # default: a process per core


@pytest.mark.parametrize("options, message", [
    ({"kind": "sge"}, "kind must be one of"),
    ({"kind": "address"}, "needs 'address'"),
    ({"kind": "local", "queue": "cpu"}, "apply to kinds"),
    ({"kind": "slurm", "cores": 2, "processes": 4}, "cannot exceed"),
    ({"kind": "slurm", "adaptive": {"minimum": 3, "maximum": 1}}, "minimum <= maximum"),
    ({"kind": "local", "workers": 0}, "positive integer"),
])
def test_bad_specs_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        ClusterSpec(**options)


def test_pipeline_cluster_section(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("mock: {preset: tiny}\nextract: {store: s.zarr}\n"
                 "cluster: {kind: slurm, cores: 8, memory: 32GB, jobs: 4, queue: cpu}\n")
    spec = load_pipeline(p).cluster
    assert (spec.kind, spec.cores, spec.jobs, spec.queue) == ("slurm", 8, 4, "cpu")
    p.write_text("mock: {preset: tiny}\nextract: {store: s.zarr}\ncluster: {kind: slurm, qeue: cpu}\n")
    with pytest.raises(ConfigError, match=r"p.yaml: cluster: unknown key\(s\) \['qeue'\]"):
        load_pipeline(p)
    p.write_text("mock: {preset: tiny}\nextract: {store: s.zarr, workers: 2}\ncluster: {kind: local}\n")
    with pytest.raises(ConfigError, match="both say where to run"):
        load_pipeline(p)


def test_the_shipped_slurm_pipeline_validates(monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("USER", "astro")
    pipe = load_pipeline(Path(__file__).parents[1] / "pipelines" / "slurm.yaml")
    assert pipe.cluster.kind == "slurm" and pipe.cluster.adaptive == {"minimum": 1, "maximum": 12}
    assert str(pipe.workdir) == "/scratch/astro/casbi"
    assert "#SBATCH -A nihao" in job_script(pipe.cluster)
