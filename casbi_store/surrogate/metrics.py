"""Distances between chemical planes, physical summaries of a plane, the nearest-θ baseline and
a classifier two-sample test: what the surrogate's validation is made of.

Planes are 64×64 count histograms indexed [feh_bin, ofe_bin] on uniform bins.
"""

from __future__ import annotations

import numpy as np

KNEE_DROP = 0.1  # dex below the low-metallicity plateau that marks the [O/Fe] knee
KNEE_MIN_FRACTION = 0.005  # [Fe/H] columns with less of the galaxy's stars are ignored
PLATEAU_COLUMNS = 3  # the first populated [Fe/H] columns that define the plateau


def normalise(plane: np.ndarray) -> np.ndarray:
    plane = np.asarray(plane, dtype=np.float64)
    total = plane.sum()
    return plane / total if total > 0 else plane


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two normalised planes."""
    p, q = normalise(p).ravel(), normalise(q).ravel()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def wasserstein_1d(p: np.ndarray, q: np.ndarray, edges: np.ndarray) -> float:
    """1-D Wasserstein (earth mover's) distance between two histograms on the same uniform
    ``edges``, mass at the bin centres: sum of ``|CDF_p − CDF_q|`` × bin width."""
    p, q = normalise(p), normalise(q)
    width = float(edges[1] - edges[0])
    return float(np.sum(np.abs(np.cumsum(p) - np.cumsum(q))[:-1]) * width)


def marginal_distances(true: np.ndarray, other: np.ndarray, feh_edges: np.ndarray,
                       ofe_edges: np.ndarray) -> dict[str, float]:
    """JSD of the planes and Wasserstein distances of their [Fe/H] and [O/Fe] marginals."""
    return {"jsd": js_divergence(true, other),
            "w1_feh": wasserstein_1d(true.sum(1), other.sum(1), feh_edges),
            "w1_ofe": wasserstein_1d(true.sum(0), other.sum(0), ofe_edges)}


def _centres(edges: np.ndarray) -> np.ndarray:
    return (edges[1:] + edges[:-1]) / 2


def binned_median(weights: np.ndarray, edges: np.ndarray) -> float:
    """Median of a histogram on ``edges``, stars spread uniformly within their bin (the
    cumulative distribution interpolated linearly across the bin that crosses one half);
    NaN if empty. Continuous, unlike the centre of the median bin."""
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum()
    if total <= 0:
        return float("nan")
    cdf = np.cumsum(weights) / total
    i = int(np.searchsorted(cdf, 0.5))
    below = cdf[i - 1] if i > 0 else 0.0
    return float(edges[i] + (0.5 - below) / (cdf[i] - below) * (edges[i + 1] - edges[i]))


def median_feh(plane: np.ndarray, feh_edges: np.ndarray) -> float:
    """Median [Fe/H] of a plane's stars: its point on the mass-metallicity relation."""
    return binned_median(np.asarray(plane).sum(1), feh_edges)


def knee_feh(plane: np.ndarray, feh_edges: np.ndarray, ofe_edges: np.ndarray) -> float:
    """[Fe/H] of the [O/Fe] knee: where the median [O/Fe] of the [Fe/H] columns first falls
    ``KNEE_DROP`` dex below the plateau (the median of the first ``PLATEAU_COLUMNS`` populated
    columns), interpolated linearly between the column centres on either side of the crossing.
    NaN when the plane never bends that far (no type Ia enrichment yet) or is nearly empty."""
    plane = np.asarray(plane, dtype=np.float64)
    column = plane.sum(1)
    if column.sum() <= 0:
        return float("nan")
    populated = np.flatnonzero(column >= KNEE_MIN_FRACTION * column.sum())
    if len(populated) <= PLATEAU_COLUMNS:
        return float("nan")
    med = np.array([binned_median(plane[i], ofe_edges) for i in populated])
    level = float(np.median(med[:PLATEAU_COLUMNS])) - KNEE_DROP
    below = np.flatnonzero(med[PLATEAU_COLUMNS:] < level)
    if len(below) == 0:
        return float("nan")
    k = PLATEAU_COLUMNS + below[0]
    x = _centres(feh_edges)[populated]
    if med[k - 1] == med[k]:  # a plateau column already below the level, as low as the next
        return float(x[k - 1])
    return float(x[k - 1] + (med[k - 1] - level) / (med[k - 1] - med[k]) * (x[k] - x[k - 1]))


def nearest_theta(train_theta: np.ndarray, query_theta: np.ndarray,
                  scale: np.ndarray | None = None) -> np.ndarray:
    """Index of the training θ nearest to each query θ in standardised Euclidean distance
    (each parameter divided by its standard deviation over ``train_theta``, or by ``scale``)."""
    train = np.asarray(train_theta, dtype=np.float64)
    query = np.atleast_2d(np.asarray(query_theta, dtype=np.float64))
    scale = train.std(0) if scale is None else np.asarray(scale, dtype=np.float64)
    scale = np.where(scale > 0, scale, 1.0)
    d = (((query[:, None, :] - train[None, :, :]) / scale) ** 2).sum(-1)
    return np.argmin(d, axis=1)


def classifier_auc(a: np.ndarray, b: np.ndarray, groups: np.ndarray, folds: int = 5) -> dict:
    """Classifier two-sample test: cross-validated ROC AUC of a logistic regression telling the
    normalised, flattened planes ``a`` from ``b`` (0.5: indistinguishable, 1: always told apart).

    ``a[k]`` and ``b[k]`` share ``groups[k]`` (the simulation of the held-out galaxy k), and folds
    split by group: otherwise the classifier learns to recognise the held-out simulations' own
    tracks (a per-simulation signature that no θ carries) instead of judging the planes.
    Features: sqrt of the normalised plane (tempers the brightest bins)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    groups = np.asarray(groups)
    folds = min(folds, len(np.unique(groups)))
    if folds < 2 or len(a) != len(b) or len(a) != len(groups):
        return {"auc": None, "folds": folds, "n_per_class": len(a),
                "note": "needs paired planes of at least two held-out simulations"}
    x = np.sqrt(np.stack([normalise(p).ravel() for p in (*a, *b)]))
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    scores = cross_val_score(model, x, y, groups=np.r_[groups, groups], cv=GroupKFold(folds),
                             scoring="roc_auc")
    return {"auc": float(scores.mean()), "auc_std": float(scores.std()), "folds": folds,
            "n_per_class": len(a)}
