"""Whether an answer rests on the training suite: a signal for posteriors not to trust.

A network trained on a finite suite answers with the galaxies it knows. Where the suite is thin
(above all at and beyond its most massive galaxies, which one or two simulations provide), a
halo of new galaxies gets a confident answer copied from those few simulations (issue 23). The
misspecification score does not see it: the physics is the same.

Two signals; either flags an answer (``flag_answer``):

1. The flow's own mass outside the training box. For a halo unlike every training halo (its
   top block beyond the suite's galaxies) most of the flow's draws fall outside the range of
   the training parameters, and ``infer`` keeps the few inside (a truncated, still confident
   posterior): fewer than ``MIN_INSIDE`` of the first draws inside flags it.
2. ``supported_fraction``: the share of the posterior's top-block samples that have a training
   galaxy within ``SCALES`` (0.1 dex in M*); fewer than ``MIN_SUPPORTED`` flags it (the posterior
   sits in a gap between the suite's galaxies or beyond them). ``support`` counts the distinct
   training simulations near a point. The training blocks are read once per model from its
   training set's train split and the store's galaxy table (``training_blocks``).

Measured in bench/README.md ("Unseen galaxies").
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from casbi_store.store import schema as S
from casbi_store.store import trainingsets

# log10 M* (dex), log10 M_dm (dex), tau (Gyr): the neighbourhood is 0.1 dex in M* alone (M_dm
# and tau scaled by infinity drop out); in three dimensions a posterior's samples almost never
# land that near a galaxy, in distribution too (96% of the demo's training halos were flagged)
SCALES = np.array([0.1, np.inf, np.inf])
MIN_SIMULATIONS = 1
MIN_SUPPORTED = 0.5  # share of the top block's posterior samples that must have a neighbour
MIN_INSIDE = 0.5  # share of the flow's draws that must fall inside the training box


class ThinSupportWarning(UserWarning):
    """The posterior's top block has no training galaxy nearby (fewer than ``MIN_SIMULATIONS``
    training simulations within ``SCALES``)."""


@dataclass(frozen=True)
class TrainingBlocks:
    """Every distinct building block of a training split: its theta and its simulation."""

    theta: np.ndarray  # (n, 3) log10 M*/Msol, log10 M_dm/Msol, tau/Gyr
    simulation: np.ndarray  # (n,) integer id of the simulation

    @property
    def n_simulations(self) -> int:
        return len(np.unique(self.simulation))


@lru_cache(maxsize=8)
def training_blocks(store: str, set_name: str, version: str) -> TrainingBlocks:
    """The building blocks of a set's train split (real galaxies of the store)."""
    from casbi_store.store.io import open_store

    members = np.asarray(trainingsets.open_split_group(store, set_name, version, "train")[
        S.MEMBERS.name][:])
    used = np.unique(members[members >= 0])
    galaxies = open_store(store)
    mstar = galaxies[S.MSTAR.name].values[used]
    mdm = galaxies[S.MDM.name].values[used]
    tau = galaxies[S.TIME.name].values[used]
    _, sim = np.unique(np.asarray([str(s) for s in galaxies[S.SIMULATION.name].values[used]]),
                       return_inverse=True)
    theta = np.stack([np.log10(mstar), np.log10(mdm), tau], axis=1)
    return TrainingBlocks(theta=theta, simulation=sim)


def model_blocks(meta: dict) -> TrainingBlocks | None:
    """The training blocks of a model folder's set, or None where its store cannot be read
    (a model used away from its store) or its blocks are not the store's (surrogate sets)."""
    try:
        return training_blocks(os.fspath(meta["store"]), meta["set"], meta["version"])
    except Exception:  # noqa: BLE001 - an unreadable or moved store: no signal, not an error
        return None


def _near(blocks: TrainingBlocks, points: np.ndarray) -> np.ndarray:
    """(n, 3) finite points -> (n, blocks) mask of the training blocks within ``SCALES``."""
    d = (points[:, None, :] - blocks.theta[None]) / SCALES
    return (d ** 2).sum(axis=-1) <= 1


def support(blocks: TrainingBlocks, theta: np.ndarray) -> np.ndarray:
    """For each row of ``theta`` (n, 3), the training simulations with a block within
    ``SCALES`` (standardised distance <= 1); NaN rows get 0."""
    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    out = np.zeros(len(theta), dtype=np.int64)
    finite = np.isfinite(theta).all(axis=1)
    if finite.any():
        out[finite] = [len(np.unique(blocks.simulation[near]))
                       for near in _near(blocks, theta[finite])]
    return out


def flagged(counts: np.ndarray | int) -> np.ndarray | bool:
    return np.asarray(counts) < MIN_SIMULATIONS


def supported_fraction(blocks: TrainingBlocks, samples: np.ndarray) -> np.ndarray:
    """The share of a posterior's top-block samples with a training galaxy within ``SCALES``:
    ``samples`` (S, halos, 3) or (S, 3) -> (halos,) or a scalar (NaN samples not counted)."""
    samples = np.asarray(samples, dtype=np.float64)
    one = samples.ndim == 2
    samples = samples[:, None] if one else samples
    out = np.full(samples.shape[1], np.nan)
    for h in range(samples.shape[1]):
        s = samples[:, h]
        s = s[np.isfinite(s).all(axis=1)]
        if len(s):
            out[h] = float(_near(blocks, s).any(axis=1).mean())
    return out[0] if one else out


def unsupported(fraction: np.ndarray | float) -> np.ndarray | bool:
    """The signal: fewer than ``MIN_SUPPORTED`` of the posterior's top-block samples lie near a
    training galaxy (the posterior sits in a gap between the suite's galaxies or beyond them)."""
    return np.asarray(fraction) < MIN_SUPPORTED


def flag_answer(fraction: np.ndarray | float, inside: np.ndarray | float) -> np.ndarray | bool:
    """Both signals: the flow puts most of its mass outside the training box (the halo is
    unlike every training halo), or the top block's samples sit where no training galaxy is
    (``fraction`` < 0: unknown, that part of the signal is off)."""
    fraction = np.asarray(fraction)
    return (np.asarray(inside) < MIN_INSIDE) | ((fraction >= 0) & unsupported(fraction))


def warn_if_thin(fraction: float, inside: float, where: str) -> None:
    if inside < MIN_INSIDE:
        warnings.warn(f"{where}: only {100 * inside:.0f}% of the flow's draws fall inside the "
                      "training range (the samples kept are truncated to it): this halo is unlike "
                      "every training halo, e.g. its top block lies beyond the training suite's "
                      "galaxies; do not trust it", ThinSupportWarning, stacklevel=3)
    elif fraction >= 0 and unsupported(fraction):
        warnings.warn(f"{where}: {100 * fraction:.0f}% of the posterior's top-block samples have a "
                      "training galaxy within 0.1 dex in M*: it lies "
                      "between or beyond the training "
                      "suite's galaxies, where the networks were never shown the answer; do not "
                      "trust it without a larger training suite", ThinSupportWarning, stacklevel=3)
