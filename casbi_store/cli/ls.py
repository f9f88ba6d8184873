"""``casbi-store ls``: list a store (galaxies, binning, errors, runs, training sets)."""

from __future__ import annotations

import argparse
import os


def add_parser(sub) -> None:
    ls = sub.add_parser("ls", help="list a store: galaxies, binning, errors, runs")
    ls.add_argument("store")
    ls.set_defaults(func=run)


def list_store(store: str | os.PathLike) -> int:
    """Print the listing of ``store``."""
    from casbi_store.store.io import describe_store

    print(describe_store(store))
    return 0


def run(args: argparse.Namespace) -> int:
    return list_store(args.store)
