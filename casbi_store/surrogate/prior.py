"""A continuous prior over θ = (log10 M*, log10 M_dm, τ) fitted to the store's galaxies.

A Gaussian kernel density estimate (scipy's ``gaussian_kde``: kernel covariance = the data's
covariance × Scott's factor n^(-1/(d+4))), truncated to a support box: the galaxies' range in each
parameter padded by one kernel standard deviation. Surrogate blocks drawn from it follow the
suite's population (its M*-M_dm relation and its τ distribution), not a box.
``log_prob`` is the truncated, renormalised density (−inf outside the box).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import gaussian_kde

from casbi_store import CasbiError, InputError
from casbi_store.store.atomic import atomic_write_text

from .data import THETA_NAMES

NORMALISATION_DRAWS = 20_000  # draws that estimate the mass of the KDE inside the box
LOW_DENSITY_QUANTILE = 0.005  # theta less dense than 99.5% of the prior's draws gets a warning


class OutsideSupportError(CasbiError, ValueError):
    """θ outside the prior's support: the surrogate would extrapolate."""


@dataclass(frozen=True)
class ThetaPrior:
    """KDE over the galaxies' θ, truncated to ``low``..``high``."""

    points: np.ndarray  # (n, 3) the galaxies' theta
    factor: float  # KDE bandwidth factor (Scott's rule unless given)
    low: np.ndarray  # (3,) support box
    high: np.ndarray
    log_mass_inside: float = 0.0  # log of the KDE's probability inside the box
    low_density: float = -np.inf  # log_prob below which theta is "far from every galaxy"

    @property
    def _kde(self) -> gaussian_kde:
        return gaussian_kde(self.points.T, bw_method=self.factor)

    @classmethod
    def fit(cls, theta: np.ndarray, seed: int = 0, factor: float | None = None) -> ThetaPrior:
        theta = np.asarray(theta, dtype=np.float64)
        if theta.ndim != 2 or theta.shape[1] != 3 or len(theta) < 4:
            raise InputError(f"a prior over θ needs at least 4 galaxies (n, 3), got {theta.shape}")
        kde = gaussian_kde(theta.T)  # Scott's rule
        factor = float(kde.factor if factor is None else factor)
        kde = gaussian_kde(theta.T, bw_method=factor)
        pad = np.sqrt(np.diag(kde.covariance))
        low, high = theta.min(0) - pad, theta.max(0) + pad
        rng = np.random.default_rng(seed)
        draws = kde.resample(NORMALISATION_DRAWS, seed=rng).T
        inside = np.all((draws >= low) & (draws <= high), axis=1)
        prior = cls(theta, factor, low, high, float(np.log(inside.mean())))
        logp = prior.log_prob(draws[inside])
        return cls(theta, factor, low, high, prior.log_mass_inside,
                   float(np.quantile(logp, LOW_DENSITY_QUANTILE)))

    def in_support(self, theta: np.ndarray) -> np.ndarray:
        theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        return np.all((theta >= self.low) & (theta <= self.high), axis=1)

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        """Log density of each row of ``theta`` (n, 3); −inf outside the support box."""
        theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        out = np.full(len(theta), -np.inf)
        inside = self.in_support(theta)
        if inside.any():
            out[inside] = self._kde.logpdf(theta[inside].T) - self.log_mass_inside
        return out

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """``n`` draws (n, 3) inside the support box (rejection), deterministic given ``rng``."""
        rng = np.random.default_rng(rng)
        kde = self._kde
        kept: list[np.ndarray] = []
        have = 0
        while have < n:
            draws = kde.resample(max(2 * (n - have), 64), seed=rng).T
            draws = draws[self.in_support(draws)]
            kept.append(draws)
            have += len(draws)
        return np.concatenate(kept)[:n] if n else np.empty((0, 3))

    def check(self, theta: np.ndarray, allow_outside: bool = False) -> list[str]:
        """Refuse θ outside the support (``OutsideSupportError``) unless ``allow_outside``; return
        warnings for θ inside the box but less dense than 99.5% of the prior's draws."""
        theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        outside = ~self.in_support(theta)
        box = ", ".join(f"{n} {lo:.3g}..{hi:.3g}" for n, lo, hi in
                        zip(THETA_NAMES, self.low, self.high, strict=True))
        notes = []
        if outside.any():
            first = theta[np.flatnonzero(outside)[0]]
            message = (f"{int(outside.sum())} θ outside the prior's support ({box}), e.g. "
                       f"{np.round(first, 3).tolist()}: the surrogate would extrapolate beyond the suite")
            if not allow_outside:
                raise OutsideSupportError(message)
            notes.append(message)
        low = (self.log_prob(theta) < self.low_density) & ~outside
        if low.any():
            notes.append(f"{int(low.sum())} θ inside the box but in a region without galaxies "
                         f"(prior density below its 0.5% quantile), e.g. "
                         f"{np.round(theta[np.flatnonzero(low)[0]], 3).tolist()}")
        return notes

    def to_dict(self) -> dict:
        return {"kind": "gaussian_kde", "factor": self.factor,
                "parameters": list(THETA_NAMES), "low": self.low.tolist(), "high": self.high.tolist(),
                "log_mass_inside": self.log_mass_inside, "low_density": self.low_density,
                "points": self.points.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> ThetaPrior:
        return cls(np.asarray(d["points"], dtype=np.float64), float(d["factor"]),
                   np.asarray(d["low"], dtype=np.float64), np.asarray(d["high"], dtype=np.float64),
                   float(d["log_mass_inside"]), float(d["low_density"]))

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ThetaPrior:
        return cls.from_dict(json.loads(Path(path).read_text()))
