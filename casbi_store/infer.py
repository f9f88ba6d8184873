"""Posteriors for a new halo: the two-step inference on one 64x64 histogram.

A trained estimator (``casbi_store.trainer``) becomes an sbi ``DirectPosterior`` with a
``BoxUniform`` prior over the training targets' ranges; samples outside the prior are rejected by
sbi. ``infer`` samples N_sub and theta for one histogram and returns them as an
``xarray.Dataset`` with named parameters and units (written as NetCDF by the CLI).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from . import schema as S
from .trainer import load_estimator

UNITS = {"n_sub": "", "log10_mstar": "log10 Msol", "log10_mdm": "log10 Msol", "tau": "Gyr"}


def load_posterior(model_dir: str | os.PathLike):
    """sbi DirectPosterior of a trained model, with a BoxUniform prior over its training ranges."""
    from sbi.inference import DirectPosterior
    from sbi.utils import BoxUniform

    estimator, meta = load_estimator(model_dir)
    theta = np.load(Path(model_dir) / "transform.npz")["theta_example"]
    low, high = theta.min(axis=0), theta.max(axis=0)
    prior = BoxUniform(torch.as_tensor(low, dtype=torch.float32),
                       torch.as_tensor(np.maximum(high, low + 1e-6), dtype=torch.float32))
    return DirectPosterior(estimator, prior), meta


def read_histogram(path: str | os.PathLike) -> np.ndarray:
    """A 64x64 histogram from .npy, or from .nc (variable ``x`` or ``counts``)."""
    path = Path(path)
    if path.suffix == ".npy":
        x = np.load(path)
    elif path.suffix == ".nc":
        ds = xr.open_dataset(path)
        name = S.X.name if S.X.name in ds else S.COUNTS.name
        x = ds[name].values
    else:
        raise ValueError(f"{path}: expected a .npy or .nc histogram")
    x = np.squeeze(np.asarray(x, dtype=np.float32))
    if x.shape != (S.N_BINS, S.N_BINS):
        raise ValueError(f"{path}: histogram has shape {x.shape}, expected "
                         f"({S.N_BINS}, {S.N_BINS}) binned with the store's binning")
    if (x < 0).any() or not np.isfinite(x).all():
        raise ValueError(f"{path}: histogram has negative or non-finite counts")
    return x


def infer(model_dirs: list[str | os.PathLike], histogram: np.ndarray, n_samples: int = 10_000,
          seed: int = 0) -> xr.Dataset:
    """Posterior samples of every model's parameters for one histogram."""
    torch.manual_seed(seed)
    x = torch.as_tensor(histogram, dtype=torch.float32)[None, None]
    data = {}
    for model_dir in model_dirs:
        posterior, meta = load_posterior(model_dir)
        samples = posterior.sample((n_samples,), x=x, show_progress_bars=False).numpy()
        for k, name in enumerate(meta["parameters"]):
            base = name.rsplit("_", 1)[0] if name[-1].isdigit() else name
            data[name] = xr.Variable("sample", samples[:, k],
                                     attrs={"units": UNITS.get(base, ""), "model": str(model_dir),
                                            "task": meta["task"]})
    return xr.Dataset(data, attrs={"models": json.dumps([str(m) for m in model_dirs]),
                                   "n_samples": n_samples, "seed": seed})


def corner_plot(samples: xr.Dataset, out: str | os.PathLike, max_params: int = 7) -> Path:
    """A small corner plot (histograms on the diagonal, scatter below) of the samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(samples.data_vars)[:max_params]
    n = len(names)
    fig, axes = plt.subplots(n, n, figsize=(2.2 * n, 2.2 * n), squeeze=False)
    for i, yi in enumerate(names):
        for j, xj in enumerate(names):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
            elif i == j:
                ax.hist(samples[xj].values, bins=40, color="0.3")
            else:
                ax.hist2d(samples[xj].values, samples[yi].values, bins=40, cmap="Greys")
            if i == n - 1:
                ax.set_xlabel(xj, fontsize=8)
            if j == 0 and i > 0:
                ax.set_ylabel(yi, fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
