"""What the surrogate reads from a store: the galaxies' θ, a seeded split by simulation, and
stars sampled per galaxy by streaming the ``stars`` group chunk by chunk.

θ = (log10 M*/Msun, log10 M_dm/Msun, τ/Gyr), τ being the snapshot's cosmic time (the infall
time of a building block). Star sampling reads one Zarr chunk of ``stars`` at a time, so memory is
bounded by a chunk plus the rows drawn, whatever the size of the suite.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from casbi_store import InputError
from casbi_store.store import schema as S
from casbi_store.store.binning import Binning
from casbi_store.store.io import StoreError, as_strings, open_stars, open_store, store_attrs

THETA_NAMES = ("log10_mstar", "log10_mdm", "tau")
THETA_UNITS = ("log10 Msol", "log10 Msol", "Gyr")


@dataclass(frozen=True)
class GalaxyTable:
    """The store's galaxies, as the surrogate needs them (row order of the store)."""

    name: np.ndarray  # str objects
    simulation: np.ndarray  # str objects
    theta: np.ndarray  # (n, 3): log10 M*, log10 M_dm, tau
    n_star: np.ndarray  # int64, stars kept (rows in `stars`)
    star_offset: np.ndarray  # int64, first row in `stars`

    def __len__(self) -> int:
        return len(self.name)


def read_galaxies(store: str | os.PathLike) -> GalaxyTable:
    """The galaxies table of ``store``; a clear error if there are none."""
    ds = open_store(store)
    cols = ds[[S.SIMULATION.name, S.MSTAR.name, S.MDM.name, S.TIME.name, S.N_STAR.name,
               S.STAR_OFFSET.name]].load()
    if ds.sizes.get(S.DIM_GALAXY, 0) == 0:
        raise StoreError(f"{store}: no galaxies to train a surrogate on")
    theta = np.stack([np.log10(cols[S.MSTAR.name].values), np.log10(cols[S.MDM.name].values),
                      cols[S.TIME.name].values], axis=1).astype(np.float64)
    if not np.all(np.isfinite(theta)):
        raise StoreError(f"{store}: galaxies with non-positive M* or M_dm; cannot form log10 θ")
    return GalaxyTable(
        name=np.asarray(as_strings(ds[S.DIM_GALAXY].values), dtype=object),
        simulation=np.asarray(as_strings(cols[S.SIMULATION.name].values), dtype=object),
        theta=theta,
        n_star=cols[S.N_STAR.name].values.astype(np.int64),
        star_offset=cols[S.STAR_OFFSET.name].values.astype(np.int64),
    )


def store_binning(store: str | os.PathLike) -> tuple[Binning, int]:
    """The store's current binning and its version."""
    record = store_attrs(os.fspath(store)).get(S.ATTR_BINNING)
    if not record:
        raise StoreError(f"{store}: no binning recorded (no histograms yet)")
    return Binning.from_dict(record), int(record["version"])


def holdout_simulations(simulation: np.ndarray, fraction: float, seed: int,
                        explicit: tuple[str, ...] = ()) -> list[str]:
    """Simulations held out of training: ``explicit`` ones, or a seeded ``fraction`` of them.

    Snapshots of one simulation are strongly correlated, so the split is by simulation (as
    compose's ``split_by: simulation``). At least one simulation stays for training.
    """
    sims = np.unique(np.asarray(simulation, dtype=str))
    if explicit:
        unknown = sorted(set(explicit) - set(sims))
        if unknown:
            raise InputError(f"held-out simulation(s) {unknown} are not in the store "
                             f"(it has {len(sims)}: {', '.join(sims[:8])}{' ...' if len(sims) > 8 else ''})")
        held = sorted(set(explicit))
    else:
        if not 0 <= fraction < 1:
            raise InputError(f"holdout fraction must be in [0, 1), not {fraction}")
        n = round(fraction * len(sims))
        if fraction > 0:
            n = max(1, n)
        held = sorted(str(s) for s in sims[np.random.default_rng(seed).permutation(len(sims))[:n]])
    if len(held) >= len(sims):
        raise InputError(f"holding out {len(held)} of {len(sims)} simulations leaves none to train on")
    return held


def sample_rows(n_star: np.ndarray, star_offset: np.ndarray, per_galaxy: int,
                rng: np.random.Generator) -> np.ndarray:
    """``per_galaxy`` star rows of each galaxy, uniformly with replacement: (n_galaxy * per_galaxy,).

    Equal counts per galaxy weight every galaxy equally, whatever its number of stars.
    """
    local = np.floor(rng.random((len(n_star), per_galaxy)) * n_star[:, None]).astype(np.int64)
    return (star_offset[:, None] + local).ravel()


def read_star_rows(store: str | os.PathLike, rows: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """[Fe/H], [O/Fe] of ``rows`` of the stars group, (len(rows), 2) float32, read one chunk
    (the store's, unless ``chunk`` rows are asked for) at a time."""
    stars = open_stars(store)
    feh, ofe = stars[S.FEH.name], stars[S.OFE.name]
    chunk = chunk or int(feh.encoding.get("chunks", (S.STAR_CHUNK,))[0])
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    out = np.empty((len(rows), 2), dtype=np.float32)
    first = 0
    while first < len(ordered):
        c0 = int(ordered[first] // chunk) * chunk
        last = int(np.searchsorted(ordered, c0 + chunk, side="left"))
        span = slice(int(ordered[first]), int(ordered[last - 1]) + 1)
        local = ordered[first:last] - span.start
        out[order[first:last], 0] = feh[span].values[local]
        out[order[first:last], 1] = ofe[span].values[local]
        first = last
    return out
