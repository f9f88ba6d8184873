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
import resource
import shutil
import statistics
import time
import timeit
from pathlib import Path

import numpy as np


def warm_cache(suite: Path) -> None:
    for path in suite.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def histogram_speed(store: Path) -> dict:
    """Seconds (best of 5) to bin every stored star into counts and mass-weighted histograms:
    one bincount over all galaxies vs two ``np.histogram2d`` calls per galaxy."""
    import xarray as xr

    from casbi_store.store.binning import Binning, histogram_stack
    from casbi_store.store.io import open_stars, store_attrs

    binning = Binning.from_dict(store_attrs(str(store))["binning"])
    stars = open_stars(store).load()
    gal = xr.open_zarr(store, group="galaxies", consolidated=True)
    n_star = gal["n_star"].values
    feh, ofe, mass = stars["feh"].values, stars["ofe"].values, stars["mass"].values
    starts = np.concatenate([[0], np.cumsum(n_star)[:-1]])
    edges = [binning.feh_edges, binning.ofe_edges]

    def per_galaxy():
        for s, n in zip(starts, n_star, strict=True):
            np.histogram2d(feh[s:s + n], ofe[s:s + n], bins=edges)
            np.histogram2d(feh[s:s + n], ofe[s:s + n], bins=edges, weights=mass[s:s + n])

    fast = min(timeit.repeat(lambda: histogram_stack(feh, ofe, mass, n_star, binning), number=1,
                             repeat=5))
    slow = min(timeit.repeat(per_galaxy, number=1, repeat=5))
    return {"stars": int(n_star.sum()), "bincount_s": fast, "histogram2d_s": slow,
            "speedup": slow / fast}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the LocalCluster's workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def floor_seconds(suite: Path, names: list[str]) -> tuple[float, float]:
    import pynbody

    from casbi_store.store.snapshots import find_snapshots

    pynbody.config["number_of_threads"] = 1
    refs = [r for r in find_snapshots(suite) if r.name in set(names)]
    start, cpu = time.perf_counter(), cpu_seconds()
    for ref in refs:
        s = pynbody.load(str(ref.path(suite)))
        h = s.halos(write_fpos=False)
        main = h[0]
        main.star["feh"], main.star["ofe"]
    return time.perf_counter() - start, cpu_seconds() - cpu


def run_extract(suite: Path, store: Path, workers: int) -> dict:
    from casbi_store.store.extraction_run import extract_suite

    shutil.rmtree(store, ignore_errors=True)
    start, cpu = time.perf_counter(), cpu_seconds()
    summary = extract_suite(suite, store, n_workers=workers, progress=False)
    seconds = time.perf_counter() - start
    return {"workers": workers, "seconds": seconds, "cpu_seconds": cpu_seconds() - cpu,
            "snapshots": summary.n_snapshots, "ok": summary.ok, "stars": summary.n_stars,
            "phases": summary.phases}


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
        floors.append(floor_seconds(suite, names))
        print(f"repeat {rep}: floor {floors[-1][0]:.1f} s")
    walls = {w: [r["seconds"] for r in runs[w]] for w in runs}
    one, two = statistics.median(walls[1]), statistics.median(walls[2])
    floor = statistics.median(f[0] for f in floors)
    first = runs[1][0]
    result = {
        "snapshots": first["snapshots"], "galaxies": first["ok"], "stars": first["stars"],
        "repeats": args.repeats,
        "floor_seconds": floor, "floor_all": [f[0] for f in floors],
        "seconds_1worker": one, "seconds_2workers": two,
        "runs": runs,
        "floor_per_snapshot_ms": 1e3 * floor / first["ok"],
        "per_snapshot_ms_1worker": 1e3 * one / first["snapshots"],
        "ratio_to_floor_1worker": one / floor,
        "ratio_to_floor_best_of": min(walls[1]) / min(f[0] for f in floors),
        "cpu_ratio_to_floor_1worker": statistics.median(r["cpu_seconds"] for r in runs[1])
        / statistics.median(f[1] for f in floors),
        "speedup_2_vs_1": one / two,
        "speedup_best_of": min(walls[1]) / min(walls[2]),
        "snapshots_per_s": {1: first["snapshots"] / one, 2: first["snapshots"] / two},
        "stars_per_s": {1: first["stars"] / one, 2: first["stars"] / two},
        "histograms": histogram_speed(args.out / "store-1.zarr"),
    }
    (args.out / "extract.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
