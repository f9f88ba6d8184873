"""The chemical-plane binning: global ranges, bin indices and fast 64x64 histograms.

Ranges follow the seed: from all stars of the kept galaxies, clipped at the 0.01th and 99.99th
percentiles of [Fe/H] and of [O/Fe] separately (or fixed ranges). They depend only on the set of
stored stars, never on the number of workers or the order tasks finished.

Bin semantics equal ``np.histogram2d`` with ``np.linspace`` edges: bin ``i`` holds
``edges[i] <= x < edges[i+1]``, the last bin also holds ``x == edges[-1]``; values outside the
range are not counted. Star abundances are binned by ``bin_stars`` at the stored precision
(float32), whatever their source, against float64 edges. Histograms come from one
``np.bincount`` over flat (galaxy, i, j) indices, several times faster than ``np.histogram2d``
per galaxy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from casbi_store import InputError

from .schema import FEH, N_BINS

STAR_DTYPE = np.dtype(FEH.dtype)  # [Fe/H] and [O/Fe] share it

METHODS = ("percentile", "fixed")


@dataclass(frozen=True)
class BinningSpec:
    """How to choose the ranges; validated once, at the edge."""

    method: str = "percentile"
    n_bins: int = N_BINS
    percentiles: tuple[float, float] = (0.01, 99.99)
    feh_range: tuple[float, float] | None = None  # required for method='fixed'
    ofe_range: tuple[float, float] | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"binning method must be one of {METHODS}, not {self.method!r}")
        if self.n_bins < 1:
            raise InputError(f"n_bins must be positive, not {self.n_bins}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise InputError(f"percentiles must satisfy 0 <= lo < hi <= 100, not {self.percentiles}")
        if self.method == "fixed":
            for name, rng in (("feh_range", self.feh_range), ("ofe_range", self.ofe_range)):
                if rng is None or not rng[0] < rng[1]:
                    raise InputError(f"fixed binning needs {name} = (lo, hi) with lo < hi, not {rng}")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> BinningSpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class Binning:
    """A resolved binning: the spec plus the ranges it produced."""

    spec: BinningSpec
    feh_range: tuple[float, float]
    ofe_range: tuple[float, float]

    @property
    def feh_edges(self) -> np.ndarray:
        return np.linspace(*self.feh_range, self.spec.n_bins + 1)

    @property
    def ofe_edges(self) -> np.ndarray:
        return np.linspace(*self.ofe_range, self.spec.n_bins + 1)

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "feh_range": list(self.feh_range),
                "ofe_range": list(self.ofe_range)}

    @classmethod
    def from_dict(cls, d: dict) -> Binning:
        return cls(BinningSpec.from_dict(d["spec"]), tuple(d["feh_range"]), tuple(d["ofe_range"]))


def resolve_binning(spec: BinningSpec, feh: np.ndarray, ofe: np.ndarray) -> Binning:
    """Ranges for ``spec`` from all stars of the kept galaxies."""
    if spec.method == "fixed":
        return Binning(spec, tuple(spec.feh_range), tuple(spec.ofe_range))
    if len(feh) == 0:
        raise InputError("cannot derive percentile ranges from zero stars")
    feh_lo, feh_hi = np.percentile(np.asarray(feh, dtype=np.float64), spec.percentiles)
    ofe_lo, ofe_hi = np.percentile(np.asarray(ofe, dtype=np.float64), spec.percentiles)
    if not (feh_lo < feh_hi and ofe_lo < ofe_hi):
        raise InputError(f"degenerate ranges [Fe/H] {feh_lo, feh_hi}, [O/Fe] {ofe_lo, ofe_hi}")
    return Binning(spec, (float(feh_lo), float(feh_hi)), (float(ofe_lo), float(ofe_hi)))


def canonical_values(values) -> np.ndarray:
    """Abundances at the precision the store keeps them (float32), as float64 for comparison.

    Percentile edges are computed from the stored float32 stars, so an edge can equal a stored
    value exactly; the same star read as float64 (pynbody, a CSV) is a hair above it and would
    fall outside the range. Binning every value at the stored precision makes them agree.
    """
    return np.asarray(values, dtype=STAR_DTYPE).astype(np.float64)


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value for uniform ``edges``, as ``np.histogram``; -1 outside the range or NaN.

    Arithmetic guess, then numpy's own one-step correction against the exact edges, so values on
    an edge land exactly where ``np.searchsorted(edges, x, side="right") - 1`` puts them.
    """
    x = np.asarray(values, dtype=np.float64)
    n = len(edges) - 1
    lo, hi = edges[0], edges[-1]
    out = np.full(x.shape, -1, dtype=np.intp)
    keep = (x >= lo) & (x <= hi)  # False for NaN
    xk = x[keep]
    i = ((xk - lo) * (n / (hi - lo))).astype(np.intp)
    i[i == n] = n - 1
    i -= xk < edges[i]
    i += (xk >= edges[i + 1]) & (i != n - 1)
    out[keep] = i
    return out


def bin_stars(values, edges: np.ndarray) -> np.ndarray:
    """Bin of each star abundance, compared at the stored precision (:func:`canonical_values`):
    the one binning of stars used by the store, composition and inference."""
    return bin_index(canonical_values(values), edges)


def histogram_stack(
    feh: np.ndarray,
    ofe: np.ndarray,
    mass: np.ndarray,
    n_star: np.ndarray,
    binning: Binning,
) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of consecutive galaxies whose stars are concatenated.

    ``n_star[k]`` stars belong to galaxy ``k``. Returns ``counts`` (int32) and ``mass_weighted``
    (float32), both of shape ``(len(n_star), n_bins, n_bins)`` indexed ``[galaxy, feh, ofe]``.
    """
    nb = binning.spec.n_bins
    n_gal = len(n_star)
    galaxy = np.repeat(np.arange(n_gal, dtype=np.intp), n_star)
    i = bin_stars(feh, binning.feh_edges)
    j = bin_stars(ofe, binning.ofe_edges)
    keep = (i >= 0) & (j >= 0)
    flat = (galaxy * nb + i) * nb + j
    flat = flat[keep]
    size = n_gal * nb * nb
    counts = np.bincount(flat, minlength=size).astype(np.int32)
    weighted = np.bincount(flat, weights=np.asarray(mass, dtype=np.float64)[keep], minlength=size)
    shape = (n_gal, nb, nb)
    return counts.reshape(shape), weighted.astype(np.float32).reshape(shape)


# ---- coverage: the stars a binning leaves out --------------------------------------------------

OUTSIDE_WARN_SHARE = 0.01  # of all stars: more outside than this is a warning
GALAXY_OUTSIDE_WARN_SHARE = 0.5  # of a galaxy's stars: a galaxy mostly outside is a warning


def inside(feh, ofe, binning: Binning) -> np.ndarray:
    """Which stars a histogram of ``binning`` counts: both abundances inside their ranges."""
    return (bin_stars(feh, binning.feh_edges) >= 0) & (bin_stars(ofe, binning.ofe_edges) >= 0)


def coverage_lines(names, n_star, n_outside, *, most: int = 5, width: int = 13) -> list[str]:
    """What a summary says about the stars outside the binning: one line of how many, then a
    ``WARNING`` line when more than half of a galaxy's stars (listing up to ``most`` of them,
    worst first) or more than 1% of all stars fall outside. Percentile ranges leave out ~0.02%
    by construction; fixed ranges that miss the suite leave out far more, and quietly. Labels
    are padded to ``width`` (the summary's or the listing's column)."""
    n_star, n_outside = np.asarray(n_star, dtype=np.int64), np.asarray(n_outside, dtype=np.int64)
    total, out = int(n_star.sum()), int(n_outside.sum())
    if total == 0:
        return []
    lines = [f"{'outside':<{width}}{out:,} of {total:,} stars ({out / total:.2%}) in "
             f"{int((n_outside > 0).sum())} of {len(n_star)} galaxies fall outside the binning"]
    share = n_outside / np.maximum(n_star, 1)
    mostly = np.flatnonzero(share > GALAXY_OUTSIDE_WARN_SHARE)
    if mostly.size:
        worst = mostly[np.lexsort((mostly, -share[mostly]))][:most]
        listed = ", ".join(f"{names[k]} ({n_outside[k]:,} of {n_star[k]:,})" for k in worst)
        lines.append(f"{'WARNING':<{width}}{mostly.size} galaxies have more than half of their stars outside "
                     f"the binning ranges: {listed}{', ...' if mostly.size > most else ''}")
    if out > OUTSIDE_WARN_SHARE * total:
        lines.append(f"{'WARNING':<{width}}{out / total:.1%} of the stars fall outside the binning ranges "
                     f"(more than {OUTSIDE_WARN_SHARE:.0%}): their histograms miss them; fixed "
                     "--feh-range/--ofe-range that do not cover the suite?")
    return lines
