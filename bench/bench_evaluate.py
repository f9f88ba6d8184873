"""Evaluation benchmark: every metric on 10,000 test halos at the seed's network size.

A scratch copy of a store (the store itself is not modified) gets a ``uniform`` set with
``--test-per-n`` test halos per N_sub in [``--n-sub-min``, ``--n-sub-max``] (the seed: 100 per
N_sub in [2, 100], 9,900 halos) and a small training split. A classifier (step 1) and the
per-rank ``theta`` NSF (step 2) of the seed's size (10 transforms x 100 hidden, CNN 64x64 -> 128)
train for ``--epochs`` on it: the timings do not depend on what the networks learnt, only on
their size and the spread of the N_sub posteriors (an untrained classifier's is wide: the
two-step mixture then needs more (halo, N_sub, rank) conditions than a trained one, so this is
a pessimistic bound). Then ``evaluate`` runs every metric in one test condition (held-out; the
other conditions cost the same per halo), ``--samples`` posterior samples per halo, torch on
``--threads`` threads.

Figures (JSON in ``--out``): seconds (wall) and CPU-seconds of this process (the robust
figure on a shared machine) for the whole evaluation, per model, the two-step posterior, the
baselines, halos per second, and the load average before and after. The target (issue 8):
10,000 halos with every metric in under 10 minutes on 2 cores. ``--workdir`` keeps the store
copy and the trained models, so a second run (e.g. another revision of the code, by
``PYTHONPATH``) times the evaluation of the same models.

    python bench/bench_evaluate.py --store demo/store.zarr --out bench/results
    python bench/bench_evaluate.py --store tiny.zarr --n-sub-min 3 --n-sub-max 8 \
        --test-per-n 20 --network tiny --out /tmp/bench      # a quick check that it runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True, help="an extracted store (copied, not modified)")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--n-sub-min", type=int, default=2)
    p.add_argument("--n-sub-max", type=int, default=100)
    p.add_argument("--test-per-n", type=int, default=100)
    p.add_argument("--train-per-n", type=int, default=20)
    p.add_argument("--halos", type=int, default=10_000)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--network", choices=("seed", "tiny"), default="seed",
                   help="tiny: small networks, to check that the script runs")
    p.add_argument("--workdir", help="keep the store copy and models here (reused if present)")
    p.add_argument("--result-name", default="evaluate.json")
    p.add_argument("--point-estimate-weight", type=float, default=0.0,
                   help="the models' point-estimate head (demo.yaml and seed.yaml: 100)")
    args = p.parse_args(argv)

    import torch

    from casbi_store.compose import ComposeSpec, compose
    from casbi_store.evaluation.evaluate import evaluate
    from casbi_store.learn.trainer import TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        tmp = Path(args.workdir or stack.enter_context(tempfile.TemporaryDirectory()))
        store = tmp / "store.zarr"
        if not (store / ".zmetadata").exists():
            shutil.copytree(args.store, store)
            compose(store, ComposeSpec(name="bench", version="v1", n_sub_min=args.n_sub_min,
                                       n_sub_max=args.n_sub_max, train_per_n=args.train_per_n,
                                       test_per_n=args.test_per_n, seed=args.seed), progress=False)
        common = dict(epochs=args.epochs, seed=args.seed,
                      point_estimate_weight=args.point_estimate_weight)
        config = TrainConfig(**common)  # the seed's network size
        if args.network == "tiny":
            config = TrainConfig(**common, hidden_features=16, num_transforms=2, embedding_dim=16,
                                 conv_channels=(4, 8))
        models = []
        for task in ("nsub_classifier", "theta"):
            if not (tmp / task / "ensemble.json").exists():
                train(store, "bench", "v1", task, tmp / task, config)
            models.append(tmp / task)
        load = os.getloadavg()
        start, cpu = time.perf_counter(), time.process_time()
        results = evaluate(models, max_halos=args.halos, n_samples=args.samples, seed=args.seed,
                           in_distribution_split=None)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    cond = results["conditions"]["held_out"]
    figures = {
        "halos": cond["halos"], "samples": args.samples, "threads": args.threads,
        "seconds": seconds, "cpu_seconds": cpu_seconds, "halos_per_second": cond["halos"] / seconds,
        "load_average_before": load, "load_average_after": os.getloadavg(),
        "models": {r["task"]: r["timings"]["held_out"] for r in results["models"].values()},
        "two_step": cond.get("two_step", {}).get("timings"),
        "machine": platform.platform(), "args": vars(args), "network": args.network,
        "metrics": cond.get("two_step", {}).get("metrics"),
    }
    (out / args.result_name).write_text(json.dumps(figures, indent=2, default=float))
    print(f"{cond['halos']} halos, {args.samples} samples each, every metric: {seconds:.0f} s, "
          f"{cpu_seconds:.0f} CPU-s ({cond['halos'] / seconds:.1f} halos/s; target: 10,000 halos "
          f"< 600 s on 2 cores); load average {load[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    return figures


if __name__ == "__main__":
    main()
