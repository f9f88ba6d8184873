"""Composing training sets from the store: a halo is the sum of N_sub building blocks.

``spec`` (what defines a version), ``sources/`` (where blocks come from, plug-ins, and the survey
observation model), ``halos`` (drawing and summing, written through
:mod:`casbi_store.store.trainingsets`), ``catalog`` and ``intake_source`` (the intake catalog and
its drivers).
"""

from .halos import compose, registry
from .sources import ComposeError
from .spec import ComposeSpec

__all__ = ["ComposeError", "ComposeSpec", "compose", "registry"]
