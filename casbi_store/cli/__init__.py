"""``casbi-store``: the command line. One module per command, each with ``add_parser(sub)``
(its options, ``func`` set to its ``run(args) -> int``) and a plain function that does the work
with typed arguments, which the pipeline runner (``run``) calls too. A new command is a new
module here, listed in ``COMMANDS``."""

from __future__ import annotations

import argparse
import sys

from casbi_store import __version__
from casbi_store.surrogate import cli as surrogate

from . import (
    calibrate_ood,
    cluster_script,
    compose,
    evaluate,
    extract,
    infer,
    ls,
    mock,
    observe,
    plot,
    run,
    survey,
    train,
    tune,
    unlock,
    validate,
)
from .common import setup_logging, user_errors

# in the order `casbi-store --help` lists them: the data flow, then store tools, then pipelines
COMMANDS = [mock, extract, compose, train, tune, calibrate_ood, infer, observe, survey, evaluate,
            surrogate, validate, ls, unlock, plot, run, cluster_script]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="casbi-store", description=(
        "CASBI data product: simulation snapshots -> Zarr store of chemical-plane histograms."))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, run the command; bad input (``common.user_errors``) is one line on stderr, rc 2."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except user_errors() as exc:
        print(f"casbi-store: error: {exc}", file=sys.stderr)
        return 2
