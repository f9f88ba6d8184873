"""``casbi-store calibrate-ood``: calibrate a model folder's misspecification score."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from ..misspecification import DEFAULTS

    c = sub.add_parser("calibrate-ood", help="calibrate the misspecification score of model "
                                             "folders on their training set (train does it too)")
    c.add_argument("models", nargs="+", help="model folders written by `train`")
    c.add_argument("--quantile", type=float, default=DEFAULTS["quantile"],
                   help="threshold: this quantile of held-out halos' scores (false alarms: 1 - q)")
    c.add_argument("--pool", type=int, nargs=2, metavar=("FEH", "OFE"),
                   default=list(DEFAULTS["pool"]),
                   help="bins per feature cell along [Fe/H] and [O/Fe] (each dividing 64)")
    c.add_argument("--k", type=int, default=DEFAULTS["k"], help="nearest training halos averaged")
    c.add_argument("--max-reference", type=int, default=DEFAULTS["max_reference"],
                   help="training halos kept as the reference")
    c.add_argument("--max-calibration", type=int, default=DEFAULTS["max_calibration"],
                   help="validation halos scored to set the threshold")
    c.add_argument("--split", choices=["auto", "val", "test"], default="auto",
                   help="halos that set the threshold (auto: test if the set holds out "
                        "simulations or galaxies, else val)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=run)


def calibrate_ood(models: list[str], *, quantile: float, k: int, max_reference: int,
                  max_calibration: int, split: str = "auto", seed: int = 0,
                  pool: tuple[int, int] | None = None) -> int:
    """Calibrate and write ``misspecification.npz`` into each model folder; print the figures."""
    from ..misspecification import CALIBRATION, DEFAULTS, calibrate_model

    pool = tuple(pool or DEFAULTS["pool"])
    for folder in models:
        cal = calibrate_model(folder, quantile=quantile, k=k, max_reference=max_reference,
                              max_calibration=max_calibration, split=split, seed=seed, pool=pool)
        m = cal.meta
        print(f"{folder}/{CALIBRATION}: threshold {cal.threshold:.4f} (the {100 * quantile:g}th "
              f"percentile of {m['n_calibration']} {m['set']}:{m['version']} "
              f"{m['calibration_split']} halos' "
              f"scores; {m['n_reference']} training halos as reference, k={k}, "
              f"cells of {pool[0]}x{pool[1]} [Fe/H]x[O/Fe] bins)")
    return 0


def run(args: argparse.Namespace) -> int:
    return calibrate_ood(args.models, quantile=args.quantile, k=args.k,
                         max_reference=args.max_reference, max_calibration=args.max_calibration,
                         split=args.split, seed=args.seed, pool=tuple(args.pool))
