"""The ``mixed`` source: real halos with a given fraction of their blocks made by the surrogate.

The halos are drawn exactly as the ``real`` source draws them (same scheme, split and seed); then,
per split, ``round(surrogate_fraction × blocks)`` block slots chosen at random (without
replacement, over all halos of the split) are replaced by surrogate blocks: entries of the
composition's library (θ from the surrogate's prior), distinct within a halo. N_sub per halo is
unchanged; each halo's rows are re-ordered by M*.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .base import (
    PAD,
    SYNTHETIC,
    Galaxies,
    Halos,
    Source,
    order_by_mass,
    register,
)
from .library import BlockLibrary, pick_distinct
from .real import RealSource

if TYPE_CHECKING:
    from casbi_store.compose.spec import ComposeSpec


def replace_blocks(halos: Halos, fraction: float, library: BlockLibrary, rng: np.random.Generator
                   ) -> Halos:
    """``halos`` with ``round(fraction × blocks)`` randomly chosen blocks made library entries."""
    members, theta = halos.members.copy(), halos.theta.copy()
    slots = np.flatnonzero(members.reshape(-1) != PAD)
    chosen = np.sort(rng.choice(slots, size=round(fraction * len(slots)), replace=False))
    rows, cols = np.unravel_index(chosen, members.shape)
    members[rows, cols] = SYNTHETIC
    entries = np.full(members.shape, -1, dtype=np.int64)
    per_halo = np.bincount(rows, minlength=len(members))
    entries[rows, cols] = np.concatenate([np.zeros(0, np.int64),
                                          *pick_distinct(library.size, per_halo, rng)])
    theta[rows, cols] = library.theta[entries[rows, cols]]
    return order_by_mass(members, theta, entries)


@register
class MixedSource(Source):
    name = "mixed"
    help = "real halos with a fraction (surrogate_fraction) of their blocks made by the surrogate"
    uses_surrogate = True
    uses_surrogate_fraction = True

    def draw(self, spec: ComposeSpec, galaxies: Galaxies,
             library: BlockLibrary | None) -> dict[str, Halos]:
        library = self.require_library(library)
        real = RealSource().draw(spec, galaxies)
        rng = np.random.default_rng([spec.seed, 2])
        return {split: replace_blocks(h, spec.surrogate_fraction, library, rng)
                for split, h in real.items()}
