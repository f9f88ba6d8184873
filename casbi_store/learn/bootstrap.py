"""Ensemble members that see different simulations: a bootstrap of the training suite.

Why (issue 23): a training suite is a finite draw of galaxies, and an ensemble whose members all
saw the same galaxies agrees with itself exactly where it has learnt those galaxies, so the
mixture carries none of the uncertainty of having seen only this suite. Here each member draws
the training set's simulations with replacement (as many as there are) and trains on the halos
whose top block (rank 1, the most massive: what the networks tend to memorise) comes from a
drawn simulation, each as often as its simulation was drawn; a halo whose top galaxy's
simulation was not drawn is out of that member's bag (about a third of them). Members then
disagree on halos whose top block lies where few simulations had galaxies, and the mixture
widens there. The other blocks of a halo are left as composed: they are the background the
plane of the top block is read against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from casbi_store import InputError
from casbi_store.store import schema as S
from casbi_store.store import trainingsets
from casbi_store.store.io import as_strings, open_store


@dataclass(frozen=True)
class Bag:
    """One member's training rows (``rows``: indices into the split, repeated as often as the
    top block's simulation was drawn) and what was drawn (``simulations``: name -> times)."""

    rows: np.ndarray
    simulations: dict[str, int]
    n_halos: int

    @property
    def in_bag_fraction(self) -> float:
        """The split's halos this member trains on (at least once)."""
        return float(len(np.unique(self.rows))) / max(self.n_halos, 1)


def top_block_simulations(store: str | os.PathLike, name: str, version: str, split: str = "train",
                          storage_options: dict | None = None) -> np.ndarray:
    """The simulation (folder name) of each halo's top block in a split of a published set."""
    group = trainingsets.open_split_group(store, name, version, split, storage_options)
    members = np.asarray(group[S.MEMBERS.name][:, 0])
    if (members < 0).any():
        raise InputError(f"{store}: {name}:{version} holds surrogate-made top blocks, which belong "
                         "to no simulation: a bootstrap by simulation needs the store's galaxies")
    simulations = np.asarray(as_strings(open_store(store, storage_options)[S.SIMULATION.name].values))
    return simulations[members]


def simulation_bag(top_simulations: np.ndarray, seed: int) -> Bag:
    """A bootstrap draw of the simulations that top the split's halos (``top_simulations``, one
    per halo), and the rows it keeps. Deterministic given ``seed``."""
    names = np.unique(top_simulations)
    drawn = np.random.default_rng((seed, 2303)).choice(names, size=len(names), replace=True)
    times = {str(k): int(v) for k, v in zip(*np.unique(drawn, return_counts=True), strict=True)}
    weight = np.array([times.get(s, 0) for s in top_simulations], dtype=np.int64)
    rows = np.repeat(np.arange(len(top_simulations)), weight)
    return Bag(rows=rows, simulations=times, n_halos=len(top_simulations))
