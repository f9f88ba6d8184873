"""``casbi-store extract``: every snapshot of a suite into a Zarr store, on a Dask cluster."""

from __future__ import annotations

import argparse
import os

from casbi_store import InputError
from casbi_store.store.binning import BinningSpec
from casbi_store.store.extract import MAIN_HALO_RULES, ExtractionSettings


def add_parser(sub) -> None:
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
    e.set_defaults(func=run)


def binning_from_options(percentiles: tuple[float, float], feh_range: tuple | None,
                         ofe_range: tuple | None, n_bins: int) -> BinningSpec:
    """Fixed binning when both ranges are given, percentile clipping otherwise."""
    if feh_range or ofe_range:
        if not (feh_range and ofe_range):
            raise InputError("--feh-range and --ofe-range go together (fixed binning)")
        return BinningSpec(method="fixed", feh_range=tuple(feh_range),
                           ofe_range=tuple(ofe_range), n_bins=n_bins)
    return BinningSpec(method="percentile", percentiles=tuple(percentiles), n_bins=n_bins)


def extract(suite: str | os.PathLike, store: str | os.PathLike, *,
            settings: ExtractionSettings, binning: BinningSpec, cluster=None, client=None,
            retry_failed: bool = False, progress: bool = True):
    """Extract ``suite`` into ``store`` on ``cluster`` (a ``cluster.ClusterSpec``; default: a
    LocalCluster) or an open ``client``, print what the run did and return its RunSummary."""
    from casbi_store.store.extraction_run import extract_suite

    summary = extract_suite(suite, store, settings=settings, binning=binning, cluster=cluster,
                            client=client, retry_failed=retry_failed, progress=progress)
    print(summary.as_text())
    return summary


def run(args: argparse.Namespace) -> int:
    from casbi_store.store.cluster import ClusterSpec

    settings = ExtractionSettings(main_halo=args.main_halo, mstar_limit=args.mstar_limit)
    extract(args.suite, args.store, settings=settings,
            binning=binning_from_options(args.percentiles, args.feh_range, args.ofe_range,
                                         args.bins),
            cluster=ClusterSpec.from_options(args.scheduler, args.workers),
            retry_failed=args.retry_failed, progress=not args.quiet)
    return 0
