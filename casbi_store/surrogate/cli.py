"""``casbi-store surrogate train|sample|validate``: the surrogate simulator's commands.

``add_parser(subparsers)`` registers them on the main parser; errors (missing store, incomplete
model folder, θ outside the prior) surface as the ValueError/FileNotFoundError/StoreError the main
CLI prints as one line.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from casbi_store import InputError, MissingInput

log = logging.getLogger("casbi_store")


def _cmd_train(args) -> int:
    from .model import SurrogateConfig, train_surrogate

    options = {k: getattr(args, k) for k in (
        "epochs", "stars_per_galaxy", "batch_size", "learning_rate", "transforms",
        "hidden_features", "hidden_layers", "bins", "theta_noise", "holdout_fraction", "seed")}
    if args.holdout:
        options["holdout_simulations"] = tuple(args.holdout)
    cfg = SurrogateConfig.from_dict({k: v for k, v in options.items() if v is not None})
    if not Path(args.store).exists() and "://" not in str(args.store):
        raise MissingInput(f"{args.store}: no such store")
    result = train_surrogate(args.store, args.out, cfg)
    last = result["history"][-1] if result["history"] else {}
    held = last.get("heldout_loss")
    print(f"surrogate in {args.out}: {len(result['history'])} epochs, last train loss "
          f"{last.get('train_loss', float('nan')):.4f}"
          + (f", held-out loss {held:.4f}" if held is not None else ""))
    return 0


def _cmd_sample(args) -> int:
    import xarray as xr

    from .data import THETA_NAMES, THETA_UNITS
    from .model import load_surrogate

    sur = load_surrogate(args.model)
    rng = np.random.default_rng(args.seed)
    if (args.theta is None) == (args.from_prior is None):
        raise InputError("give exactly one of --theta LOGMSTAR LOGMDM TAU or --from-prior N")
    if args.n < 1 or (args.from_prior is not None and args.from_prior < 1):
        raise InputError("--n and --from-prior must be at least 1")
    if args.theta is not None:
        theta = np.repeat(np.asarray(args.theta, dtype=np.float64)[None], args.n, axis=0)
        for note in sur.prior.check(theta[:1], allow_outside=args.allow_outside):
            log.warning("%s", note)
        source = "theta"
    else:
        theta = sur.prior.sample(args.from_prior, rng)
        source = "prior"
    counts = sur.sample_histograms(theta, rng)
    fe, of = sur.binning.feh_edges, sur.binning.ofe_edges
    ds = xr.Dataset(
        {"counts": (("block", "feh_bin", "ofe_bin"), counts, {"units": "stars"}),
         "theta": (("block", "param"), theta, {"units": ", ".join(THETA_UNITS)}),
         "feh_edges": (("feh_edge",), fe, {"units": "dex"}),
         "ofe_edges": (("ofe_edge",), of, {"units": "dex"})},
        coords={"param": list(THETA_NAMES), "feh_bin": (fe[1:] + fe[:-1]) / 2,
                "ofe_bin": (of[1:] + of[:-1]) / 2},
        attrs={"surrogate": str(sur.path), "theta_source": source, "seed": args.seed,
               "binning_version": sur.binning_version})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(out)
    totals = counts.sum(axis=(1, 2))
    print(f"{len(theta)} surrogate blocks ({source}) -> {out}: stars per block "
          f"{int(totals.min())} .. {int(totals.max())} (median {int(np.median(totals))})")
    return 0


def _cmd_validate(args) -> int:
    from .validation import validate_surrogate

    result = validate_surrogate(args.model, args.out, seed=args.seed,
                                density_stars=args.density_stars, n_figure=args.figures)
    print(f"held out: {result['n_heldout_snapshots']} snapshots of "
          f"{len(result['holdout_simulations'])} simulations")
    print(f"{'distance (median)':<20}{'surrogate':>11}{'density':>11}{'baseline':>11}{'wins':>7}")
    for metric, s in result["summary"].items():
        cells = [s[f"median_{k}"] for k in ("surrogate", "surrogate_density", "baseline")]
        win = s["win_fraction_surrogate"]
        print(f"{metric:<20}" + "".join(f"{'-' if c is None else f'{c:.4f}':>11}" for c in cells)
              + f"{'-' if win is None else f'{win:.2f}':>7}")
    for name, test in result["classifier_two_sample"].items():
        auc = test["auc"]
        print(f"classifier AUC {name}: {'-' if auc is None else f'{auc:.3f}'}")
    print(f"validation -> {Path(args.out) / 'validation.json'}")
    for path in result["figures"].values():
        print(f"  figure  {path}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``surrogate`` with its subcommands ``train``, ``sample``, ``validate``."""
    p = subparsers.add_parser("surrogate", help="the surrogate simulator: a conditional flow of "
                                                "building blocks' stars given theta")
    sub = p.add_subparsers(dest="surrogate_command", required=True)

    t = sub.add_parser("train", help="train (or resume) a surrogate on a store's stars")
    t.add_argument("store", help="store path")
    t.add_argument("--out", required=True, help="model folder (config, prior, checkpoints, weights)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--stars-per-galaxy", type=int, help="stars drawn per galaxy per epoch (512)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--learning-rate", type=float)
    t.add_argument("--transforms", type=int, help="NSF transforms (4)")
    t.add_argument("--hidden-features", type=int, help="hidden units per layer (64)")
    t.add_argument("--hidden-layers", type=int, help="hidden layers per transform (2)")
    t.add_argument("--bins", type=int, help="spline bins (8)")
    t.add_argument("--theta-noise", type=float,
                   help="std of Gaussian jitter on standardised theta while training (0.2)")
    t.add_argument("--holdout-fraction", type=float,
                   help="share of simulations held out for validation (0.2, seeded)")
    t.add_argument("--holdout", nargs="+", metavar="SIM", help="hold out these simulations instead")
    t.add_argument("--seed", type=int)
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="draw building blocks' 64x64 histograms to NetCDF")
    s.add_argument("model", help="surrogate model folder")
    s.add_argument("--theta", type=float, nargs=3, metavar=("LOGMSTAR", "LOGMDM", "TAU"),
                   help="log10 M* [Msun], log10 M_dm [Msun], infall time tau [Gyr]")
    s.add_argument("--n", type=int, default=1, help="blocks drawn at --theta (default 1)")
    s.add_argument("--from-prior", type=int, metavar="N", help="N blocks with theta from the prior")
    s.add_argument("--allow-outside", action="store_true",
                   help="sample theta outside the prior's support (extrapolation) with a warning")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="surrogate_blocks.nc", help="NetCDF file")
    s.set_defaults(func=_cmd_sample)

    v = sub.add_parser("validate", help="distances to held-out simulations against the "
                                        "nearest-theta baseline; validation.json and figures")
    v.add_argument("model", help="surrogate model folder")
    v.add_argument("--out", required=True, help="folder for validation.json and figures")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--density-stars", type=int, default=10_000,
                   help="stars per block of the 'surrogate density' planes (default 10000)")
    v.add_argument("--figures", type=int, default=4, help="held-out galaxies shown (default 4)")
    v.set_defaults(func=_cmd_validate)
    return p
