"""``casbi-store run``: a declarative pipeline (pipelines/*.yaml), stage by stage.

Each stage calls the function its command calls (``mock.make_suite``, ``extract.extract``,
``compose.compose_and_register``, ``train.train_model``, ``evaluate.evaluate_models``) with the
typed values ``config.load_pipeline`` validated. With a ``cluster:`` section, one Dask cluster
serves the extract and compose stages; without one, extract starts its own LocalCluster (the
stage's ``scheduler``/``workers``) and compose runs on Dask's local threads.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator

from ..config import Pipeline, load_pipeline
from .compose import compose_and_register
from .evaluate import evaluate_models, parse_against
from .extract import extract
from .ls import list_store
from .mock import make_suite, suite_spec
from .plot import plot_store
from .survey import survey_check
from .train import train_model

log = logging.getLogger("casbi_store")


def add_parser(sub) -> None:
    r = sub.add_parser("run", help="run a declarative pipeline (pipelines/*.yaml)")
    r.add_argument("pipeline", help="pipeline YAML file")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=run)


@contextlib.contextmanager
def _stage_client(pipe: Pipeline) -> Iterator:
    """The client of the pipeline's cluster while extract and compose run; None without one."""
    if pipe.cluster is None or not (pipe.extract or pipe.compose):
        yield None
        return
    from ..cluster import cluster_client

    log.info("cluster: %s", pipe.cluster.kind)
    with cluster_client(pipe.cluster) as client:
        log.info("Dask dashboard: %s", client.dashboard_link)
        yield client


def run_pipeline(pipeline: str | os.PathLike, *, progress: bool = True) -> int:
    """Validate the pipeline file, then run its stages in order."""
    pipe = load_pipeline(pipeline)
    suite = None
    if pipe.mock:
        m = pipe.mock
        suite = pipe.path(m.out)
        log.info("stage mock: preset %s, seed %s -> %s", m.preset, m.seed, suite)
        spec = suite_spec(m.preset, seed=m.seed, defects=m.defects, physics=m.physics,
                          n_simulations=m.n_simulations, n_star_max=m.n_star_max)
        log.info(make_suite(suite, spec, workers=m.workers, progress=progress))
    with _stage_client(pipe) as client:
        if pipe.extract:
            _extract_stage(pipe, suite, client, progress)
        if pipe.compose:
            catalog = str(pipe.path(pipe.compose.catalog)) if pipe.compose.catalog else None
            for spec in pipe.compose.sets:
                compose_and_register(pipe.path(pipe.extract.store), spec, catalog,
                                     progress=progress)
    if pipe.train:
        for m in pipe.train.models:
            log.info("stage train: %s on %s:%s -> %s", m.task, m.set, m.version, pipe.path(m.out))
            train_model(pipe.path(pipe.extract.store), m.set, m.version, m.task, pipe.path(m.out),
                        m.config, per_member=False)
    if pipe.evaluate:
        ev = pipe.evaluate
        against = parse_against(str(pipe.path(ev.against))) if ev.against else None
        evaluate_models([str(pipe.path(m)) for m in ev.models], str(pipe.path(ev.out)),
                        split=ev.split, halos=ev.halos, samples=ev.samples, seed=ev.seed,
                        against=against)
    if pipe.survey:
        sv = pipe.survey
        name, _, version = sv.set.partition(":")
        log.info("stage survey: %d tables of %s %s -> %s", sv.tables, sv.set, sv.split,
                 pipe.path(sv.out))
        survey_check(pipe.path(pipe.extract.store), name, version,
                     [str(pipe.path(m)) for m in sv.models], pipe.path(sv.out), split=sv.split,
                     tables=sv.tables, observation=sv.observation, samples=sv.samples,
                     ranks=sv.ranks, seed=sv.seed)
    return 0


def _extract_stage(pipe: Pipeline, suite, client, progress: bool) -> None:
    """Extract (on ``client``, else on the stage's own cluster), plot and list the store."""
    e = pipe.extract
    suite = pipe.path(e.suite) if e.suite else suite
    store = pipe.path(e.store)
    log.info("stage extract: %s -> %s", suite, store)
    extract(suite, store, settings=e.settings(), binning=e.binning_spec(),
            cluster=None if client is not None else e.cluster_spec(), client=client,
            progress=progress)
    planes, trends = plot_store(store, pipe.path("plots"))
    print()
    list_store(store)
    print("\nwhere to look:")
    print(f"  suite      {suite}")
    print(f"  store      {store}   (casbi_store.open_store({str(store)!r}))")
    print(f"  pictures   {planes}\n             {trends}")
    print(f"  listing    casbi-store ls {store}")


def run(args: argparse.Namespace) -> int:
    return run_pipeline(args.pipeline, progress=not args.quiet)
