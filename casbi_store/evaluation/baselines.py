"""Non-neural reference estimators: how much the chemical plane says, with no network at all.

Ridge and gradient-boosted regression on summary statistics of a halo's plane (the log1p
[Fe/H] and [O/Fe] marginals and the log total count), fitted on a training split, predict N_sub
and θ = (log10 M*, log10 M_dm, τ) of the blocks of rank 1..3. They are the floor a posterior must
beat on point accuracy, and a measure of the information the inputs hold.

Plain arrays in, plain numbers out: the caller reads the splits (``evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK_PARAMETERS = ("log10_mstar", "log10_mdm", "tau")
KINDS = ("ridge", "gbr")


def plane_features(x: np.ndarray) -> np.ndarray:
    """(halos, nb, nb) counts -> (halos, 2 nb + 1): log1p marginals of [Fe/H] and [O/Fe] and
    log10 of the total count."""
    x = np.asarray(x, dtype=np.float64)
    feh, ofe = x.sum(axis=2), x.sum(axis=1)
    total = np.log10(np.maximum(x.sum(axis=(1, 2)), 1.0))[:, None]
    return np.concatenate([np.log1p(feh), np.log1p(ofe), total], axis=1)


def targets(n_sub: np.ndarray, theta: np.ndarray, ranks: int = 3) -> dict[str, np.ndarray]:
    """name -> values (NaN where a halo has fewer blocks than the rank): ``n_sub`` and
    ``{parameter}_{rank}`` from the store's θ (M*, M_dm in Msol, τ in Gyr; blocks by M*)."""
    out = {"n_sub": np.asarray(n_sub, dtype=np.float64)}
    theta = np.asarray(theta, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        blocks = np.stack([np.log10(theta[..., 0]), np.log10(theta[..., 1]), theta[..., 2]], axis=-1)
    for rank in range(1, min(ranks, theta.shape[1]) + 1):
        for k, p in enumerate(BLOCK_PARAMETERS):
            out[f"{p}_{rank}"] = blocks[:, rank - 1, k]
    return out


def _model(kind: str, seed: int):
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "ridge":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    if kind == "gbr":
        return HistGradientBoostingRegressor(max_iter=200, learning_rate=0.1, random_state=seed)
    raise ValueError(f"baseline kind must be one of {KINDS}, not {kind!r}")


@dataclass
class Baselines:
    """Fitted regressors, one per (kind, target)."""

    models: dict[tuple[str, str], object]

    def predict(self, x: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
        from threadpoolctl import threadpool_limits

        f = plane_features(x)
        with threadpool_limits(1):
            return {key: m.predict(f) for key, m in self.models.items()}


def fit(x: np.ndarray, n_sub: np.ndarray, theta: np.ndarray, *, kinds: tuple[str, ...] = KINDS,
        ranks: int = 3, seed: int = 0) -> Baselines:
    """Fit each kind on each target, on the rows where the target exists."""
    from threadpoolctl import threadpool_limits

    f = plane_features(x)
    models = {}
    # one thread: OpenMP's spinning threads slow these small fits 10x on a busy 2-core machine
    with threadpool_limits(1):
        for name, y in targets(n_sub, theta, ranks).items():
            keep = np.isfinite(y)
            if keep.sum() < 10:
                continue
            for kind in kinds:
                models[(kind, name)] = _model(kind, seed).fit(f[keep], y[keep])
    return Baselines(models)


def score(baselines: Baselines, x: np.ndarray, n_sub: np.ndarray, theta: np.ndarray,
          ranks: int = 3) -> dict[str, dict[str, dict[str, float]]]:
    """kind -> target -> {rmse, bias, r2, truth_std, rows} (+ median_rel_error for N_sub,
    rounded to the nearest integer as a point estimate of a count)."""
    truth = targets(n_sub, theta, ranks)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (kind, name), pred in baselines.predict(x).items():
        y = truth[name]
        keep = np.isfinite(y)
        err = pred[keep] - y[keep]
        var = float(np.var(y[keep]))
        row = {"rmse": float(np.sqrt(np.mean(err ** 2))), "bias": float(np.mean(err)),
               "r2": float(1 - np.mean(err ** 2) / var) if var > 0 else float("nan"),
               "truth_std": float(np.sqrt(var)), "rows": int(keep.sum())}
        if name == "n_sub":
            row["median_rel_error"] = float(np.median(np.abs(np.rint(pred[keep]) - y[keep]) / y[keep]))
        out.setdefault(kind, {})[name] = row
    return out
