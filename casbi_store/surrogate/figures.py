"""Pictures of a surrogate's validation: planes side by side, the interpolation strip, and the
physical checks (mass-metallicity relation, [O/Fe] knee) of true, surrogate and baseline planes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from casbi_store.plots.common import plane as draw_plane
from casbi_store.plots.common import pyplot, save

TITLES = {"true": "true (held out)", "surrogate": "surrogate (N from M*)",
          "surrogate_density": "surrogate density", "baseline": "nearest-θ baseline"}


def _plane(ax, counts: np.ndarray, fe: np.ndarray, of: np.ndarray):
    return draw_plane(ax, counts, fe, of, density=True)


def plot_planes(planes: dict[str, np.ndarray], labels: list[str], baseline_names: list[str],
                fe: np.ndarray, of: np.ndarray, out: Path) -> Path:
    """One row per held-out galaxy: true, surrogate, surrogate density, baseline (normalised)."""
    plt = pyplot()
    kinds = list(planes)
    rows = len(labels)
    fig, axes = plt.subplots(rows, len(kinds), figsize=(3.0 * len(kinds), 2.6 * rows), squeeze=False,
                             sharex=True, sharey=True, constrained_layout=True)
    im = None
    for r in range(rows):
        for c, kind in enumerate(kinds):
            im = _plane(axes[r, c], planes[kind][r], fe, of)
            title = TITLES.get(kind, kind)
            if kind == "true":
                title = f"{labels[r]}\n{title}"
            elif kind == "baseline":
                title = f"{title}\n{baseline_names[r]}"
            axes[r, c].set_title(title, fontsize=7)
        axes[r, 0].set_ylabel("[O/Fe]")
    for ax in axes[-1]:
        ax.set_xlabel("[Fe/H]")
    fig.colorbar(im, ax=axes, label="fraction of stars", shrink=0.6)
    return save(fig, out, dpi=110)


def plot_strip(strip: np.ndarray, theta: np.ndarray, start: np.ndarray, stop: np.ndarray,
               names: tuple[str, str], fe: np.ndarray, of: np.ndarray, out: Path) -> Path:
    """The surrogate's planes along a straight walk in θ between two training galaxies, framed by
    their true planes."""
    plt = pyplot()
    n = len(strip) + 2
    fig, axes = plt.subplots(1, n, figsize=(2.3 * n, 2.6), sharex=True, sharey=True,
                             constrained_layout=True, squeeze=False)
    panels = [(start, f"{names[0]}\n(true)")]
    panels += [(p, f"log M* {t[0]:.2f}\nlog Mdm {t[1]:.2f}, τ {t[2]:.1f}") for p, t in zip(strip, theta,
                                                                                        strict=True)]
    panels += [(stop, f"{names[1]}\n(true)")]
    im = None
    for ax, (plane, title) in zip(axes[0], panels, strict=True):
        im = _plane(ax, plane, fe, of)
        ax.set_title(title, fontsize=7)
        ax.set_xlabel("[Fe/H]")
    axes[0, 0].set_ylabel("[O/Fe]")
    fig.colorbar(im, ax=axes, label="fraction of stars", shrink=0.8)
    return save(fig, out, dpi=110)


def plot_physics(log_mstar: np.ndarray, physics: dict, out: Path) -> Path:
    """Median [Fe/H] and knee [Fe/H] against log M* for true, surrogate and baseline planes."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    style = {"true": ("k", "o"), "surrogate": ("tab:blue", "x"), "surrogate_density": ("tab:green", "+"),
             "baseline": ("tab:red", "s")}
    for kind, values in physics.items():
        color, marker = style.get(kind, ("gray", "."))
        ax1.scatter(log_mstar, values["median_feh"], s=14, color=color, marker=marker,
                    label=f"{kind} (slope {values['mzr_slope']:.2f})", alpha=0.7,
                    facecolors="none" if marker in "os" else None)
        ax2.scatter(log_mstar, values["knee_feh"], s=14, color=color, marker=marker, label=kind,
                    alpha=0.7, facecolors="none" if marker in "os" else None)
    ax1.set_xlabel("log10 M* [Msun]")
    ax1.set_ylabel("median [Fe/H]")
    ax1.set_title("mass-metallicity relation, held-out snapshots")
    ax2.set_xlabel("log10 M* [Msun]")
    ax2.set_ylabel("[Fe/H] of the [O/Fe] knee")
    ax2.set_title("[O/Fe] knee")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    return save(fig, out, dpi=110)
