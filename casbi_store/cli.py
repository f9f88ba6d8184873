"""``casbi-store``: the command line. Validates arguments, then calls the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

from . import __version__, cli_observe
from .binning import BinningSpec
from .config import ConfigError, load_pipeline
from .extract import MAIN_HALO_RULES, ExtractionSettings
from .surrogate.cli import add_parser as add_surrogate_parser
from .tasks import get_task, task_names

log = logging.getLogger("casbi_store")


PHYSICS_OPTIONS = {"ia_delay": "ia_min_delay", "dtd_slope": "dtd_slope", "yield_o_cc": "y_o_cc",
                   "yield_fe_cc": "y_fe_cc", "yield_fe_ia": "y_fe_ia", "sfe": "sfe"}


def _cmd_mock(args) -> int:
    from .mock import Physics, generate_suite, preset

    overrides = {k: v for k, v in {"n_simulations": args.n_simulations,
                                   "n_star_max": args.n_star_max,
                                   "n_dm_final": args.n_dm}.items() if v is not None}
    physics = {field: getattr(args, opt) for opt, field in PHYSICS_OPTIONS.items()
               if getattr(args, opt) is not None}
    if physics:
        overrides["physics"] = Physics(**physics)
    spec = preset(args.preset, seed=args.seed, defects=args.defects, **overrides)
    manifest = generate_suite(args.out, spec, workers=args.workers or os.cpu_count() or 1,
                              progress=not args.quiet)
    n_snap = sum(len(spec.steps) for _ in manifest["simulations"])
    print(f"mock suite: {len(manifest['simulations'])} simulations, ~{n_snap} snapshots in {args.out}")
    return 0


def _binning_from_args(args) -> BinningSpec:
    if args.feh_range or args.ofe_range:
        if not (args.feh_range and args.ofe_range):
            raise ValueError("--feh-range and --ofe-range go together (fixed binning)")
        return BinningSpec(method="fixed", feh_range=tuple(args.feh_range),
                           ofe_range=tuple(args.ofe_range), n_bins=args.bins)
    return BinningSpec(method="percentile", percentiles=tuple(args.percentiles), n_bins=args.bins)


def _cmd_extract(args) -> int:
    from .extraction_run import extract_suite

    summary = extract_suite(
        args.suite, args.store,
        settings=ExtractionSettings(main_halo=args.main_halo, mstar_limit=args.mstar_limit),
        binning=_binning_from_args(args), scheduler=args.scheduler, n_workers=args.workers,
        retry_failed=args.retry_failed, progress=not args.quiet)
    print(summary.as_text())
    return 0


def _compose_and_register(store, spec, catalog: str | None) -> None:
    from .compose import compose

    entry = compose(store, spec)
    counts = ", ".join(f"{k} {v}" for k, v in entry["counts"].items())
    print(f"training set {spec.name}:{spec.version}: {counts} halos, checksum {entry['checksum'][:12]}")
    if catalog:
        from .catalog import update_catalog

        path = os.path.normpath(update_catalog(catalog, store))
        print(f"  catalog    {path}")
        print(f'  load it    intake.open_catalog("{path}").{spec.name}'
              f'(version="{spec.version}", split="test").to_dask()')


def _cmd_compose(args) -> int:
    from .compose import ComposeSpec

    spec = ComposeSpec.from_yaml(args.spec)
    if args.version:
        spec = ComposeSpec.from_dict({**spec.__dict__, "version": args.version}, where=args.spec)
    _compose_and_register(args.store, spec, args.catalog)
    return 0


def _train_config(args):
    from .trainer import TrainConfig

    options = {k: getattr(args, k) for k in (
        "epochs", "batch_size", "learning_rate", "patience", "hidden_features", "num_transforms",
        "embedding_dim", "ensemble", "max_rank", "joint_n_sub", "in_memory", "seed", "device")}
    if args.conv_channels:
        options["conv_channels"] = tuple(args.conv_channels)
    return TrainConfig.from_dict({k: v for k, v in options.items() if v is not None})


def _split_set(value: str) -> tuple[str, str]:
    name, _, version = value.partition(":")
    if not version:
        raise ValueError(f"--set must be NAME:VERSION (e.g. nsub_uniform:v1), not {value!r}")
    return name, version


def _cmd_train(args) -> int:
    from .trainer import train

    name, version = _split_set(args.set)
    result = train(args.store, name, version, args.task, args.out, _train_config(args))
    for k, history in enumerate(result["members"]):
        last = history[-1]
        print(f"  member {k}: {len(history)} epochs, best validation loss "
              f"{result['best_val_loss'][k]:.4f}, weight {result['weights'][k]:.3f} "
              f"(last: train {last['train_loss']:.4f}, val {last['val_loss']:.4f})")
    print(f"{args.task} model in {args.out}")
    return 0


def _cmd_tune(args) -> int:
    from .tune import tune

    name, version = _split_set(args.set)
    result = tune(args.store, name, version, args.task, args.out, args.trials, _train_config(args),
                  seed=args.sampler_seed)
    for row in result["trials"]:
        value = "-" if row["value"] is None else f"{row['value']:.4f}"
        params = ", ".join(f"{k}={row[k]:.3g}" if isinstance(row[k], float) else f"{k}={row[k]}"
                           for k in result["params"] or {})
        print(f"  trial {row['trial']:>3}  {row['state']:<8}  log-likelihood {value:>9}  {params}")
    if result["best_trial"] is None:
        print(f"no complete trial yet; re-run to resume ({args.out}/optuna.db)")
        return 1
    print(f"best: trial {result['best_trial']}, validation log-likelihood {result['value']:.4f}, "
          f"model {result['model']} (summary: {args.out}/best.json)")
    return 0


def _cmd_infer(args) -> int:
    import time

    from .infer import corner_plot, infer, read_histogram, read_star_table
    from .modelfolder import load_model

    models = [load_model(m) for m in args.models]
    if bool(args.histogram) == bool(args.stars):
        raise ValueError("give exactly one of --histogram (.npy/.nc) or --stars (.csv)")
    if args.stars:
        x, summary = read_star_table(args.stars, models[0].stats["feh_edges"],
                                     models[0].stats["ofe_edges"])
        print(f"{args.stars}: {summary['binned']} of {summary['stars']} stars binned "
              f"({summary['outside']} outside the store's binning or not finite)")
    else:
        x = read_histogram(args.histogram)
    start = time.perf_counter()
    samples = infer(models, x, n_samples=args.samples, seed=args.seed, nsub_draw=args.nsub_draw,
                    ranks=args.ranks)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    samples.to_netcdf(out)
    png = corner_plot(samples, out.with_suffix(".png"))
    print(f"{args.samples} posterior samples in {seconds:.2f} s -> {out}, corner plot {png}")
    for name, var in samples.data_vars.items():
        for label, values in ([(f"{name}_{r}", var.sel(rank=r).values) for r in var["rank"].values]
                              if "rank" in var.dims else [(name, var.values)]):
            values = values[np.isfinite(values)]
            if len(values):
                lo, med, hi = np.percentile(values, [16, 50, 84])
                print(f"  {label:<16} {med:10.3f}  (68%: {lo:.3f} .. {hi:.3f}) {var.attrs['units']}")
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluate import TARGETS, evaluate, headline, meets
    from .report import corner_for_halo, write_report

    results = evaluate(args.models, split=args.split, max_halos=args.halos, n_samples=args.samples,
                       seed=args.seed)
    out = Path(args.out)
    corner = corner_for_halo(results, out / "figures" / "corner.png")
    page = write_report(results, out, corner=corner)
    for path, r in results["models"].items():
        m = r["metrics"]
        shown = {k: v for k, v in m.items() if k in (
            "accuracy", "median_rel_error", "coverage_68", "coverage_95", "r2_log10_mstar_1",
            "bias_log10_mstar_1", "tarp_max_deviation", "tarp_atc", "seconds_10k_samples")}
        print(f"{r['task']:<16} {path}: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
    print("targets (the trainer issue's, on the demo set):")
    for metric, value in headline(results).items():
        kind, target = TARGETS[metric]
        print(f"  {metric:<24} {value:7.3f}  target {kind} {target}: "
              f"{'met' if meets(metric, value) else 'NOT met'}")
    print(f"report     {page}")
    return 0


def _cmd_validate(args) -> int:
    from .validate import validate_store

    problems = validate_store(args.store)
    for problem in problems:
        print(problem)
    print(f"{args.store}: {'valid' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def _cmd_ls(args) -> int:
    from .store import describe_store

    print(describe_store(args.store))
    return 0


def _cmd_unlock(args) -> int:
    from .locks import break_lock

    holder = break_lock(args.store, args.name, force=args.force)
    print(f"{args.store}: broke lock {args.name!r} held by host {holder.get('host', '?')}, "
          f"pid {holder.get('pid', '?')} since {holder.get('started_utc', '?')}")
    return 0


def _cmd_plot(args) -> int:
    from .plots import plot_chemical_planes, plot_trends
    from .store import open_store

    ds = open_store(args.store).load()
    out = Path(args.out)
    print(plot_chemical_planes(ds, out / "chemical_planes.png"))
    print(plot_trends(ds, out / "trends.png"))
    return 0


def _cmd_run(args) -> int:
    from .extraction_run import extract_suite
    from .mock import generate_suite, preset
    from .plots import plot_chemical_planes, plot_trends
    from .store import describe_store, open_store

    pipe = load_pipeline(args.pipeline)
    suite = None
    if pipe.mock:
        m = pipe.mock
        suite = pipe.path(m.out)
        log.info("stage mock: preset %s, seed %s -> %s", m.preset, m.seed, suite)
        generate_suite(suite, preset(m.preset, seed=m.seed, defects=m.defects),
                       workers=m.workers or os.cpu_count() or 1, progress=not args.quiet)
    if pipe.extract:
        e = pipe.extract
        suite = pipe.path(e.suite) if e.suite else suite
        store = pipe.path(e.store)
        log.info("stage extract: %s -> %s", suite, store)
        summary = extract_suite(suite, store, settings=e.settings(), binning=e.binning_spec(),
                                scheduler=e.scheduler, n_workers=e.workers,
                                progress=not args.quiet)
        print(summary.as_text())
        ds = open_store(store).load()
        planes = plot_chemical_planes(ds, pipe.path("plots/chemical_planes.png"))
        trends = plot_trends(ds, pipe.path("plots/trends.png"))
        print()
        print(describe_store(store))
        print("\nwhere to look:")
        print(f"  suite      {suite}")
        print(f"  store      {store}   (casbi_store.open_store({str(store)!r}))")
        print(f"  pictures   {planes}\n             {trends}")
        print(f"  listing    casbi-store ls {store}")
    if pipe.compose:
        catalog = str(pipe.path(pipe.compose.catalog)) if pipe.compose.catalog else None
        for spec in pipe.compose.sets:
            _compose_and_register(pipe.path(pipe.extract.store), spec, catalog)
    if pipe.train:
        from .trainer import train

        for m in pipe.train.models:
            log.info("stage train: %s on %s:%s -> %s", m.task, m.set, m.version, pipe.path(m.out))
            result = train(pipe.path(pipe.extract.store), m.set, m.version, m.task,
                           pipe.path(m.out), m.config)
            seconds = sum(r["seconds"] for h in result["members"] for r in h)
            print(f"model {m.task:<16} {pipe.path(m.out)}: {len(result['members'])} member(s), "
                  f"best validation loss {min(result['best_val_loss']):.3f}, {seconds:.0f} s")
    if pipe.evaluate:
        ev = pipe.evaluate
        args = argparse.Namespace(models=[str(pipe.path(m)) for m in ev.models], split=ev.split,
                                  out=str(pipe.path(ev.out)), halos=ev.halos, samples=ev.samples,
                                  seed=ev.seed)
        _cmd_evaluate(args)
    return 0


TUNED_OPTIONS = ("batch_size", "learning_rate", "hidden_features", "num_transforms", "embedding_dim")


def _add_config_options(p: argparse.ArgumentParser, tuned: bool = False) -> None:
    """The TrainConfig options of `train`; `tune` samples TUNED_OPTIONS instead of taking them."""
    p.add_argument("--epochs", type=int, help="per trial" if tuned else None)
    if not tuned:
        p.add_argument("--batch-size", type=int)
        p.add_argument("--learning-rate", type=float)
    p.add_argument("--patience", type=int, help="epochs without validation improvement to stop")
    if not tuned:
        p.add_argument("--hidden-features", type=int, help="NSF hidden features (default 100)")
        p.add_argument("--num-transforms", type=int, help="NSF transforms (default 10)")
        p.add_argument("--embedding-dim", type=int, help="CNN output features (default 128)")
    p.add_argument("--conv-channels", type=int, nargs="+", help="CNN channels per layer")
    p.add_argument("--ensemble", type=int, help="members trained independently (default 1)")
    p.add_argument("--max-rank", type=int, help="theta: ranks learnt, 1..R (0: all; default 3)")
    p.add_argument("--joint-n-sub", type=int, help="theta_joint: the fixed N_sub")
    p.add_argument("--in-memory", action="store_true", default=None,
                   help="load the split into memory instead of streaming chunks")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["cpu", "cuda"])
    if tuned:
        p.set_defaults(**dict.fromkeys(TUNED_OPTIONS))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="casbi-store", description=(
        "CASBI data product: simulation snapshots -> Zarr store of chemical-plane histograms."))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mock", help="generate a mock NIHAO suite (tipsy + AHF files)")
    m.add_argument("out", help="empty folder to write the suite into")
    m.add_argument("--preset", choices=["tiny", "demo"], default="demo")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--defects", action="store_true",
                   help="add broken inputs (truncated file, no stars, missing FeMassFrac, "
                        "no halo catalogue, a dwarf above the stellar-mass limit)")
    m.add_argument("--n-simulations", type=int, help="override the preset's number of simulations")
    m.add_argument("--n-star-max", type=int, help="cap on star particles of the largest galaxy")
    m.add_argument("--n-dm", type=int, help="dark-matter particles of a main halo at z=0")
    m.add_argument("--workers", type=int, help="processes (default: one per core)")
    ph = m.add_argument_group("chemical-evolution physics (default: the fiducial values)")
    ph.add_argument("--ia-delay", type=float, metavar="GYR",
                    help="minimum SN Ia delay for every galaxy (default: each draws 0.05-0.15)")
    ph.add_argument("--dtd-slope", type=float, help="SN Ia delay-time distribution slope (-1.1)")
    ph.add_argument("--yield-o-cc", type=float, help="core-collapse O yield (0.015)")
    ph.add_argument("--yield-fe-cc", type=float, help="core-collapse Fe yield (0.0012)")
    ph.add_argument("--yield-fe-ia", type=float, help="SN Ia Fe yield (0.0017)")
    ph.add_argument("--sfe", type=float, help="factor on the star-formation efficiency (1)")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=_cmd_mock)

    e = sub.add_parser("extract", help="extract every snapshot of a suite into a Zarr store")
    e.add_argument("suite", help="suite folder (NIHAO layout: SUITE/<sim>/<sim>.<step>)")
    e.add_argument("--store", required=True, help="Zarr store to create or update")
    e.add_argument("--scheduler", help="address of a running Dask scheduler (default: LocalCluster)")
    e.add_argument("--workers", type=int, help="LocalCluster worker processes (default: cores)")
    e.add_argument("--main-halo", choices=MAIN_HALO_RULES, default="first",
                   help="main halo: first AHF row, or the most massive (Mvir)")
    e.add_argument("--mstar-limit", type=float, default=6e9,
                   help="exclude galaxies with M* at or above this (Msun; default: LMC, 6e9)")
    e.add_argument("--percentiles", type=float, nargs=2, default=(0.01, 99.99),
                   metavar=("LO", "HI"), help="range clipping percentiles (default 0.01 99.99)")
    e.add_argument("--feh-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="fixed [Fe/H] range instead of percentiles")
    e.add_argument("--ofe-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="fixed [O/Fe] range instead of percentiles")
    e.add_argument("--bins", type=int, default=64, help="bins per axis (default 64)")
    e.add_argument("--retry-failed", action="store_true",
                   help="re-attempt snapshots recorded as failed even if unchanged")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_extract)

    c = sub.add_parser("compose", help="compose a versioned training set into the store")
    c.add_argument("store")
    c.add_argument("--spec", required=True, help="YAML spec (see pipelines/specs/)")
    c.add_argument("--version", help="override the spec's version (v1, v2, ...)")
    c.add_argument("--catalog", default="catalogs/casbi.yaml",
                   help="intake catalog to register the set in ('' for none)")
    c.set_defaults(func=_cmd_compose)

    t = sub.add_parser("train", help="train an estimator (step 1 or 2) on a training set, streaming")
    t.add_argument("store", help="store path or URL")
    t.add_argument("--set", required=True, help="NAME:VERSION of a published training set")
    t.add_argument("--task", choices=task_names(), required=True,
                   help="; ".join(f"{n}: {get_task(n).help}" for n in task_names()))
    t.add_argument("--out", required=True, help="model folder (checkpoints, weights, config)")
    _add_config_options(t)
    t.set_defaults(func=_cmd_train)

    tu = sub.add_parser("tune", help="optuna search over learning rate, batch size, flow size and "
                                     "embedding width; re-run to resume")
    tu.add_argument("store", help="store path or URL")
    tu.add_argument("--set", required=True, help="NAME:VERSION of a published training set")
    tu.add_argument("--task", choices=task_names(), required=True, help="as for train")
    tu.add_argument("--out", required=True,
                    help="tune folder: optuna.db, trial-N model folders, best.json")
    tu.add_argument("--trials", type=int, required=True,
                    help="complete trials to reach (a re-run runs only the missing ones)")
    tu.add_argument("--sampler-seed", type=int, default=0, help="TPE sampler seed (default 0)")
    _add_config_options(tu, tuned=True)
    tu.set_defaults(func=_cmd_tune)

    inf = sub.add_parser("infer", help="two-step posterior samples for one halo")
    inf.add_argument("models", nargs="+", help="model folders written by `train` (step 1 and 2)")
    inf.add_argument("--histogram", help=".npy or .nc 64x64 histogram, binned with the store's binning")
    inf.add_argument("--stars", help="CSV star table with [Fe/H] and [O/Fe] columns")
    inf.add_argument("--out", default="posterior.nc", help="NetCDF of the samples (+ .png corner)")
    inf.add_argument("--samples", type=int, default=10_000)
    inf.add_argument("--nsub-draw", choices=["mixture", "mode"], default="mixture",
                     help="condition theta on step 1's N_sub samples (mixture) or its mode")
    inf.add_argument("--ranks", type=int, default=3, help="blocks to infer, by M* rank")
    inf.add_argument("--seed", type=int, default=0)
    inf.set_defaults(func=_cmd_infer)

    cli_observe.add_parser(sub)

    ev = sub.add_parser("evaluate", help="metrics, calibration (TARP, SBC) and report.html")
    ev.add_argument("models", nargs="+", help="model folders (any of the four tasks)")
    ev.add_argument("--split", choices=["test", "val", "train"], default="test")
    ev.add_argument("--out", default="report", help="folder for report.html, figures, metrics.json")
    ev.add_argument("--halos", type=int, default=300, help="halos of the split (evenly spaced)")
    ev.add_argument("--samples", type=int, default=200, help="posterior samples per halo")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=_cmd_evaluate)

    v = sub.add_parser("validate", help="check a store: schema, chunks, counts, members, checksums")
    v.add_argument("store")
    v.set_defaults(func=_cmd_validate)

    ls = sub.add_parser("ls", help="list a store: galaxies, binning, errors, runs")
    ls.add_argument("store")
    ls.set_defaults(func=_cmd_ls)

    un = sub.add_parser("unlock", help="break a stale lock left by a killed writer")
    un.add_argument("store")
    un.add_argument("--name", default="store",
                    help="lock name: store (extraction) or set-NAME-VERSION (compose)")
    un.add_argument("--force", action="store_true",
                    help="break it even if its holder still runs on this host (dangerous)")
    un.set_defaults(func=_cmd_unlock)

    pl = sub.add_parser("plot", help="chemical planes and trends of a store, as PNG")
    pl.add_argument("store")
    pl.add_argument("--out", default="plots", help="folder for the PNG files")
    pl.set_defaults(func=_cmd_plot)

    r = sub.add_parser("run", help="run a declarative pipeline (pipelines/*.yaml)")
    r.add_argument("pipeline", help="pipeline YAML file")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=_cmd_run)

    add_surrogate_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import warnings

    # third-party noise on every sampling call (nflows' LU transform, sbi's batch capping)
    warnings.filterwarnings("ignore", message="torch.triangular_solve is deprecated")
    warnings.filterwarnings("ignore", message="Capping max_sampling_batch_size")
    warnings.filterwarnings("ignore", message="To copy construct from a tensor")
    import distributed  # noqa: F401  (configures its loggers on import; quieten them after)

    logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ConfigError, ValueError, KeyError, FileNotFoundError, FileExistsError) as exc:
        print(f"casbi-store: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from .locks import LockHeld
        from .store import StoreError

        if isinstance(exc, StoreError | LockHeld):
            print(f"casbi-store: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
