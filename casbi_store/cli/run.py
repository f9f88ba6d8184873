"""``casbi-store run``: a declarative pipeline (pipelines/*.yaml), stage by stage.

Each stage calls the function its command calls (``mock.make_suite``, ``extract.extract``,
``compose.compose_and_register``, ``train.train_model``, ``survey.survey_check``,
``evaluate.evaluate_models``) with the typed values ``config.load_pipeline`` validated; the
survey stage runs before evaluate, whose report shows its survey-style inference. With a
``cluster:`` section, one Dask cluster serves the extract and compose stages; without one,
extract starts its own LocalCluster (the stage's ``scheduler``/``workers``) and compose runs on
Dask's local threads.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator

from casbi_store.store import schema as S

from .compose import compose_and_register
from .config import Pipeline, load_pipeline
from .evaluate import evaluate_models, parse_against
from .extract import extract
from .ls import list_store
from .mock import make_suite, suite_spec
from .plot import plot_store
from .survey import survey_check
from .train import train_model
from .tune import tune_task, tuned_config

log = logging.getLogger("casbi_store")


def add_parser(sub) -> None:
    r = sub.add_parser("run", help="run a declarative pipeline (pipelines/*.yaml)")
    r.add_argument("pipeline", help="pipeline YAML file")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.add_argument("--device", choices=["cpu", "cuda"],
                   help="train and tune on this device, whatever the file says (cuda: a GPU)")
    r.set_defaults(func=run)


@contextlib.contextmanager
def _stage_client(pipe: Pipeline) -> Iterator:
    """The client of the pipeline's cluster while extract and compose run; None without one."""
    if pipe.cluster is None or not (pipe.extract or pipe.compose):
        yield None
        return
    from casbi_store.store.cluster import ClusterError, cluster_client

    from .config import ConfigError

    log.info("cluster: %s", pipe.cluster.kind)
    try:
        with cluster_client(pipe.cluster) as client:
            log.info("Dask dashboard: %s", client.dashboard_link)
            yield client
    except ClusterError as exc:  # refused jobs: the pipeline file's cluster section is wrong
        raise ConfigError(f"{pipe.source}: cluster: {exc}") from None


def on_device(pipe: Pipeline, device: str) -> Pipeline:
    """The pipeline with every tune and train config on ``device`` (validated: 'cuda' without a
    GPU is an ``InputError``)."""
    from casbi_store import InputError
    from casbi_store.learn.trainer import TrainConfig

    try:
        TrainConfig(device=device)
    except ValueError as exc:  # the --device option
        raise InputError(f"--device: {exc}") from exc
    move = lambda m: dataclasses.replace(m, config=dataclasses.replace(m.config, device=device))  # noqa: E731
    if pipe.train:
        pipe = dataclasses.replace(pipe, train=dataclasses.replace(
            pipe.train, models=tuple(move(m) for m in pipe.train.models)))
    if pipe.tune:
        pipe = dataclasses.replace(pipe, tune=dataclasses.replace(pipe.tune, studies=tuple(
            dataclasses.replace(s, model=move(s.model)) for s in pipe.tune.studies)))
    return pipe


def run_pipeline(pipeline: str | os.PathLike, *, progress: bool = True,
                 device: str | None = None) -> int:
    """Validate the pipeline file, then run its stages in order (``device``: every tune and
    train on it)."""
    pipe = load_pipeline(pipeline)
    if pipe.compose and pipe.compose.catalog:  # refused now, not after the extraction
        from casbi_store.compose.catalog import check_catalog

        check_catalog(pipe.path(pipe.compose.catalog), pipe.path(pipe.extract.store))
    if device:
        pipe = on_device(pipe, device)
    suite = None
    if pipe.mock:
        m = pipe.mock
        suite = pipe.path(m.out)
        log.info("stage mock: preset %s, seed %s -> %s", m.preset, m.seed, suite)
        spec = suite_spec(m.preset, seed=m.seed, defects=m.defects, physics=m.physics, **m.sizes())
        log.info(make_suite(suite, spec, workers=m.workers, progress=progress))
    with _stage_client(pipe) as client:
        if pipe.extract:
            _extract_stage(pipe, suite, client, progress)
        if pipe.surrogate:
            _surrogate_stage(pipe, progress)
        if pipe.compose:
            catalog = str(pipe.path(pipe.compose.catalog)) if pipe.compose.catalog else None
            for spec in pipe.compose.sets:
                compose_and_register(pipe.path(pipe.extract.store), spec, catalog,
                                     progress=progress)
        if pipe.external:
            _external_stage(pipe, client, progress)
    if pipe.tune:
        from casbi_store.learn.tune import tuned_parameters  # optuna: only when a pipeline tunes

        for study in pipe.tune.studies:
            m = study.model
            log.info("stage tune: %s on %s:%s, %d trials of %s -> %s", m.task, m.set, m.version,
                     study.trials, ", ".join(tuned_parameters(m.task, study.search)),
                     pipe.path(m.out))
            tune_task(pipe.path(pipe.extract.store), m.set, m.version, m.task, pipe.path(m.out),
                      study.trials, m.config, search=study.search)
    if pipe.train:
        for m in pipe.train.models:
            config = m.config
            if m.tuned:
                config = tuned_config(pipe.path(m.tuned), config)
                log.info("stage train: %s with the options of %s", m.task, pipe.path(m.tuned))
            log.info("stage train: %s on %s:%s -> %s", m.task, m.set, m.version, pipe.path(m.out))
            train_model(pipe.path(pipe.extract.store), m.set, m.version, m.task, pipe.path(m.out),
                        config, per_member=False)
    if pipe.survey:  # before evaluate: the report shows its survey-style inference
        sv = pipe.survey
        name, _, version = sv.set.partition(":")
        log.info("stage survey: %d tables of %s %s -> %s", sv.tables, sv.set, sv.split,
                 pipe.path(sv.out))
        survey_check(pipe.path(pipe.extract.store), name, version,
                     [str(pipe.path(m)) for m in sv.models], pipe.path(sv.out), split=sv.split,
                     tables=sv.tables, observation=sv.observation, samples=sv.samples,
                     ranks=sv.ranks, seed=sv.seed)
    if pipe.evaluate:
        ev = pipe.evaluate
        against = parse_against(str(pipe.path(ev.against))) if ev.against else None
        if pipe.external:
            against = pipe.external.against(pipe.workdir)
        evaluate_models([str(pipe.path(m)) for m in ev.models], str(pipe.path(ev.out)),
                        split=ev.split, halos=ev.halos, samples=ev.samples, seed=ev.seed,
                        against=against, surrogate_validation=(
                            str(pipe.path(pipe.surrogate.validation)) if pipe.surrogate else None),
                        survey=str(pipe.path(pipe.survey.out)) if pipe.survey else None)
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


def _external_stage(pipe: Pipeline, client, progress: bool) -> None:
    """The external condition's suite (mock), store (extracted with the main store's bin edges,
    so the models read it) and set (composed from it alone)."""
    from casbi_store.store.binning import Binning, BinningSpec
    from casbi_store.store.io import store_attrs

    ext = pipe.external
    folder = pipe.path(ext.out)
    m = ext.mock
    log.info("stage external: preset %s, seed %s -> %s", m.preset, m.seed, folder)
    spec = suite_spec(m.preset, seed=m.seed, defects=m.defects, physics=m.physics, **m.sizes())
    log.info(make_suite(folder / "suite", spec, workers=m.workers, progress=progress))
    main = Binning.from_dict(store_attrs(str(pipe.path(pipe.extract.store)))[S.ATTR_BINNING])
    binning = BinningSpec(method="fixed", n_bins=main.spec.n_bins, feh_range=main.feh_range,
                          ofe_range=main.ofe_range)  # the same linspace edges
    store = folder / "store.zarr"
    extract(folder / "suite", store, settings=pipe.extract.settings(), binning=binning,
            cluster=None if client is not None else pipe.extract.cluster_spec(), client=client,
            progress=progress)
    compose_and_register(store, ext.set, None, progress=progress)
    print(f"  external   {store}   (judged by evaluate as the external condition)")


def _surrogate_stage(pipe: Pipeline, progress: bool) -> None:
    """Train (or resume; a finished model is kept) the surrogate on the store, then validate it
    on its held-out simulations unless that validation is already there."""
    import time

    from casbi_store.surrogate import train_surrogate, validate_surrogate

    st = pipe.surrogate
    store, model, folder = pipe.path(pipe.extract.store), pipe.path(st.out), pipe.path(st.validation)
    start = time.perf_counter()
    log.info("stage surrogate: %s -> %s", store, model)
    history = train_surrogate(store, model, st.config(), progress=progress)["history"]
    trained = time.perf_counter() - start
    if not (folder / "validation.json").exists():
        validate_surrogate(model, folder, seed=st.seed, density_stars=st.density_stars,
                           n_figure=st.figures)
    summary = validation_summary(folder)
    log.info("stage surrogate: %d epochs, %.0f s training, %.0f s in all; %s", len(history), trained,
             time.perf_counter() - start, summary)
    print(f"  surrogate  {model}   validation {folder / 'validation.json'}\n             {summary}")


def validation_summary(folder) -> str:
    """One line: the median JSD of surrogate and baseline planes on the held-out snapshots."""
    import json

    result = json.loads((folder / "validation.json").read_text())
    jsd = result["summary"]["jsd"]
    return (f"held-out snapshots {result['n_heldout_snapshots']}: median JSD surrogate "
            f"{jsd['median_surrogate']:.3f}, nearest-theta baseline {jsd['median_baseline']:.3f}")


def run(args: argparse.Namespace) -> int:
    return run_pipeline(args.pipeline, progress=not args.quiet, device=args.device)
