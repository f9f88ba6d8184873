"""Calibration and accuracy of posterior samples against the truth: plain arrays in, numbers out.

Every function takes samples as ``(samples, rows)`` (one parameter) or ``(samples, rows, dims)``
arrays, NaN where a sample does not exist (theta of rank 3 for an N_sub draw of 2), and the
truth as ``(rows,)`` / ``(rows, dims)``. Randomness (the PIT's tie-breaking, TARP's reference
points) comes from an explicit ``numpy.random.Generator``: same seed, same numbers.

- PIT: the randomized probability integral transform, ``(#{s < t} + u (#{s == t} + 1)) /
  (n + 1)`` with ``u ~ U(0, 1)``: exactly uniform for a calibrated posterior, discrete (N_sub) or
  continuous. Its value times the sample count is the SBC rank; a central ``level`` interval
  covers the truth when ``|PIT - 1/2| <= level / 2``.
- TARP (Lemos et al. 2023): for each row a reference point drawn uniformly over the truth's
  range, the fraction of samples nearer to it than the truth (ties split at random);
  ECP(alpha) = share of rows with a fraction below alpha (z-scored by the truth's spread, as
  sbi's ``z_score_theta``).
- Skill against the prior: ``1 - MSE(posterior mean) / Var(prior)``: 0 for the prior's mean on
  truths drawn from the prior, 1 for the truth.
"""

from __future__ import annotations

import numpy as np

LEVELS = (0.68, 0.95)


def pit(samples: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomized PIT of each row, ``(samples, rows)`` -> ``(rows,)`` (NaN without samples)."""
    finite = np.isfinite(samples)
    n = finite.sum(axis=0)
    below = (finite & (samples < truth)).sum(axis=0)
    ties = (finite & (samples == truth)).sum(axis=0)
    u = rng.random(len(truth))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (below + u * (ties + 1)) / (n + 1)
    return np.where(n > 0, out, np.nan)


def discrete_pit(values: np.ndarray, probs: np.ndarray, truth: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Randomized PIT of integer truths under discrete posteriors ``probs`` (rows, values):
    ``F(t - 1) + u p(t)``."""
    idx = np.searchsorted(values, truth)
    inside = (truth >= values[0]) & (truth <= values[-1])
    cdf = np.concatenate([np.zeros((len(probs), 1)), np.cumsum(probs, axis=1)], axis=1)
    cdf /= cdf[:, -1:]
    safe = np.clip(idx, 0, len(values) - 1)
    rows = np.arange(len(truth))
    lower, upper = cdf[rows, safe], cdf[rows, safe + 1]
    u = rng.random(len(truth))
    out = lower + u * (upper - lower)
    return np.where(inside, out, np.where(truth < values[0], 0.0, 1.0))


def coverage(pit_values: np.ndarray, level: float) -> float:
    """Share of rows whose central ``level`` interval holds the truth."""
    p = pit_values[np.isfinite(pit_values)]
    return float(np.mean(np.abs(p - 0.5) <= level / 2)) if len(p) else float("nan")


def uniformity_pvalue(pit_values: np.ndarray) -> float:
    """Kolmogorov-Smirnov p-value of the PIT (SBC ranks) against U(0, 1)."""
    from scipy.stats import kstest

    p = pit_values[np.isfinite(pit_values)]
    return float(kstest(p, "uniform").pvalue) if len(p) >= 2 else float("nan")


def tarp(samples: np.ndarray, truth: np.ndarray, rng: np.random.Generator,
         num_bins: int | None = None, references: np.ndarray | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """TARP expected coverage: ``(ecp, alpha)``, each of ``num_bins + 1`` levels from 0 to 1.

    ``samples`` (samples, rows, dims), ``truth`` (rows, dims); rows without samples are skipped;
    ``references`` (rows, dims) replace the random reference points.
    """
    samples = np.asarray(samples, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if samples.ndim == 2:
        samples, truth = samples[..., None], truth[:, None]
    lo, hi = truth.min(axis=0), truth.max(axis=0)
    if references is None:
        references = lo + rng.random(truth.shape) * (hi - lo)
    references = np.asarray(references, dtype=np.float64).reshape(truth.shape)
    scale = truth.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    finite = np.isfinite(samples).all(axis=-1)
    d_samples = np.sqrt((((samples - references) / scale) ** 2).sum(axis=-1))
    d_truth = np.sqrt((((truth - references) / scale) ** 2).sum(axis=-1))
    n = finite.sum(axis=0)
    keep = n > 0
    closer = (finite & (d_samples < d_truth)).sum(axis=0)
    ties = (finite & (d_samples == d_truth)).sum(axis=0)  # a discrete truth among its samples
    frac = ((closer + rng.random(len(n)) * ties) / np.maximum(n, 1))[keep]
    bins = num_bins or max(len(frac) // 10, 1)
    hist, _ = np.histogram(frac, bins=bins, range=(0, 1))
    ecp = np.concatenate([[0.0], np.cumsum(hist) / max(hist.sum(), 1)])
    return ecp, np.linspace(0, 1, bins + 1)


def tarp_summary(ecp: np.ndarray, alpha: np.ndarray) -> dict[str, float]:
    """max ``|ECP - alpha|`` (the target's figure) and the area between ECP and the diagonal."""
    return {"tarp_max_deviation": float(np.max(np.abs(ecp - alpha))),
            "tarp_atc": float(np.trapezoid(ecp - alpha, alpha))}


def point_metrics(estimate: np.ndarray, truth: np.ndarray, prior_var: float) -> dict[str, float]:
    """RMSE, bias, R^2 (with the truth's spread beside it) and skill against the prior."""
    err = estimate - truth
    mse = float(np.mean(err ** 2))
    var = float(np.var(truth))
    return {"rmse": float(np.sqrt(mse)), "bias": float(np.mean(err)),
            "r2": 1 - mse / var if var > 0 else float("nan"), "truth_std": float(np.sqrt(var)),
            "skill": 1 - mse / prior_var if prior_var > 0 else float("nan")}


def uniform_variance(low: float, high: float) -> float:
    """Variance of U(low, high)."""
    return (high - low) ** 2 / 12


def integer_uniform_variance(low: int, high: int) -> float:
    """Variance of the uniform distribution on the integers low..high."""
    return ((high - low + 1) ** 2 - 1) / 12


def parameter_metrics(samples: np.ndarray, truth: np.ndarray, prior_var: float,
                      rng: np.random.Generator) -> dict[str, float]:
    """Every per-parameter figure from ``(samples, rows)`` samples: coverage at ``LEVELS``, SBC
    uniformity, 1-d TARP, and the point metrics of the posterior mean."""
    has = np.isfinite(samples).any(axis=0)
    samples, truth = samples[:, has], truth[has]
    if not len(truth):
        return {"rows": 0}
    p = pit(samples, truth, rng)
    out = {"rows": int(len(truth))}
    out.update({f"coverage_{round(100 * lv)}": coverage(p, lv) for lv in LEVELS})
    out["sbc_ks_pvalue"] = uniformity_pvalue(p)
    out.update(tarp_summary(*tarp(samples, truth, rng)))
    out.update(point_metrics(np.nanmean(samples, axis=0), truth, prior_var))
    return out


def tempered_probabilities(logits: np.ndarray, temperature: float,
                           weights: np.ndarray | None = None) -> np.ndarray:
    """The ensemble's posterior at a temperature: sum_k w_k softmax(logits_k / T), from
    ``(members, rows, classes)`` (or ``(rows, classes)``) logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z[None] if z.ndim == 2 else z
    w = np.full(len(z), 1 / len(z)) if weights is None else np.asarray(weights, dtype=np.float64)
    z = z / temperature
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    return np.tensordot(w, p, axes=1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
                    bounds: tuple[float, float] = (0.02, 50.0)) -> dict[str, float]:
    """Temperature scaling (Guo et al. 2017): the one T > 0 that minimises the negative
    log-likelihood of integer ``labels`` (class indices) under ``tempered_probabilities``.

    Returns ``{"temperature", "nll_before" (T = 1), "nll_after", "rows"}``. T > 1 widens an
    over-confident posterior, T < 1 sharpens an under-confident one; the ranking of classes
    (the mode, the accuracy) does not change.
    """
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        p = tempered_probabilities(logits, float(np.exp(log_t)), weights)[rows, labels]
        return float(-np.mean(np.log(np.maximum(p, 1e-300))))

    best = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                           options={"xatol": 1e-4})
    return {"temperature": float(np.exp(best.x)), "nll_before": nll(0.0),
            "nll_after": float(best.fun), "rows": int(len(labels))}
