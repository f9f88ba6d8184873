"""The ``mixed`` source: real halos with a given fraction of their blocks made by the surrogate.

The halos are drawn exactly as the ``real`` source draws them (same scheme, split and seed); then,
per split, ``round(surrogate_fraction × blocks)`` block slots chosen at random (without
replacement, over all halos of the split) are replaced by surrogate blocks with θ drawn from the
surrogate's prior. N_sub per halo is unchanged; each halo's rows are re-ordered by M*.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .base import PAD, SYNTHETIC, ComposeError, Galaxies, Halos, Source, linear_theta, order_by_mass, register
from .real import RealSource

if TYPE_CHECKING:
    from ..compose import ComposeSpec
    from ..surrogate import Surrogate


def replace_blocks(halos: Halos, fraction: float, surrogate: Surrogate, rng: np.random.Generator
                   ) -> Halos:
    """``halos`` with ``round(fraction × blocks)`` randomly chosen blocks made synthetic."""
    members, theta = halos.members.copy(), halos.theta.copy()
    slots = np.flatnonzero(members.reshape(-1) != PAD)
    chosen = np.sort(rng.choice(slots, size=round(fraction * len(slots)), replace=False))
    rows, cols = np.unravel_index(chosen, members.shape)
    members[rows, cols] = SYNTHETIC
    theta[rows, cols] = linear_theta(surrogate.prior.sample(len(chosen), rng))
    return order_by_mass(members, theta)


@register
class MixedSource(Source):
    name = "mixed"
    help = "real halos with a fraction (surrogate_fraction) of their blocks made by the surrogate"
    uses_surrogate = True

    def draw(self, spec: ComposeSpec, galaxies: Galaxies,
             surrogate: Surrogate | None) -> dict[str, Halos]:
        if surrogate is None:
            raise ComposeError("source 'mixed' needs a surrogate model (key surrogate)")
        real = RealSource().draw(spec, galaxies)
        rng = np.random.default_rng([spec.seed, 2])
        return {split: replace_blocks(h, spec.surrogate_fraction, surrogate, rng)
                for split, h in real.items()}
