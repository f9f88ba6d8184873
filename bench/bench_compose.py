"""Composition benchmark: halos per second, end to end, and the ratio to per-halo re-binning.

Composes the seed's scheme (N_sub uniform in [2, 100]) at about 1e5 halos into a copy of a store
(``compose``: drawing, sparse gather-sum, chunk-aligned parallel Zarr writes, checksum,
publication). The baseline is what the original CASBI code does: for each halo, concatenate
every member's stars and histogram them again; it is timed on a sample of halos.

    python bench/bench_compose.py --store demo/store.zarr --out bench/results

With ``--surrogate MODEL_DIR`` it also composes the same scheme from the ``surrogate`` source and
the ``mixed`` source (``--fraction`` of surrogate blocks), and with ``--observation`` the real
source through the survey observation model (N_obs log-uniform in [100, 10000], log-normal errors,
median 0.05 dex / 0.03 dex); these are slower per halo, so they compose ``--variant-per-n`` halos
per N_sub, as does a real set of that size (``variants.real``, the same fixed costs). Each
reports halos/s and its ratio to that real sum of histograms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np


def rebin_per_halo(store: Path, members: np.ndarray) -> float:
    """Seconds per halo to rebuild x from the members' stars (np.histogram2d per halo)."""
    from casbi_store import open_stars, open_store
    from casbi_store.store.binning import Binning
    from casbi_store.store.io import store_attrs

    binning = Binning.from_dict(store_attrs(str(store))["binning"])
    ds = open_store(store)
    offsets, n_star = ds["star_offset"].values, ds["n_star"].values
    stars = open_stars(store)
    feh, ofe = stars["feh"].values, stars["ofe"].values
    start = time.perf_counter()
    for row in members:
        idx = np.concatenate([np.arange(offsets[m], offsets[m] + n_star[m]) for m in row[row >= 0]])
        np.histogram2d(feh[idx], ofe[idx], bins=[binning.feh_edges, binning.ofe_edges])
    return (time.perf_counter() - start) / len(members)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True, help="an extracted store (not modified)")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--train-per-n", type=int, default=1000)
    p.add_argument("--test-per-n", type=int, default=10)
    p.add_argument("--baseline-halos", type=int, default=200)
    p.add_argument("--n-sub-max", type=int, default=100)
    p.add_argument("--surrogate", type=Path, help="a trained surrogate model folder")
    p.add_argument("--fraction", type=float, default=0.2, help="mixed: share of surrogate blocks")
    p.add_argument("--observation", action="store_true", help="also the survey observation model")
    p.add_argument("--variant-per-n", type=int, default=2, help="halos per N_sub of the variants")
    p.add_argument("--library", type=int, default=2000,
                   help="surrogate and mixed: surrogate_library (distinct surrogate blocks)")
    args = p.parse_args()

    import xarray as xr

    from casbi_store.compose import ComposeSpec, compose

    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "compose-bench.zarr"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(args.store, work)
    spec = ComposeSpec(name="bench", version="v1", seed=1, train_per_n=args.train_per_n,
                       test_per_n=args.test_per_n, n_sub_max=args.n_sub_max)
    start = time.perf_counter()
    entry = compose(work, spec, progress=False)
    seconds = time.perf_counter() - start
    n_halos = sum(entry["counts"].values())
    test = xr.open_zarr(work, group="training_sets/bench/v1/train", consolidated=True)
    sample = test["members"].values[:: max(1, test.sizes["halo"] // args.baseline_halos)]
    per_halo_rebin = rebin_per_halo(work, sample[: args.baseline_halos])
    mean_n_sub = float(test["n_sub"].values.mean())
    result = {
        "halos": n_halos, "counts": entry["counts"], "seconds": seconds,
        "halos_per_s": n_halos / seconds, "mean_n_sub": mean_n_sub,
        "rebin_seconds_per_halo": per_halo_rebin,
        "rebin_halos_per_s": 1 / per_halo_rebin,
        "speedup_vs_rebinning": (n_halos / seconds) * per_halo_rebin,
        "store_bytes": sum(f.stat().st_size for f in (work / "training_sets").rglob("*")
                           if f.is_file()),
    }
    variants: dict[str, dict] = {"real": {}}  # the same small size: fixed costs alike
    if args.surrogate:
        variants["surrogate"] = {"source": "surrogate", "surrogate": str(args.surrogate),
                                 "surrogate_library": args.library}
        variants["mixed"] = {"source": "mixed", "surrogate": str(args.surrogate),
                             "surrogate_fraction": args.fraction, "surrogate_library": args.library}
    if args.observation:
        variants["observation"] = {"observation": {"n_obs_min": 100, "n_obs_max": 10_000,
                                                   "feh_err": 0.05, "feh_err_spread": 0.3,
                                                   "ofe_err": 0.03, "ofe_err_spread": 0.3}}
    for i, (label, extra) in enumerate(variants.items()):
        variant = ComposeSpec(name="bench", version=f"v{i + 2}", seed=1, train_per_n=args.variant_per_n,
                              test_per_n=1, n_sub_max=args.n_sub_max, **extra)
        start, cpu = time.perf_counter(), time.process_time()
        done = compose(work, variant, progress=False)
        counts = done["counts"]
        cpu = time.process_time() - cpu
        rate = sum(counts.values()) / (time.perf_counter() - start)
        result.setdefault("variants", {})[label] = {
            "halos": sum(counts.values()), "halos_per_s": rate, "cpu_seconds": cpu,
            "library": done.get("source", {}).get("library")}
    for row in result.get("variants", {}).values():
        row["ratio_to_real"] = row["halos_per_s"] / result["variants"]["real"]["halos_per_s"]
    (args.out / "compose.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
