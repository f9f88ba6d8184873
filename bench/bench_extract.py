"""Extraction benchmark: throughput with 1 and 2 workers, and the ratio to a plain-pynbody floor.

The floor is what any extraction must pay: for each snapshot, in one plain Python loop,
``pynbody.load`` + the AHF catalogue + the main halo's ``feh``/``ofe`` (pynbody's own derived
arrays). Ours is the whole ``extract_suite`` run (cluster start, fingerprints, extraction, the
commit to Zarr, binning and histograms) divided by the number of snapshots.

Each measurement starts with the suite read once into the page cache (this machine's cache is
small and dropped by the host now and then: cold reads would dominate and vary 30%); the three
measurements are repeated ``--repeats`` times, interleaved, and the medians reported.

    python bench/bench_extract.py --out bench/results            # generates the demo suite
    python bench/bench_extract.py --suite /path/to/suite --out bench/results
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np


def warm_cache(suite: Path) -> None:
    for path in suite.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def histogram_speed(store: Path) -> dict:
    """Seconds to bin every stored star: one bincount vs np.histogram2d per galaxy."""
    import xarray as xr

    from casbi_store.binning import Binning, histogram_stack
    from casbi_store.store import open_stars, store_attrs

    binning = Binning.from_dict(store_attrs(str(store))["binning"])
    stars = open_stars(store).load()
    gal = xr.open_zarr(store, group="galaxies", consolidated=True)
    n_star = gal["n_star"].values
    feh, ofe, mass = stars["feh"].values, stars["ofe"].values, stars["mass"].values
    t0 = time.perf_counter()
    histogram_stack(feh, ofe, mass, n_star, binning)
    fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    starts = np.concatenate([[0], np.cumsum(n_star)[:-1]])
    for s, n in zip(starts, n_star, strict=True):
        np.histogram2d(feh[s:s + n], ofe[s:s + n], bins=[binning.feh_edges, binning.ofe_edges])
        np.histogram2d(feh[s:s + n], ofe[s:s + n], bins=[binning.feh_edges, binning.ofe_edges],
                       weights=mass[s:s + n])
    slow = time.perf_counter() - t0
    return {"stars": int(n_star.sum()), "bincount_s": fast, "histogram2d_s": slow,
            "speedup": slow / fast}


def floor_seconds(suite: Path, names: list[str]) -> tuple[float, int]:
    import pynbody

    from casbi_store.snapshots import find_snapshots

    pynbody.config["number_of_threads"] = 1
    refs = [r for r in find_snapshots(suite) if r.name in set(names)]
    n_star = 0
    start = time.perf_counter()
    for ref in refs:
        s = pynbody.load(str(ref.path(suite)))
        h = s.halos(write_fpos=False)
        main = h[0]
        feh, ofe = main.star["feh"], main.star["ofe"]
        n_star += len(feh) + 0 * len(ofe)
    return time.perf_counter() - start, n_star


def run_extract(suite: Path, store: Path, workers: int) -> dict:
    from casbi_store.extraction_run import extract_suite

    shutil.rmtree(store, ignore_errors=True)
    start = time.perf_counter()
    summary = extract_suite(suite, store, n_workers=workers, progress=False)
    seconds = time.perf_counter() - start
    return {"workers": workers, "seconds": seconds, "snapshots": summary.n_snapshots,
            "ok": summary.ok, "stars": summary.n_stars}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", type=Path, help="suite to use (default: generate the demo preset)")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    suite = args.suite
    if suite is None:
        from casbi_store.mock import generate_suite, preset

        suite = args.out / "demo-suite"
        t0 = time.perf_counter()
        generate_suite(suite, preset("demo", seed=args.seed), workers=2, progress=False)
        print(f"mock demo suite: {time.perf_counter() - t0:.1f} s")

    import xarray as xr

    runs: dict[int, list[dict]] = {1: [], 2: []}
    floors = []
    names = None
    for rep in range(args.repeats):
        for workers in (1, 2):
            warm_cache(suite)
            runs[workers].append(run_extract(suite, args.out / f"store-{workers}.zarr", workers))
            print(f"repeat {rep}: {workers} worker(s) {runs[workers][-1]['seconds']:.1f} s")
        if names is None:
            names = [str(n) for n in xr.open_zarr(args.out / "store-1.zarr", group="galaxies",
                                                  consolidated=True)["name"].values]
        warm_cache(suite)
        floors.append(floor_seconds(suite, names)[0])
        print(f"repeat {rep}: floor {floors[-1]:.1f} s")
    one = statistics.median(r["seconds"] for r in runs[1])
    two = statistics.median(r["seconds"] for r in runs[2])
    floor = statistics.median(floors)
    first = runs[1][0]
    result = {
        "snapshots": first["snapshots"], "galaxies": first["ok"], "stars": first["stars"],
        "repeats": args.repeats,
        "floor_seconds": floor, "floor_all": floors,
        "seconds_1worker": one, "seconds_2workers": two,
        "runs": runs,
        "floor_per_snapshot_ms": 1e3 * floor / first["ok"],
        "per_snapshot_ms_1worker": 1e3 * one / first["snapshots"],
        "ratio_to_floor_1worker": one / floor,
        "speedup_2_vs_1": one / two,
        "snapshots_per_s": {1: first["snapshots"] / one, 2: first["snapshots"] / two},
        "stars_per_s": {1: first["stars"] / one, 2: first["stars"] / two},
        "histograms": histogram_speed(args.out / "store-1.zarr"),
    }
    (args.out / "extract.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
