"""``casbi-store plot``: chemical planes and trends of a store, as PNG."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_parser(sub) -> None:
    pl = sub.add_parser("plot", help="chemical planes and trends of a store, as PNG")
    pl.add_argument("store")
    pl.add_argument("--out", default="plots", help="folder for the PNG files")
    pl.set_defaults(func=run)


def plot_store(store: str | os.PathLike, out: str | os.PathLike) -> list[Path]:
    """Write the chemical planes and trends of ``store`` into the folder ``out``; their paths."""
    from casbi_store.plots.planes import plot_chemical_planes, plot_trends
    from casbi_store.store.io import open_store

    ds = open_store(store).load()
    return [plot_chemical_planes(ds, Path(out) / "chemical_planes.png"),
            plot_trends(ds, Path(out) / "trends.png")]


def run(args: argparse.Namespace) -> int:
    for path in plot_store(args.store, args.out):
        print(path)
    return 0
