"""The surrogate simulator (issue 9): building blocks' chemical planes for any θ.

θ = (log10 M*/Msun, log10 M_dm/Msun, τ/Gyr). A conditional normalizing flow over single stars
p([Fe/H], [O/Fe] | θ) (``model``), a star-count relation N(M*) (``starcount``) and a KDE prior
over θ (``prior``), fitted on a store; validated on held-out simulations (``validation``)::

    from casbi_store.surrogate import load_surrogate
    sur = load_surrogate("models/surrogate")
    theta = sur.prior.sample(10, rng)                # (10, 3), like the suite's galaxies
    blocks = sur.sample_histograms(theta, rng)       # (10, 64, 64) int32 counts

Names are imported lazily so ``casbi-store --help`` does not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Surrogate": "model", "SurrogateConfig": "model", "load_surrogate": "model",
    "train_surrogate": "model", "ThetaPrior": "prior", "OutsideSupportError": "prior",
    "StarCountRelation": "starcount", "validate_surrogate": "validation",
    "figure_paths": "validation", "THETA_NAMES": "data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
