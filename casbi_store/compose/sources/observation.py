"""The observation model: a composed halo as a survey would see it (issue 10 §2).

Not a source: it applies to the stars of any source's halos (store stars of real blocks, flow
draws of surrogate blocks). Per halo, in this order:

1. selection: only stars with ``feh_min <= [Fe/H] <= feh_max`` (true values) can be observed;
2. N_obs: fixed (``n_obs_min == n_obs_max``) or log-uniform on the integers n_obs_min..n_obs_max,
   capped at the selected stars of the halo; drawn without replacement, uniformly
   (``weight: number``) or with probability proportional to star mass (``weight: mass``);
3. errors: each star's sigma is log-normal, ``sigma = median × exp(spread × N(0, 1))`` per
   abundance (heteroscedastic; spread 0 gives one sigma for all), and its observed value
   ``true + sigma × N(0, 1)``;
4. binning with the store's binning (:func:`casbi_store.store.binning.histogram_stack`): stars observed
   outside the ranges are not counted, so a halo's total count is N_obs minus those.

The set records N_obs per halo (``n_obs``). Deterministic given the generator passed in.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields

import numpy as np

from .base import ComposeError

WEIGHTS = ("number", "mass")


@dataclass(frozen=True)
class ObservationSpec:
    """A survey's sampling, errors and [Fe/H] selection; validated here, once."""

    n_obs_min: int
    n_obs_max: int
    weight: str = "number"
    feh_err: float = 0.0  # median sigma of [Fe/H] (dex)
    feh_err_spread: float = 0.0  # standard deviation of ln sigma
    ofe_err: float = 0.0
    ofe_err_spread: float = 0.0
    feh_min: float | None = None
    feh_max: float | None = None

    def __post_init__(self):
        problems = []
        if not 1 <= self.n_obs_min <= self.n_obs_max:
            problems.append(f"need 1 <= n_obs_min <= n_obs_max, not {self.n_obs_min}, {self.n_obs_max}")
        if self.weight not in WEIGHTS:
            problems.append(f"weight must be one of {WEIGHTS}, not {self.weight!r}")
        for key in ("feh_err", "feh_err_spread", "ofe_err", "ofe_err_spread", "feh_min", "feh_max"):
            value = getattr(self, key)
            if value is None:
                continue
            if not math.isfinite(value):
                problems.append(f"{key} must be a finite number, not {value}")
            elif key.endswith(("err", "spread")) and value < 0:
                problems.append(f"{key} must be >= 0, not {value}")
        if (self.feh_min is not None and self.feh_max is not None
                and math.isfinite(self.feh_min) and math.isfinite(self.feh_max)
                and self.feh_min >= self.feh_max):
            problems.append(f"need feh_min < feh_max, not {self.feh_min}, {self.feh_max}")
        if problems:
            raise ComposeError("; ".join(problems))

    @classmethod
    def from_dict(cls, data, where: str = "observation") -> ObservationSpec:
        """From a mapping; ``n_obs: N`` is short for ``n_obs_min = n_obs_max = N``."""
        if isinstance(data, ObservationSpec):
            return data
        if not isinstance(data, dict):
            raise ComposeError(f"{where}: must be a mapping of keys to values, not {data!r}")
        data = dict(data)
        if "n_obs" in data:
            if "n_obs_min" in data or "n_obs_max" in data:
                raise ComposeError(f"{where}: give n_obs or n_obs_min/n_obs_max, not both")
            data["n_obs_min"] = data["n_obs_max"] = data.pop("n_obs")
        types = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(types)
        if unknown:
            raise ComposeError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: "
                               f"{sorted(types) + ['n_obs']}")
        missing = [k for k in ("n_obs_min", "n_obs_max") if k not in data]
        if missing:
            raise ComposeError(f"{where}: missing n_obs (or n_obs_min and n_obs_max)")
        clean = {}
        for key, value in data.items():
            kind = types[key]
            ok = not isinstance(value, bool) and (
                (kind == "int" and isinstance(value, numbers.Integral))
                or (kind == "str" and isinstance(value, str))
                or ("float" in kind and isinstance(value, numbers.Real))
                or (kind == "float | None" and value is None))
            if not ok:
                raise ComposeError(f"{where}: {key} must be {kind}, not {value!r}")
            clean[key] = (int(value) if kind == "int" else float(value)
                          if "float" in kind and value is not None else value)
        try:
            return cls(**clean)
        except ComposeError as exc:
            raise ComposeError(f"{where}: {exc}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    def draw_n_obs(self, rng: np.random.Generator) -> int:
        """N_obs of one halo: fixed, or log-uniform on n_obs_min..n_obs_max."""
        if self.n_obs_min == self.n_obs_max:
            return self.n_obs_min
        u = rng.uniform(math.log(self.n_obs_min), math.log(self.n_obs_max + 1))
        return min(int(math.exp(u)), self.n_obs_max)

    def observe(self, feh: np.ndarray, ofe: np.ndarray, mass: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One halo's observed stars: ([Fe/H], [O/Fe], mass) of its N_obs drawn stars, with errors."""
        return self.observe_with_errors(feh, ofe, mass, rng)[:3]

    def observe_with_errors(self, feh: np.ndarray, ofe: np.ndarray, mass: np.ndarray,
                            rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """``observe`` (the same draws) and each observed star's sigma of [Fe/H] and [O/Fe]:
        (feh, ofe, mass, feh_sigma, ofe_sigma), as a survey table would list them."""
        keep = np.ones(len(feh), dtype=bool)
        if self.feh_min is not None:
            keep &= feh >= self.feh_min
        if self.feh_max is not None:
            keep &= feh <= self.feh_max
        idx = np.flatnonzero(keep)
        n = min(self.draw_n_obs(rng), len(idx))
        if self.weight == "number":
            chosen = rng.choice(len(idx), size=n, replace=False)
        else:  # Efraimidis-Spirakis: the n largest u^(1/w) are a mass-weighted draw without replacement
            w = np.asarray(mass, dtype=np.float64)[idx]
            keys = np.log(rng.random(len(idx))) / np.where(w > 0, w, np.finfo(float).tiny)
            chosen = np.argpartition(-keys, n - 1)[:n] if 0 < n < len(idx) else np.arange(n)
        chosen = idx[np.sort(chosen)]
        sigma_feh, err_feh = self._errors(self.feh_err, self.feh_err_spread, n, rng)
        sigma_ofe, err_ofe = self._errors(self.ofe_err, self.ofe_err_spread, n, rng)
        return (feh[chosen] + err_feh, ofe[chosen] + err_ofe, np.asarray(mass)[chosen],
                sigma_feh, sigma_ofe)

    @staticmethod
    def _errors(median: float, spread: float, n: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
        """(sigma, error) of n stars: sigma log-normal about the median, error ~ N(0, sigma)."""
        sigma = median * np.exp(spread * rng.standard_normal(n))
        return sigma, sigma * rng.standard_normal(n)
