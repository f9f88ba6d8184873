"""``casbi-store calibrate-ood``: calibrate a model folder's misspecification score."""

from __future__ import annotations

import argparse

from casbi_store import InputError

from .common import LazyHelp


def _defaults() -> dict:
    from casbi_store.learn.misspecification import DEFAULTS  # beside torch: not for every command

    return DEFAULTS


def _default(key: str, text: str) -> LazyHelp:
    return LazyHelp(lambda: f"{text} (default {_defaults()[key]})")


def add_parser(sub) -> None:
    c = sub.add_parser("calibrate-ood", help="calibrate the misspecification score of model "
                                             "folders on their training set (train does it too)")
    c.add_argument("models", nargs="+", help="model folders written by `train`")
    c.add_argument("--quantile", type=float, help=_default(
        "quantile", "threshold: this quantile of held-out halos' scores (false alarms: 1 - q)"))
    c.add_argument("--pools", nargs="+", metavar="FEHxOFE",
                   help="the score's components: bins per cell along [Fe/H] and [O/Fe], each "
                        "dividing 64 (default: the plane in 4x4 cells, the [O/Fe] distribution "
                        "in 8 bins)")
    c.add_argument("--k", type=int, help=_default("k", "nearest training halos averaged"))
    c.add_argument("--max-reference", type=int,
                   help=_default("max_reference", "training halos kept as the reference"))
    c.add_argument("--max-calibration", type=int,
                   help=_default("max_calibration", "validation halos scored to set the threshold"))
    c.add_argument("--split", choices=["auto", "val", "test"], default="auto",
                   help="halos that set the threshold (auto: test if the set holds out "
                        "simulations or galaxies, else val)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=run)


def calibrate_ood(models: list[str], *, quantile: float, k: int, max_reference: int,
                  max_calibration: int, split: str = "auto", seed: int = 0,
                  pools: list[str] | None = None) -> int:
    """Calibrate and write ``misspecification.npz`` into each model folder; print the figures."""
    from casbi_store.learn.misspecification import CALIBRATION, DEFAULTS, calibrate_model

    pairs = DEFAULTS["pools"] if pools is None else [parse_pool(p) for p in pools]
    for folder in models:
        cal = calibrate_model(folder, quantile=quantile, k=k, max_reference=max_reference,
                              max_calibration=max_calibration, split=split, seed=seed,
                              pools=pairs)
        m = cal.meta
        print(f"{folder}/{CALIBRATION}: threshold {cal.threshold:.4f} (the {100 * quantile:g}th "
              f"percentile of {m['n_calibration']} {m['set']}:{m['version']} "
              f"{m['calibration_split']} halos' "
              f"scores; {m['n_reference']} training halos as reference, k={k}, components "
              + ", ".join(f"{a}x{b}" for a, b in cal.pools) + " [Fe/H]x[O/Fe] bins)")
    return 0


def run(args: argparse.Namespace) -> int:
    given = {k: getattr(args, k) for k in ("quantile", "k", "max_reference", "max_calibration")}
    options = {k: _defaults()[k] if v is None else v for k, v in given.items()}
    return calibrate_ood(args.models, split=args.split, seed=args.seed, pools=args.pools,
                         **options)


def parse_pool(text: str) -> tuple[int, int]:
    """``FEHxOFE`` (e.g. ``64x8``) as a pair of integers."""
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--pools takes FEHxOFE pairs of integers such as 4x4 or 64x8, "
                         f"not {text!r}") from None
    return a, b
