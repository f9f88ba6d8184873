"""Augmentation that breaks galaxy identity: every epoch, each training halo is summed anew from
its building blocks, each block moved in the chemical plane by its own random offset (and its
stars optionally redrawn).

Why (issue 23): a set holds a few hundred galaxies, each in thousands of halos, so a network can
learn *which training galaxy* tops a halo instead of reading the chemistry, and fail on galaxies
it never saw. Moving each block by an offset of the size of the galaxy-to-galaxy scatter at fixed
mass and time (the demo suite: 0.13 dex in mean [Fe/H], 0.044 dex in mean [O/Fe]; measured in
``bench/README.md``) while keeping its parameters tells the network that a galaxy a little
richer or poorer than a training galaxy has the same mass and infall time; Poisson redraws of
the counts vary the star count and the plane's noise as another realisation of the same galaxy
would.

A shift of ``d`` bins moves each bin's counts ``floor(d)`` bins and splits them between that and
the next bin by the fraction (bilinear in the plane), so the halo's stars stay where they were
within a bin's width; stars moved past the binning's ends are dropped, as an observed galaxy's
stars outside the binning are. Only the training split is augmented: validation stays the
halos as composed, so the choices made on it are judged on real (unseen) galaxies.

Each epoch draws ``versions`` shifted copies of every galaxy, and each block of each halo picks
one of them at random: the halos of an epoch are then one sparse matrix product away.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from casbi_store.store import schema as S
from casbi_store.store import trainingsets
from casbi_store.store.binning import Binning
from casbi_store.store.io import open_store


class AugmentError(ValueError):
    """The set cannot be augmented from its blocks (what it is made of is not in the store)."""


@dataclass(frozen=True)
class Augmentation:
    """``shift_feh`` / ``shift_ofe``: standard deviation (dex) of each block's Gaussian offset
    in [Fe/H] / [O/Fe], drawn anew every epoch; ``resample``: redraw each block's counts from
    a Poisson distribution of its (shifted) counts every epoch; ``versions``: shifted copies of
    each galaxy drawn per epoch, among which each block picks one."""

    shift_feh: float = 0.0
    shift_ofe: float = 0.0
    resample: bool = False
    versions: int = 8

    def __post_init__(self):
        for name in ("shift_feh", "shift_ofe"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0 (dex), not {value!r}")
        if self.versions < 1:
            raise ValueError(f"versions must be >= 1, not {self.versions!r}")

    @property
    def active(self) -> bool:
        return self.shift_feh > 0 or self.shift_ofe > 0 or self.resample


def shift_planes(planes: np.ndarray, d_feh: np.ndarray, d_ofe: np.ndarray) -> np.ndarray:
    """Each plane (n, nf, no) moved by its own offset in bins (``d_feh[i]``, ``d_ofe[i]``,
    fractional): counts split bilinearly between the two nearest whole shifts; what leaves the
    plane is dropped."""
    out = np.zeros(planes.shape, dtype=np.float32)
    n, nf, no = planes.shape
    base_f, base_o = np.floor(d_feh).astype(int), np.floor(d_ofe).astype(int)
    frac_f, frac_o = (d_feh - base_f).astype(np.float32), (d_ofe - base_o).astype(np.float32)
    for i in range(n):
        for df, wf in ((base_f[i], 1 - frac_f[i]), (base_f[i] + 1, frac_f[i])):
            for do, wo in ((base_o[i], 1 - frac_o[i]), (base_o[i] + 1, frac_o[i])):
                w = wf * wo
                if w <= 0 or abs(df) >= nf or abs(do) >= no:
                    continue
                src_f = slice(max(0, -df), nf - max(0, df))
                dst_f = slice(max(0, df), nf - max(0, -df))
                src_o = slice(max(0, -do), no - max(0, do))
                dst_o = slice(max(0, do), no - max(0, -do))
                out[i, dst_f, dst_o] += w * planes[i, src_f, src_o]
    return out


class BlockAugmenter:
    """The augmented training halos of a published set, epoch by epoch (deterministic given
    the seed and the epoch)."""

    def __init__(self, store: str | os.PathLike, name: str, version: str, split: str,
                 augmentation: Augmentation, seed: int = 0,
                 storage_options: dict | None = None):
        store = os.fspath(store)
        where = f"{store}: {name}:{version}"
        if trainingsets.observation_model(store, name, version, storage_options):
            raise AugmentError(f"{where} was composed with an observation model (stars drawn "
                               "and scattered per halo): its halos are not sums of the store's "
                               "histograms, so they cannot be re-summed with shifted blocks")
        group = trainingsets.open_split_group(store, name, version, split, storage_options)
        members = np.asarray(group[S.MEMBERS.name][:])
        if (members == S.SYNTHETIC_MEMBER).any():
            raise AugmentError(f"{where} holds surrogate-made blocks, which the store has no "
                               "histograms of: augment sets of the store's galaxies only")
        binning = trainingsets.binning(store, name, version, storage_options)
        ds = open_store(store, storage_options)
        current = Binning.from_dict(ds.attrs[S.ATTR_BINNING])
        if not (np.array_equal(current.feh_edges, binning.feh_edges)
                and np.array_equal(current.ofe_edges, binning.ofe_edges)):
            raise AugmentError(f"{where} was composed with other bin edges than the store's "
                               "histograms have now (re-binned since): compose it again")
        self.counts = ds[S.COUNTS.name].values.astype(np.float32)  # (galaxy, feh, ofe)
        self.members, self.augmentation, self.seed = members, augmentation, seed
        self.bin_feh = float(np.diff(binning.feh_edges).mean())
        self.bin_ofe = float(np.diff(binning.ofe_edges).mean())

    def halos(self, epoch: int) -> np.ndarray:
        """Every halo of the split for this epoch, float32 (n_halo, n_feh, n_ofe)."""
        aug, (n_gal, nf, no) = self.augmentation, self.counts.shape
        rng = np.random.default_rng([self.seed, epoch, 23])
        v = aug.versions
        d_feh = rng.normal(0.0, aug.shift_feh / self.bin_feh, n_gal * v) if aug.shift_feh else \
            np.zeros(n_gal * v)
        d_ofe = rng.normal(0.0, aug.shift_ofe / self.bin_ofe, n_gal * v) if aug.shift_ofe else \
            np.zeros(n_gal * v)
        copies = shift_planes(np.repeat(self.counts, v, axis=0), d_feh, d_ofe)
        if aug.resample:
            copies = rng.poisson(copies).astype(np.float32)
        rows, cols = np.nonzero(self.members >= 0)
        picked = self.members[rows, cols] * v + rng.integers(0, v, len(rows))
        select = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, picked)),
                                   shape=(len(self.members), n_gal * v))
        return np.asarray(select @ copies.reshape(n_gal * v, nf * no),
                          dtype=np.float32).reshape(-1, nf, no)
