"""Step 1 on unseen galaxies: why the N_sub NPE collapses, and the classifier's temperature.

For a trained N_sub NPE and classifier (model folders, e.g. the ablation's) and one set, in two
conditions (``in_distribution``: the validation split, new combinations of the training
galaxies; ``held_out``: the test split, simulations never trained on):

- the NPE's raw flow samples: the share outside its prior box (N_sub in [n_min - 0.5,
  n_max + 0.5]) that rounding then clips onto n_min or n_max, the posterior's spread, its bias
  and 68% coverage with the raw samples and with the rounded, clipped ones;
- the classifier's 68%/95% coverage and median relative error at T = 1 and at the temperature
  stored in its folder (fitted on the validation split, so the held-out figures are the honest
  ones);
- the log10 total star count against N_sub in both conditions (does N_sub extrapolate from the
  count?), and the NPE's posterior mean / truth against the share of distinct simulations among
  a halo's blocks (blocks are snapshots: several snapshots of one simulation share most stars;
  a held-out pool of few simulations makes halos of repeated galaxies).

Figures (PNG) and numbers (JSON) go to ``--out``.

    python bench/bench_nsub.py --store /work/power_bench/store.zarr --set abl_small:v1 \\
        --npe MODELS/nsub_log1p__NPE --classifier MODELS/nsub_classifier_log1p__default \\
        --out bench/results/nsub
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def npe_diagnostics(model, data, n_samples: int, seed: int) -> dict:
    """Raw and rounded NPE samples against the truth."""
    import torch

    from casbi_store.apply.posteriors import box_bounds, load_posterior
    from casbi_store.evaluation import evaluate as ev
    from casbi_store.learn import calibration as cal

    torch.manual_seed(seed)
    raw = ev._flow_samples(load_posterior(model), torch.as_tensor(data.x)[:, None],
                           n_samples)[..., 0].double().numpy()  # (S, halos)
    low, high = (float(b[0]) for b in box_bounds(model))
    truth = data.n_sub.astype(float)
    n_min, n_max = model.meta["n_sub_range"]
    rounded = np.clip(np.rint(raw), n_min, n_max)
    outside = (raw < low) | (raw > high)
    rng = np.random.default_rng(seed)
    return {
        "outside_fraction": float(outside.mean()),
        "halos_mostly_outside": float(np.mean(outside.mean(axis=0) > 0.5)),
        "posterior_std_median": float(np.median(raw.std(axis=0))),
        "bias_median": float(np.median(raw.mean(axis=0) - truth)),
        "median_rel_error": float(np.median(np.abs(np.median(rounded, axis=0) - truth) / truth)),
        "coverage_68_raw": cal.coverage(cal.pit(raw, truth, rng), 0.68),
        "coverage_68_rounded": cal.coverage(cal.pit(rounded, truth, rng), 0.68),
        "coverage_95_rounded": cal.coverage(cal.pit(rounded, truth, rng), 0.95),
        "_mean": raw.mean(axis=0), "_std": raw.std(axis=0), "_truth": truth,
    }


def classifier_diagnostics(model, data, seed: int) -> dict:
    """Coverage and error at T = 1 and at the folder's temperature."""
    from casbi_store.evaluation import evaluate as ev

    stored = dict(model.calibration)
    out = {"temperature": stored.get("temperature", 1.0)}
    for label, calibration in (("T=1", {}), ("T=fitted", stored)):
        model.calibration = calibration
        m = ev.evaluate_nsub(model, data, n_samples=1000, seed=seed)["metrics"]
        out[label] = {k: m[k] for k in ("coverage_68", "coverage_95", "hpd_coverage_68",
                                        "median_rel_error", "accuracy", "skill", "rmse")}
    model.calibration = stored
    return out


def distinct_share(store, name: str, version: str, split: str, rows: np.ndarray) -> np.ndarray:
    """Distinct simulations / N_sub of each halo (``members`` -> the galaxies' simulation)."""
    import xarray as xr

    from casbi_store.store import trainingsets

    sims = xr.open_zarr(store, group="galaxies", consolidated=True).simulation.values
    sims = np.array([str(v) for v in sims], dtype=object)
    members = trainingsets.open_split_group(store, name, version, split, None)["members"][:][rows]
    return np.array([len(set(sims[m[m >= 0]])) / max((m >= 0).sum(), 1) for m in members])


def figures(results: dict, data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for cond, color in (("in_distribution", "C0"), ("held_out", "C3")):
        d = results["npe"][cond]
        axes[0].errorbar(d["_truth"], d["_mean"], yerr=d["_std"], fmt=".", color=color, alpha=0.5,
                         ms=3, lw=0.5, label=f"{cond}: cov68 {d['coverage_68_rounded']:.2f}")
        x = data[cond].x.reshape(len(data[cond].x), -1).sum(axis=1)
        axes[2].scatter(data[cond].n_sub, np.log10(np.maximum(x, 1)), s=4, color=color,
                        alpha=0.5, label=cond)
        axes[3].scatter(results["distinct"][cond], d["_mean"] / d["_truth"], s=5, color=color,
                        alpha=0.6, label=cond)
        for label in ("T=1", "T=fitted"):
            c = results["classifier"][cond][label]
            axes[1].bar(f"{cond[:8]}\n{label}", c["coverage_68"], color=color,
                        alpha=0.5 if label == "T=1" else 0.9)
    lim = [0, max(results["n_sub_range"]) + 5]
    axes[0].plot(lim, lim, "k--", lw=0.8)
    axes[0].set(xlabel="true N_sub", ylabel="NPE posterior mean ± std (raw flow samples)",
                title="N_sub NPE")
    axes[0].legend(fontsize=8)
    axes[1].axhline(0.68, color="k", lw=0.8)
    axes[1].set(ylabel="68% coverage", ylim=(0, 1),
                title=f"classifier, T = {results['classifier']['held_out']['temperature']:.2f}")
    axes[2].set(xlabel="true N_sub", ylabel="log10 total star count", title="the count vs N_sub")
    axes[2].legend(fontsize=8)
    axes[3].axhline(1, color="k", lw=0.8)
    axes[3].set(xlabel="distinct simulations / N_sub of the halo", ylabel="NPE mean / true N_sub",
                title="repeated galaxies", xscale="log")
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "nsub_diagnostics.png", dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--set", required=True, help="NAME:VERSION the models were trained on")
    p.add_argument("--npe", required=True, help="an nsub model folder")
    p.add_argument("--classifier", required=True, help="an nsub_classifier model folder")
    p.add_argument("--out", default="bench/results/nsub")
    p.add_argument("--halos", type=int, default=200)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from casbi_store.evaluation import evaluate as ev
    from casbi_store.learn.modelfolder import load_model

    torch.set_num_threads(args.threads)
    name, version = args.set.split(":")
    data = {"in_distribution": ev.read_split(args.store, name, version, "val", args.halos),
            "held_out": ev.read_split(args.store, name, version, "test", args.halos)}
    npe, classifier = load_model(args.npe), load_model(args.classifier)
    results = {"set": args.set, "halos": args.halos, "samples": args.samples,
               "n_sub_range": npe.meta["n_sub_range"], "npe": {}, "classifier": {},
               "distinct": {}, "distinct_share_by_n_sub": {}}
    for (cond, d), split in zip(data.items(), ("val", "test"), strict=True):
        results["npe"][cond] = npe_diagnostics(npe, d, args.samples, 0)
        results["classifier"][cond] = classifier_diagnostics(classifier, d, 0)
        share = distinct_share(args.store, name, version, split, d.rows)
        results["distinct"][cond] = share
        results["distinct_share_by_n_sub"][cond] = {
            f"{lo}-{hi}": float(np.median(share[(d.n_sub >= lo) & (d.n_sub <= hi)]))
            for lo, hi in ((2, 10), (11, 30), (31, 60), (61, 100))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figures(results, data, out)
    public = json.loads(json.dumps({k: v for k, v in results.items() if k != "distinct"},
                                   default=lambda v: None))
    for cond in data:
        public["npe"][cond] = {k: v for k, v in results["npe"][cond].items()
                               if not k.startswith("_")}
    (out / "nsub.json").write_text(json.dumps(public, indent=1))
    print(json.dumps(public, indent=1))
    return public


if __name__ == "__main__":
    main()
