"""``casbi-store infer``: two-step posterior samples for one halo."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from casbi_store import InputError


def add_parser(sub) -> None:
    inf = sub.add_parser("infer", help="two-step posterior samples for one halo")
    inf.add_argument("models", nargs="+", help="model folders written by `train` (step 1 and 2)")
    inf.add_argument("--histogram", help=".npy or .nc 64x64 histogram, binned with the store's binning")
    inf.add_argument("--stars", help="CSV star table with [Fe/H] and [O/Fe] columns")
    inf.add_argument("--out", default="posterior.nc", help="NetCDF of the samples (+ .png corner)")
    inf.add_argument("--samples", type=int, default=10_000)
    inf.add_argument("--nsub-draw", choices=["mixture", "mode"], default="mixture",
                     help="condition theta on step 1's N_sub samples (mixture) or its mode")
    inf.add_argument("--ranks", type=int, default=3, help="blocks to infer, by M* rank")
    inf.add_argument("--seed", type=int, default=0)
    inf.add_argument("--n-obs", type=float, help="normalised-representation models: the N_obs to "
                     "condition on (default: the histogram's total, an observation's N_obs)")
    inf.set_defaults(func=run)


def infer_halo(models: list[str], out: str, *, histogram: str | None = None,
               stars: str | None = None, samples: int = 10_000, nsub_draw: str = "mixture",
               ranks: int = 3, seed: int = 0, n_obs: float | None = None) -> int:
    """Sample the posterior of one halo (a histogram file or a star table) with the model
    folders ``models``; write the samples (NetCDF) and a corner plot, print the summary."""
    from casbi_store.apply.infer import corner_plot, infer, read_input
    from casbi_store.learn.misspecification import Assessment
    from casbi_store.learn.modelfolder import load_model

    from .common import warnings_as_lines

    if bool(histogram) == bool(stars):
        raise InputError("give exactly one of --histogram (.npy/.nc) or --stars (.csv/.fits)")
    loaded = [load_model(m) for m in models]
    # an observation file is checked against the model's bin edges; a star table is read as
    # `observe --binning MODEL` reads it (dex check, cuts, drops counted)
    x = read_input(histogram or stars, loaded[0])
    print(x.summary)
    start = time.perf_counter()
    with warnings_as_lines():  # misspecification, N_obs outside the training range
        drawn = infer(loaded, x, n_samples=samples, seed=seed, nsub_draw=nsub_draw, ranks=ranks,
                      n_obs=n_obs)
    seconds = time.perf_counter() - start
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    drawn.to_netcdf(path)
    png = corner_plot(drawn, path.with_suffix(".png"))
    print(f"{samples} posterior samples in {seconds:.2f} s -> {path}, corner plot {png}")
    for name, var in drawn.data_vars.items():
        for label, values in ([(f"{name}_{r}", var.sel(rank=r).values) for r in var["rank"].values]
                              if "rank" in var.dims else [(name, var.values)]):
            values = values[np.isfinite(values)]
            if len(values):
                lo, med, hi = np.percentile(values, [16, 50, 84])
                print(f"  {label:<16} {med:10.3f}  (68%: {lo:.3f} .. {hi:.3f}) {var.attrs['units']}")
    print(Assessment.from_attrs(drawn.attrs).summary())
    if "support_box_inside" in drawn.attrs:
        fraction, inside = drawn.attrs["support_fraction"], drawn.attrs["support_box_inside"]
        near = f"{100 * fraction:.0f}%" if fraction >= 0 else "unknown (training store unreadable)"
        verdict = ("NOT TRUSTED: unlike the training halos, or between or beyond their galaxies"
                   if drawn.attrs.get("support_flagged") else "ok")
        print(f"support: {100 * inside:.0f}% of the flow's draws inside the training range, {near} "
              f"of the top block's samples within 0.1 dex of a training galaxy in M*: {verdict}")
    return 0


def run(args: argparse.Namespace) -> int:
    return infer_halo(args.models, args.out, histogram=args.histogram, stars=args.stars,
                      samples=args.samples, nsub_draw=args.nsub_draw, ranks=args.ranks,
                      seed=args.seed, n_obs=args.n_obs)
