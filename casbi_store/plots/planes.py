"""Pictures of a store: chemical planes of galaxies and the trends a person checks first."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from .common import pyplot, save


def pick_galaxies(ds: xr.Dataset, n: int) -> np.ndarray:
    """Indices of ``n`` galaxies spread evenly in log stellar mass."""
    order = np.argsort(ds["mstar"].values)
    return order[np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int)]


def plot_chemical_planes(ds: xr.Dataset, out: str | os.PathLike, n: int = 12) -> Path:
    """A grid of [O/Fe]-[Fe/H] histograms (log counts) for galaxies spanning the mass range."""
    plt = pyplot()
    from matplotlib.colors import LogNorm

    idx = pick_galaxies(ds, n)
    cols = 4
    rows = int(np.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False,
                             sharex=True, sharey=True, constrained_layout=True)
    fe = ds["feh_edges"].values
    of = ds["ofe_edges"].values
    for ax, k in zip(axes.flat, idx, strict=False):
        counts = ds["counts"].isel(galaxy=int(k)).values
        im = ax.pcolormesh(fe, of, np.ma.masked_equal(counts.T, 0), norm=LogNorm(), cmap="viridis")
        g = ds.isel(galaxy=int(k))
        ax.set_title(f"{g.galaxy.item()}\nM*={float(g.mstar):.2g} Msun, τ={float(g.time):.1f} Gyr",
                     fontsize=8)
    for ax in axes.flat[len(idx):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("[Fe/H]")
    for ax in axes[:, 0]:
        ax.set_ylabel("[O/Fe]")
    fig.colorbar(im, ax=axes, label="star particles", shrink=0.6)
    return save(fig, out, dpi=110)


def plot_trends(ds: xr.Dataset, out: str | os.PathLike) -> Path:
    """Mass-metallicity relation, and mean [O/Fe] against [Fe/H] (the knee) of the last snapshots."""
    plt = pyplot()
    counts = ds["counts"].values.astype(float)
    fe_c = ds["feh_bin"].values
    of_c = ds["ofe_bin"].values
    total = counts.sum(axis=(1, 2))
    mean_feh = (counts.sum(axis=2) @ fe_c) / np.maximum(total, 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    sc = ax1.scatter(ds["mstar"].values, mean_feh, c=ds["time"].values, s=12, cmap="plasma")
    ax1.set_xscale("log")
    ax1.set_xlabel("M* [Msun]")
    ax1.set_ylabel("mean [Fe/H]")
    ax1.set_title("mass-metallicity relation")
    fig.colorbar(sc, ax=ax1, label="snapshot time τ [Gyr]")
    last = ds["time"].values >= ds["time"].values.max() - 1e-6
    order = np.argsort(ds["mstar"].values[last])
    cmap = plt.get_cmap("viridis")
    lastidx = np.flatnonzero(last)[order]
    for rank, k in enumerate(lastidx[:: max(1, len(lastidx) // 8)]):
        per_feh = counts[k].sum(axis=1)
        mean_ofe = (counts[k] @ of_c) / np.maximum(per_feh, 1)
        ok = per_feh >= 5
        ax2.plot(fe_c[ok], mean_ofe[ok], color=cmap(rank / 8),
                 label=f"M*={float(ds['mstar'].values[k]):.1e}")
    ax2.set_xlabel("[Fe/H]")
    ax2.set_ylabel("mean [O/Fe]")
    ax2.set_title("[O/Fe] knee, latest snapshots")
    ax2.legend(fontsize=7)
    return save(fig, out, dpi=110)
