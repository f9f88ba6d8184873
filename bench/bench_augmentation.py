"""Does the surrogate help? Step 1 (``nsub_classifier``) and step 2 (``theta``) trained on real,
mixed and surrogate-only sets of the same size, judged on real halos (issue 9 §3).

    python bench/bench_augmentation.py --store demo/store.zarr --external ext/store.zarr \\
        --work /tmp/aug --out bench/results

1. ``real``: N_sub uniform in [n_sub_min, n_sub_max], ``train_per_n`` halos per N_sub, test
   simulations held out (``split_by: simulation``); its test split is the **held-out** condition.
2. A surrogate trained on the store with exactly those test simulations held out (it never sees
   the galaxies the estimators are judged on).
3. ``mixed`` (the same halos, ``--fraction`` of their blocks surrogate) and ``surrogate`` (every
   block surrogate), the same spec and seed: the same N_sub counts and set size.
4. The **external** condition: the same scheme composed on ``--external``, another mock seed
   extracted with the store's bin edges (its test split; every simulation unseen).
5. Per source: ``nsub_classifier`` and ``theta`` with the same options and seed; each judged on
   both conditions (``evaluate_nsub``, ``evaluate_theta`` on the true N_sub).

Writes ``augmentation.json`` (every metric, sizes, seconds) and ``augmentation.png`` into
``--out`` and prints the table. Re-running reuses what ``--work`` holds (sets, models).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

SOURCES = ("real", "mixed", "surrogate")
CONDITIONS = ("held_out", "external")
NSUB_METRICS = ("accuracy", "median_rel_error", "hpd_coverage_68", "hpd_coverage_95")


def _theta_names(metrics: dict) -> list[str]:
    """The rank-1 parameter names the theta metrics use (``coverage_68_<name>``)."""
    return sorted(k[len("coverage_68_"):] for k in metrics if k.startswith("coverage_68_"))


def compose_sets(store: Path, external: Path, surrogate: Path, base: dict, fraction: float,
                 library: int) -> dict:
    from casbi_store.compose import ComposeSpec, compose

    seconds = {}
    for source, extra in (("mixed", {"source": "mixed", "surrogate": str(surrogate),
                                     "surrogate_fraction": fraction, "surrogate_library": library}),
                          ("surrogate", {"source": "surrogate", "surrogate": str(surrogate),
                                         "surrogate_library": library})):
        start = time.perf_counter()
        entry = compose(store, ComposeSpec(**{**base, "name": f"aug_{source}"}, **extra), progress=False)
        seconds[source] = {"seconds": time.perf_counter() - start, "counts": entry["counts"],
                           "library": entry["source"].get("library")}
    start = time.perf_counter()
    ext = dict(base, name="aug_real", split_by="combination")
    seconds["external"] = {"counts": compose(external, ComposeSpec(**ext), progress=False)["counts"],
                           "seconds": time.perf_counter() - start}
    return seconds


def test_simulations(store: Path, name: str) -> list[str]:
    """Simulations whose galaxies are blocks of the set's test split."""
    import xarray as xr

    from casbi_store.store import schema as S
    from casbi_store.store.io import as_strings, open_store

    members = xr.open_zarr(store, group=f"training_sets/{name}/v1/test", consolidated=True).members.values
    sims = np.asarray(as_strings(open_store(store)[S.SIMULATION.name].values))
    return sorted(set(sims[members[members >= 0]].tolist()))


def judge(model_dir: Path, task: str, conditions: dict, samples: int, seed: int) -> dict:
    from casbi_store.evaluation.evaluate import evaluate_nsub, evaluate_theta, read_split
    from casbi_store.learn.modelfolder import load_model

    model = load_model(model_dir)
    out = {}
    for cond, (store, halos) in conditions.items():
        data = read_split(store, "aug_real", "v1", "test", halos)
        if task == "nsub_classifier":
            m = evaluate_nsub(model, data, n_samples=samples, seed=seed)["metrics"]
            out[cond] = {k: m[k] for k in NSUB_METRICS} | {"halos": m["halos"]}
        else:
            m = evaluate_theta(model, data, n_samples=samples, ranks=1, seed=seed)["metrics"]
            names = _theta_names(m)
            out[cond] = {f"{k}_{p}": m.get(f"{k}_{p}") for p in names
                         for k in ("coverage_68", "coverage_95", "r2", "rmse", "skill")}
            out[cond]["rows"] = m["rows"]
    return out


def _train_one(job: tuple) -> float:
    """One estimator in its own process (one torch thread): ``(store, set, task, folder, cfg)``."""
    import torch

    from casbi_store.learn.trainer import train

    torch.set_num_threads(1)
    store, name, task, folder, cfg = job
    start = time.perf_counter()
    train(store, name, "v1", task, folder, cfg)
    return time.perf_counter() - start


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("nsub_classifier", "median_rel_error", "N_sub: median |N̂−N|/N (↓)"),
              ("nsub_classifier", "hpd_coverage_68", "N_sub: 68% HPD coverage (0.68)")]
    theta_keys = sorted(k for k in results["real"]["theta"]["held_out"] if k.startswith("r2_"))
    panels += [("theta", k, f"θ rank 1: {k.removeprefix('r2_')} R² (↑)") for k in theta_keys]
    panels += [("theta", k, f"θ rank 1: {k.removeprefix('coverage_68_')} 68% coverage")
               for k in sorted(k for k in results["real"]["theta"]["held_out"]
                               if k.startswith("coverage_68_"))][:1]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2))
    width = 0.38
    for ax, (task, key, title) in zip(np.atleast_1d(axes), panels, strict=True):
        for j, cond in enumerate(CONDITIONS):
            values = [results[s][task][cond][key] for s in SOURCES]
            ax.bar(np.arange(len(SOURCES)) + (j - 0.5) * width, values, width, label=cond.replace("_", "-"))
        if "coverage_68" in key:
            ax.axhline(0.68, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(SOURCES)), SOURCES)
        ax.set_title(title, fontsize=8)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle("training source → judged on real halos of held-out and external simulations",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True, help="an extracted store (copied, not modified)")
    p.add_argument("--external", type=Path, required=True,
                   help="another suite's store, extracted with --store's bin edges (copied)")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--n-sub-min", type=int, default=2)
    p.add_argument("--n-sub-max", type=int, default=30)
    p.add_argument("--train-per-n", type=int, default=60)
    p.add_argument("--test-per-n", type=int, default=10)
    p.add_argument("--fraction", type=float, default=0.5, help="mixed: share of surrogate blocks")
    p.add_argument("--library", type=int, default=2000, help="surrogate_library")
    p.add_argument("--surrogate-epochs", type=int, default=8)
    p.add_argument("--surrogate-stars", type=int, default=512, help="stars per galaxy per epoch")
    p.add_argument("--epochs", type=int, default=8, help="estimator epochs")
    p.add_argument("--halos", type=int, default=300, help="test halos judged per condition")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="estimators trained at once (processes)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)

    from casbi_store.compose import ComposeSpec, compose
    from casbi_store.learn.trainer import TrainConfig
    from casbi_store.surrogate import SurrogateConfig, train_surrogate

    args.work.mkdir(parents=True, exist_ok=True)
    store, external = args.work / "store.zarr", args.work / "external.zarr"
    for src, dst in ((args.store, store), (args.external, external)):
        if not dst.exists():
            shutil.copytree(src, dst)
    base = dict(name="aug_real", version="v1", seed=args.seed + 11, split_by="simulation",
                n_sub_min=args.n_sub_min, n_sub_max=args.n_sub_max, train_per_n=args.train_per_n,
                test_per_n=args.test_per_n)
    timings: dict = {}
    start = time.perf_counter()
    compose(store, ComposeSpec(**base), progress=False)
    timings["compose_real"] = time.perf_counter() - start
    held = test_simulations(store, "aug_real")
    start = time.perf_counter()
    surrogate = args.work / "surrogate"
    train_surrogate(store, surrogate, SurrogateConfig(epochs=args.surrogate_epochs, seed=args.seed,
                                                      stars_per_galaxy=args.surrogate_stars,
                                                      holdout_simulations=tuple(held)))
    timings["surrogate_train"] = time.perf_counter() - start
    timings["compose"] = compose_sets(store, external, surrogate, base, args.fraction, args.library)
    cfg = TrainConfig(epochs=args.epochs, patience=args.epochs, batch_size=128, learning_rate=1e-3,
                      hidden_features=32, num_transforms=3, embedding_dim=32, conv_channels=(8, 16),
                      seed=args.seed, in_memory=True)
    conditions = {"held_out": (store, args.halos), "external": (external, args.halos)}
    jobs = {(source, task): (store, f"aug_{source}", task, args.work / "models" / source / task, cfg)
            for source in SOURCES for task in ("nsub_classifier", "theta")}
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            seconds = dict(zip(jobs, pool.map(_train_one, jobs.values()), strict=True))
    else:
        seconds = {key: _train_one(job) for key, job in jobs.items()}
    results: dict = {source: {} for source in SOURCES}
    for (source, task), job in jobs.items():
        timings[f"train_{source}_{task}"] = seconds[(source, task)]
        results[source][task] = judge(job[3], task, conditions, args.samples, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"options": vars(args) | {"store": str(args.store), "external": str(args.external),
                                       "work": str(args.work), "out": str(args.out)},
              "held_out_simulations": held, "timings": timings, "results": results,
              "train_config": {k: getattr(cfg, k) for k in ("epochs", "hidden_features",
                                                           "num_transforms", "embedding_dim",
                                                           "conv_channels")}}
    (args.out / "augmentation.json").write_text(json.dumps(report, indent=1, default=str))
    plot(results, args.out / "augmentation.png")
    print(table(results))
    print(f"-> {args.out / 'augmentation.json'}, {args.out / 'augmentation.png'}")


def table(results: dict) -> str:
    """A Markdown table: one row per (training source, condition)."""
    theta_cols = sorted(k for k in results["real"]["theta"]["held_out"]
                        if k.startswith(("r2_", "coverage_68_")))
    head = ["source", "condition", *NSUB_METRICS[:3], *theta_cols]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for source in SOURCES:
        for cond in CONDITIONS:
            cells = [results[source]["nsub_classifier"][cond][k] for k in NSUB_METRICS[:3]]
            cells += [results[source]["theta"][cond][k] for k in theta_cols]
            rows.append("| " + " | ".join([source, cond, *(f"{c:.3f}" for c in cells)]) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
