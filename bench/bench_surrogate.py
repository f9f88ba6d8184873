"""Surrogate benchmark: train the star-level flow on a store, validate it on held-out simulations
against the nearest-θ baseline, and time block sampling.

    python bench/bench_surrogate.py --store demo/store.zarr --work /tmp/sg/bench --out bench/results

Writes ``surrogate.json`` (training time per epoch, the validation summary, classifier AUCs,
interpolation-strip smoothness, blocks per second from the prior) and leaves the model folder and
the validation figures in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True)
    p.add_argument("--work", required=True, help="folder for the model and the validation output")
    p.add_argument("--out", default="bench/results", help="folder for surrogate.json")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--stars-per-galaxy", type=int, default=512)
    p.add_argument("--theta-noise", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blocks", type=int, default=1000, help="blocks sampled from the prior, timed")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from casbi_store.surrogate import (
        SurrogateConfig,
        load_surrogate,
        train_surrogate,
        validate_surrogate,
    )

    work = Path(args.work)
    cfg = SurrogateConfig(epochs=args.epochs, stars_per_galaxy=args.stars_per_galaxy,
                          theta_noise=args.theta_noise, seed=args.seed)
    start = time.perf_counter()
    history = train_surrogate(args.store, work / "model", cfg)["history"]
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    result = validate_surrogate(work / "model", work / "validation", seed=args.seed)
    validate_s = time.perf_counter() - start
    sur = load_surrogate(work / "model")
    rng = np.random.default_rng(args.seed)
    theta = sur.prior.sample(args.blocks, rng)
    start = time.perf_counter()
    blocks = sur.sample_histograms(theta, rng)
    sample_s = time.perf_counter() - start
    report = {
        "store": args.store, "options": asdict(cfg),
        "train_seconds": train_s, "epoch_seconds": [h["seconds"] for h in history],
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "final_heldout_loss": history[-1].get("heldout_loss") if history else None,
        "validate_seconds": validate_s,
        "heldout_snapshots": result["n_heldout_snapshots"],
        "heldout_simulations": len(result["holdout_simulations"]),
        "summary": result["summary"],
        "summary_large": result["summary_large"], "n_large": result["n_large"],
        "classifier_two_sample": result["classifier_two_sample"],
        "mzr_slope": {k: v["mzr_slope"] for k, v in result["physics"].items()},
        "knee_found_fraction": {k: v["knee_found_fraction"] for k, v in result["physics"].items()},
        "strip_consecutive_jsd": result["interpolation_strip"]["consecutive_jsd"],
        "blocks_per_second_from_prior": args.blocks / sample_s,
        "stars_per_block_median": float(np.median(blocks.sum(axis=(1, 2)))),
        "figures": result["figures"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "surrogate.json").write_text(json.dumps(report, indent=1))
    print(f"trained {len(history)} epochs in {train_s:.0f} s; validated in {validate_s:.0f} s on "
          f"{report['heldout_snapshots']} held-out snapshots")
    print(f"{'median distance':<18}{'surrogate':>11}{'density':>11}{'baseline':>11}{'wins':>7}")
    for label, summary in (("all", result["summary"]),
                           (f">= 1000 stars ({result['n_large']})", result["summary_large"])):
        print(label)
        for metric, s in summary.items():
            cells = [s[f"median_{k}"] for k in ("surrogate", "surrogate_density", "baseline")]
            print(f"{metric:<18}" + "".join(f"{'-' if c is None else f'{c:.4f}':>11}" for c in cells)
                  + f"{s['win_fraction_surrogate'] or 0:>7.2f}")
    for name, t in result["classifier_two_sample"].items():
        print(f"AUC {name}: {t['auc']}")
    print(f"{report['blocks_per_second_from_prior']:.1f} blocks/s from the prior -> {out / 'surrogate.json'}")


if __name__ == "__main__":
    main()
