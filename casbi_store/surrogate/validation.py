"""Validation of a surrogate on the simulations held out of its training.

For each held-out snapshot, its true plane (the store's histogram) is compared with

- ``surrogate``: a block drawn at its θ with the star count of the fitted relation (what a
  composition would use),
- ``surrogate_density``: a block of ``density_stars`` stars at its θ (the model's density, little
  shot noise),
- ``baseline``: the plane of the training galaxy nearest in standardised θ,

by the Jensen-Shannon divergence of the normalised planes, the 1-D Wasserstein distances of the
[Fe/H] and [O/Fe] marginals, and two physical checks: the error on the median [Fe/H] (the
mass-metallicity relation) and on the [Fe/H] of the [O/Fe] knee. ``validation.json`` gives the
per-snapshot values, each distance's median per kind and the surrogate's win fraction against the
baseline, the mass-metallicity relations fitted on each kind's planes, a classifier two-sample
test (true vs surrogate, true vs baseline) and the smoothness of an interpolation strip.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from casbi_store import InputError
from casbi_store.store import schema as S
from casbi_store.store.atomic import atomic_write_text
from casbi_store.store.io import open_store

from .data import THETA_NAMES, read_galaxies, store_binning
from .figures import plot_physics, plot_planes, plot_strip
from .metrics import (
    classifier_auc,
    js_divergence,
    knee_feh,
    marginal_distances,
    median_feh,
    nearest_theta,
)
from .model import Surrogate, load_surrogate, split_rows

log = logging.getLogger(__name__)

KINDS = ("surrogate", "surrogate_density", "baseline")
METRICS = ("jsd", "w1_feh", "w1_ofe", "abs_d_median_feh", "abs_d_knee_feh")
FIGURES = {"planes": "planes.png", "strip": "interpolation_strip.png", "physics": "physics.png"}
STRIP_STEPS = 7
STRIP_NEIGHBOURS = 5
LARGE = 1000  # snapshots with at least this many stars in the plane: distances little shot noise


def _finite_or_none(value):
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    return value


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    return _finite_or_none(obj)


def plane_metrics(true: np.ndarray, other: np.ndarray, feh_edges: np.ndarray,
                  ofe_edges: np.ndarray) -> dict[str, float]:
    """Every distance of one plane to the true one (METRICS)."""
    out = marginal_distances(true, other, feh_edges, ofe_edges)
    out["abs_d_median_feh"] = abs(median_feh(other, feh_edges) - median_feh(true, feh_edges))
    out["abs_d_knee_feh"] = abs(knee_feh(other, feh_edges, ofe_edges)
                                - knee_feh(true, feh_edges, ofe_edges))
    return out


def summarise(rows: list[dict]) -> dict:
    """Median of each distance per kind, and the surrogate's win fraction against the baseline
    (over snapshots where both are finite; a tie counts half)."""
    summary = {}
    for metric in METRICS:
        entry = {}
        values = {k: np.array([r[k][metric] for r in rows], dtype=np.float64) for k in KINDS}
        for kind in KINDS:
            finite = values[kind][np.isfinite(values[kind])]
            entry[f"median_{kind}"] = float(np.median(finite)) if len(finite) else None
        for kind in ("surrogate", "surrogate_density"):
            both = np.isfinite(values[kind]) & np.isfinite(values["baseline"])
            a, b = values[kind][both], values["baseline"][both]
            entry[f"win_fraction_{kind}"] = (float(np.mean((a < b) + 0.5 * (a == b)))
                                             if both.any() else None)
            entry[f"n_compared_{kind}"] = int(both.sum())
            ms, mb = entry[f"median_{kind}"], entry["median_baseline"]
            entry[f"{kind}_beats_baseline"] = (ms < mb) if ms is not None and mb is not None else None
        summary[metric] = entry
    return summary


def gap_path(train_theta: np.ndarray, steps: int = STRIP_STEPS) -> tuple[int, int, np.ndarray]:
    """A walk across a gap of the suite: of each training galaxy's ``STRIP_NEIGHBOURS`` nearest
    neighbours (standardised θ), the pair whose midpoint lies farthest from every training
    galaxy; returns the two rows and ``steps`` θ evenly spaced between them."""
    scale = train_theta.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    z = train_theta / scale
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    best, pair = -1.0, (0, 1)
    for i in range(len(z)):
        for j in np.argsort(d[i])[:STRIP_NEIGHBOURS]:
            if not np.isfinite(d[i, j]):
                continue
            mid = (z[i] + z[j]) / 2
            empty = float(np.sqrt(((z - mid) ** 2).sum(-1)).min())
            if empty > best:
                best, pair = empty, (i, int(j))
    a, b = sorted(pair, key=lambda k: train_theta[k, 0])
    t = np.linspace(0, 1, steps)[:, None]
    return a, b, train_theta[a] * (1 - t) + train_theta[b] * t


def validate_surrogate(model: str | os.PathLike | Surrogate, out: str | os.PathLike, *,
                       seed: int = 0, density_stars: int = 10_000, n_figure: int = 4) -> dict:
    """Judge a surrogate on its held-out simulations; write validation.json and figures to ``out``."""
    sur = model if isinstance(model, Surrogate) else load_surrogate(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = sur.meta["store"]
    galaxies = read_galaxies(store)
    train_rows, held_rows = split_rows(sur.meta, galaxies)
    if len(held_rows) == 0:
        raise InputError(f"{sur.path}: trained without held-out simulations (holdout fraction 0) "
                         "or they are no longer in the store: nothing to validate on")
    binning, version = store_binning(store)
    if version != sur.binning_version:
        log.warning("%s has binning v%d, the surrogate was trained with v%d: surrogate planes are "
                    "binned with the store's current binning", store, version, sur.binning_version)
    fe, of = binning.feh_edges, binning.ofe_edges
    counts = open_store(store)[S.COUNTS.name].values
    rng = np.random.default_rng(seed)
    theta_train, theta_held = galaxies.theta[train_rows], galaxies.theta[held_rows]
    log.info("validating %s on %d snapshots of %d held-out simulations", sur.path, len(held_rows),
             len(sur.meta["holdout_simulations"]))
    planes = {"true": counts[held_rows],
              "surrogate": sur.sample_histograms(theta_held, rng, binning=binning),
              "surrogate_density": sur.sample_histograms(theta_held, rng, binning=binning,
                                                         n_stars=density_stars)}
    nearest = train_rows[nearest_theta(theta_train, theta_held)]
    planes["baseline"] = counts[nearest]
    rows = []
    for k, g in enumerate(held_rows):
        row = {"galaxy": str(galaxies.name[g]), "simulation": str(galaxies.simulation[g]),
               **dict(zip(THETA_NAMES, galaxies.theta[g].tolist(), strict=True)),
               "n_star_true": int(planes["true"][k].sum()),
               "n_star_surrogate": int(planes["surrogate"][k].sum()),
               "baseline_galaxy": str(galaxies.name[nearest[k]])}
        for kind in KINDS:
            row[kind] = plane_metrics(planes["true"][k], planes[kind][k], fe, of)
        rows.append(row)
    physics = {}
    for kind in ("true", *KINDS):
        med = np.array([median_feh(p, fe) for p in planes[kind]])
        knees = np.array([knee_feh(p, fe, of) for p in planes[kind]])
        ok = np.isfinite(med)
        slope, intercept = (np.polyfit(theta_held[ok, 0], med[ok], 1) if ok.sum() >= 2
                            and np.ptp(theta_held[ok, 0]) > 0 else (np.nan, np.nan))
        physics[kind] = {"mzr_slope": float(slope), "mzr_intercept": float(intercept),
                         "median_feh": med.tolist(), "knee_feh": knees.tolist(),
                         "knee_found_fraction": float(np.isfinite(knees).mean())}
    sims = galaxies.simulation[held_rows].astype(str)
    c2st = {f"true_vs_{kind}": classifier_auc(planes["true"], planes[kind], sims) for kind in KINDS}
    a, b, path = gap_path(theta_train)
    strip = sur.sample_histograms(path, np.random.default_rng(seed + 1), binning=binning,
                                  n_stars=density_stars)
    strip_info = {"from": str(galaxies.name[train_rows[a]]), "to": str(galaxies.name[train_rows[b]]),
                  "theta": path.tolist(),
                  "consecutive_jsd": [js_divergence(strip[i], strip[i + 1])
                                      for i in range(len(strip) - 1)],
                  "endpoint_jsd": [js_divergence(counts[train_rows[a]], strip[0]),
                                   js_divergence(counts[train_rows[b]], strip[-1])]}
    result = _clean({
        "model": str(sur.path), "store": store, "seed": seed, "density_stars": density_stars,
        "binning_version": version, "holdout_simulations": sur.meta["holdout_simulations"],
        "n_heldout_snapshots": len(held_rows), "n_train_galaxies": len(train_rows),
        "summary": summarise(rows),
        "summary_large": summarise([r for r in rows if r["n_star_true"] >= LARGE]),
        "n_large": sum(r["n_star_true"] >= LARGE for r in rows),
        "physics": physics, "classifier_two_sample": c2st,
        "interpolation_strip": strip_info, "snapshots": rows,
    })
    show = np.argsort(theta_held[:, 0])[np.linspace(0, len(held_rows) - 1,
                                                    min(n_figure, len(held_rows))).round().astype(int)]
    labels = [f"{galaxies.name[held_rows[k]]}\nlog M* {theta_held[k, 0]:.2f}, τ {theta_held[k, 2]:.1f}"
              for k in show]
    plot_planes({kind: planes[kind][show] for kind in ("true", *KINDS)}, labels,
                [str(galaxies.name[nearest[k]]) for k in show], fe, of, out / FIGURES["planes"])
    plot_strip(strip, path, counts[train_rows[a]], counts[train_rows[b]],
               (strip_info["from"], strip_info["to"]), fe, of, out / FIGURES["strip"])
    plot_physics(theta_held[:, 0], physics, out / FIGURES["physics"])
    result["figures"] = {k: str(v) for k, v in figure_paths(out).items()}
    atomic_write_text(out / "validation.json", json.dumps(result, indent=1))
    return result


def figure_paths(out: str | os.PathLike) -> dict[str, Path]:
    """The validation figures written in ``out`` (name -> path), for a report to embed."""
    out = Path(out)
    return {name: out / file for name, file in FIGURES.items() if (out / file).exists()}
