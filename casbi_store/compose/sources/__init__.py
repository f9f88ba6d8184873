"""Composition sources as plug-ins (one file per source behind one registry, ``base``).

``real``: halos of store galaxies (the seed's composition). ``surrogate``: every block generated
by the surrogate simulator, θ drawn from its fitted prior. ``mixed``: a given fraction of the
blocks of real halos replaced by surrogate blocks; surrogate blocks are entries of a
``library`` sampled once per composition. ``observation`` is not a source: it turns any
source's halos into what a survey would see (a training-set option).
"""

from . import mixed, real, surrogate  # noqa: F401  (they register)
from .base import (
    PAD,
    SYNTHETIC,
    ComposeError,
    Galaxies,
    Halos,
    Source,
    get_source,
    register,
    source_names,
)
from .observation import ObservationSpec

__all__ = ["PAD", "SYNTHETIC", "ComposeError", "Galaxies", "Halos", "ObservationSpec", "Source",
           "get_source", "register", "source_names"]
