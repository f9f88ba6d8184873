"""How many star particles a building block of stellar mass M* has: log10 N = a + b log10 M*.

Fitted by least squares on the training galaxies' kept stars (``n_star``). In NIHAO and the mock
the star-particle mass grows with the galaxy's mass, so b < 1. The surrogate draws this many
stars per block (the rounded mean of the relation, at least one), then bins them: stars outside
the binning are not counted, as in the store's own histograms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from casbi_store import InputError


@dataclass(frozen=True)
class StarCountRelation:
    """log10 N_star = intercept + slope * log10 M*; ``rms`` is the fit's scatter (dex)."""

    intercept: float
    slope: float
    rms: float
    n_galaxies: int

    @classmethod
    def fit(cls, log_mstar: np.ndarray, n_star: np.ndarray) -> StarCountRelation:
        x = np.asarray(log_mstar, dtype=np.float64)
        y = np.log10(np.asarray(n_star, dtype=np.float64))
        if len(x) < 2 or np.ptp(x) == 0:
            raise InputError("the star-count relation needs galaxies of at least two stellar masses")
        slope, intercept = np.polyfit(x, y, 1)
        rms = float(np.sqrt(np.mean((y - (intercept + slope * x)) ** 2)))
        return cls(float(intercept), float(slope), rms, len(x))

    def mean_log_n(self, log_mstar: np.ndarray) -> np.ndarray:
        return self.intercept + self.slope * np.asarray(log_mstar, dtype=np.float64)

    def n_stars(self, log_mstar: np.ndarray) -> np.ndarray:
        """Stars per block: the rounded mean of the relation, at least 1 (int64)."""
        return np.maximum(1, np.rint(10.0 ** self.mean_log_n(log_mstar))).astype(np.int64)

    def to_dict(self) -> dict:
        return {"form": "log10(n_star) = intercept + slope * log10(mstar / Msol)",
                "intercept": self.intercept, "slope": self.slope, "rms_dex": self.rms,
                "n_galaxies": self.n_galaxies}

    @classmethod
    def from_dict(cls, d: dict) -> StarCountRelation:
        return cls(float(d["intercept"]), float(d["slope"]), float(d["rms_dex"]), int(d["n_galaxies"]))
