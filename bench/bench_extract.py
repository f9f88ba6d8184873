"""Extraction benchmark: throughput with 1 and 2 workers, and the ratio to a plain-pynbody floor.

The floor is what any extraction must pay: for each snapshot, in one plain Python loop,
``pynbody.load`` + the AHF catalogue + the main halo's ``feh``/``ofe`` (pynbody's own derived
arrays). Ours is the whole ``extract_suite`` run (cluster start, fingerprints, extraction, the
commit to Zarr, binning and histograms) divided by the number of snapshots.

    python bench/bench_extract.py --out bench/results            # generates the demo suite
    python bench/bench_extract.py --suite /path/to/suite --out bench/results
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


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

    runs = [run_extract(suite, args.out / f"store-{w}.zarr", w) for w in (1, 2)]
    names = [str(n) for n in xr.open_zarr(args.out / "store-1.zarr", group="galaxies",
                                          consolidated=True)["name"].values]
    floor, floor_stars = floor_seconds(suite, names)
    one, two = runs
    result = {
        "snapshots": one["snapshots"], "galaxies": one["ok"], "stars": one["stars"],
        "floor_seconds": floor, "floor_per_snapshot_ms": 1e3 * floor / one["ok"],
        "runs": runs,
        "per_snapshot_ms_1worker": 1e3 * one["seconds"] / one["snapshots"],
        "ratio_to_floor_1worker": one["seconds"] / floor,
        "speedup_2_vs_1": one["seconds"] / two["seconds"],
        "snapshots_per_s": {r["workers"]: r["snapshots"] / r["seconds"] for r in runs},
        "stars_per_s": {r["workers"]: r["stars"] / r["seconds"] for r in runs},
    }
    (args.out / "extract.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
