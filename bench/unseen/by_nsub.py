"""The two-step posterior's top block (rank 1) on an external suite, by N_sub: where in N_sub the
networks read log M*, log M_dm and tau of the most massive block, and where nothing does.

    python bench/unseen/by_nsub.py CLS THETA STORE:SET:VERSION [--halos 198] [--samples 200]

Prints, per N_sub bin of the truth, the halos, R² (against the bin's own truth spread), the 68%
coverage of the mixture's samples and the RMSE of its mean, against the standard deviation of the
bin's truths: at large N_sub the top block is nearly always one of the suite's most
massive galaxies, whose spread is small, so R² there says little on its own.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from casbi_store.evaluation.evaluate import read_split, two_step_samples
from casbi_store.learn.modelfolder import load_model
from casbi_store.learn.tasks import block_parameters

BINS = ((2, 10), (11, 30), (31, 60), (61, 100))


def r2(truth: np.ndarray, estimate: np.ndarray) -> float:
    return float(1 - np.mean((truth - estimate) ** 2) / np.var(truth)) if np.var(truth) > 0 else np.nan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cls")
    p.add_argument("theta")
    p.add_argument("against", help="STORE:SET:VERSION (its test split)")
    p.add_argument("--halos", type=int, default=198)
    p.add_argument("--samples", type=int, default=200)
    args = p.parse_args()
    step1, step2 = load_model(args.cls), load_model(args.theta)
    store, name, version = args.against.rsplit(":", 2)
    data = read_split(store, name, version, "test", args.halos)
    _, mixture = two_step_samples(step1, step2, data, args.samples)
    top = mixture.samples[:, :, 0]  # (samples, halos, 3)
    truth = block_parameters(torch.as_tensor(data.theta)[:, :1]).double().numpy()[:, 0]
    mean = np.nanmean(top, axis=0)
    lo, hi = np.nanpercentile(top, 16, axis=0), np.nanpercentile(top, 84, axis=0)
    names = list(step2.parameters)
    print(f"{args.against}: {len(data.x)} halos; networks {args.cls}, {args.theta}")
    print("per parameter: R² against the bin's truth spread, 68% coverage, RMSE, the truth's "
          "standard deviation")
    print(f"{'N_sub':>8s} {'halos':>6s}" + "".join(f" {n:>31s}" for n in names))
    for a, b in (*BINS, (2, 100)):
        m = (data.n_sub >= a) & (data.n_sub <= b)
        cells = []
        for j in range(len(names)):
            t = truth[m, j]
            cover = np.mean((t >= lo[m, j]) & (t <= hi[m, j]))
            rmse = np.sqrt(np.mean((t - mean[m, j]) ** 2))
            cells.append(f"{r2(t, mean[m, j]):6.2f} {cover:5.2f} {rmse:6.3f} {np.std(t):6.3f}")
        print(f"{a:>3d}-{b:<4d} {m.sum():6d}" + "".join(f" {c:>31s}" for c in cells))


if __name__ == "__main__":
    main()
