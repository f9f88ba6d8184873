"""The plotting home: matplotlib without a display, saving a figure, drawing one chemical plane.

Every picture of the package (the store's planes and trends, the surrogate's validation, the
report's figures) draws through these, so a plane looks the same wherever it appears.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, out: str | os.PathLike, dpi: int = 90) -> Path:
    """Write ``fig`` (its folder made if needed), close it, return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    return out


def plane(ax, counts: np.ndarray, feh_edges: np.ndarray, ofe_edges: np.ndarray, *,
          density: bool = False, title: str | None = None):
    """One ([Fe/H], [O/Fe]) plane on a log colour scale: counts from 1 to the maximum, or with
    ``density`` the plane divided by its total (empty bins masked, 1e-5..1e-1)."""
    from matplotlib.colors import LogNorm

    if density:
        norm = counts / max(counts.sum(), 1)
        mesh = ax.pcolormesh(feh_edges, ofe_edges, np.ma.masked_equal(norm.T, 0),
                             norm=LogNorm(vmin=1e-5, vmax=1e-1), cmap="viridis")
    else:
        mesh = ax.pcolormesh(feh_edges, ofe_edges, counts.T,
                             norm=LogNorm(vmin=1, vmax=max(counts.max(), 2)), cmap="viridis")
    if title is not None:
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("[Fe/H]")
    return mesh
