"""``casbi-store cluster-script``: the SLURM/PBS job script of a pipeline's cluster section."""

from __future__ import annotations

import argparse
import os


def add_parser(sub) -> None:
    cs = sub.add_parser("cluster-script",
                        help="print the SLURM/PBS job script of a pipeline's cluster section "
                             "(to check before anything is submitted)")
    cs.add_argument("pipeline", help="pipeline YAML file with a cluster section of kind slurm or pbs")
    cs.set_defaults(func=run)


def cluster_script(pipeline: str | os.PathLike) -> int:
    """Print the batch script each job of ``pipeline``'s cluster would run; submits nothing."""
    from casbi_store.store.cluster import JOBQUEUE_KINDS, job_script

    from .config import ConfigError, load_pipeline

    spec = load_pipeline(pipeline).cluster
    if spec is None:
        raise ConfigError(f"{pipeline}: no cluster section (it runs on a LocalCluster)")
    if spec.kind not in JOBQUEUE_KINDS:
        raise ConfigError(f"{pipeline}: cluster: kind {spec.kind!r} submits no job script; "
                          f"job scripts are for kinds {JOBQUEUE_KINDS}")
    print(job_script(spec))
    return 0


def run(args: argparse.Namespace) -> int:
    return cluster_script(args.pipeline)
