"""Misspecification score: false-alarm rate on same-physics halos, detection rate on other physics.

Builds (or reuses, every step is idempotent) in ``--work``:

- ``fiducial``: the demo preset (48 simulations, seed 42, fiducial physics), extracted with the
  percentile binning, and the demo's set ``nsub_uniform:v1`` (N_sub uniform in [2, 100], 100
  training + validation and 20 test halos per N_sub, test simulations held out). Its training
  split is the score's reference, its test split (halos of the 10 held-out simulations)
  calibrates the threshold, as ``train`` does at its end for a set split by simulation.
- ``external``: a fiducial-physics suite of another seed (``--other-seed``, ``--n-small``
  simulations), extracted with the fiducial store's bin edges: the same physics, other dwarfs.
- one suite per physics setting of ``PHYSICS`` (the seed and size of ``external``: the same
  dwarfs, other chemical evolution), extracted with the same edges.

Each small store gets a set of ``--halos-per-n`` halos per N_sub in [2, 100] (split by
combination); all its halos are scored. The score is calibrated once per entry of ``--pools``
(its components' ``FEHxOFE`` bins per cell joined by ``+``: 4x4+64x8, the default since format
2, and 4x4, the one component of format 1), all on the same data. Figures per entry (JSON
``--out/--name``): the threshold, the
false-alarm rate on the fiducial test split (held-out simulations; two-fold: the threshold of one
half judged on the other), on the validation split and on the external suite,
the detection rate per physics setting, score quantiles, CPU seconds of calibration and of
scoring; beside each, the rate had the threshold been calibrated on the validation split (new
combinations of the training galaxies). Written after each store: a run cut short keeps what
it measured.

    python bench/bench_misspecification.py --work /tmp/misspec-bench --out bench/results
    python bench/bench_misspecification.py --work /tmp/misspec-bench-11 --other-seed 11 \
        --name misspecification_seed11.json   # (its fiducial/ may be a link to the first's)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

# physics settings the score should flag: (name, casbi_store.mock.Physics fields)
PHYSICS = {
    "o_cc_yield_x1.3": {"y_o_cc": 0.015 * 1.3},
    "late_ia_1gyr": {"ia_min_delay": 1.0},
    "sfe_x2": {"sfe": 2.0},
    "fe_ia_yield_x1.5": {"y_fe_ia": 0.0017 * 1.5},
    "dtd_slope_-1.5": {"dtd_slope": -1.5},
}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def build_store(work: Path, name: str, seed: int, n_sim: int | None, physics: dict,
                binning=None) -> Path:
    """Mock suite + extraction into ``work/name``; reused when already complete."""
    from casbi_store.mock import Physics, generate_suite, preset
    from casbi_store.store.extraction_run import extract_suite

    suite, store = work / name / "suite", work / name / "store.zarr"
    overrides = {"n_simulations": n_sim} if n_sim else {}
    if not (suite / "mock_suite.yaml").exists():
        spec = preset("demo", seed=seed, physics=Physics(**physics), **overrides)
        t = time.perf_counter()
        generate_suite(suite, spec, workers=2, progress=False)
        logging.info("%s: suite in %.0f s", name, time.perf_counter() - t)
    if not (store / ".done").exists():
        t = time.perf_counter()
        extract_suite(suite, store, binning=binning, n_workers=2, progress=False)
        (store / ".done").write_text("")
        logging.info("%s: extracted in %.0f s", name, time.perf_counter() - t)
    return store


def compose_set(store: Path, **spec) -> None:
    from casbi_store.compose import ComposeSpec, compose

    compose(store, ComposeSpec(version="v1", **spec), progress=False)


def split_x(store: Path, name: str, split: str) -> np.ndarray:
    import zarr

    from casbi_store.store import schema as S

    return np.asarray(zarr.open_array(store, path=f"{S.TRAINING_SETS}/{name}/v1/{split}/{S.X.name}",
                                      mode="r", zarr_format=S.ZARR_FORMAT)[:])


def all_halos(store: Path, name: str) -> np.ndarray:
    return np.concatenate([split_x(store, name, split) for split in ("train", "val", "test")])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, help="folder for the suites and stores (reused)")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--other-seed", type=int, default=7)
    p.add_argument("--n-small", type=int, default=12, help="simulations of the small suites")
    p.add_argument("--halos-per-n", type=int, default=10)
    p.add_argument("--physics", nargs="+", choices=sorted(PHYSICS), default=list(PHYSICS))
    p.add_argument("--pools", nargs="+", default=["4x4+64x8", "4x4"],
                   help="scores to compare, each its components' poolings FEHxOFE joined by + "
                        "(4x4+64x8: the default since format 2; 4x4: format 1's)")
    p.add_argument("--name", default="misspecification.json", help="result file in --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    from casbi_store.learn.misspecification import calibrate
    from casbi_store.store import schema as S
    from casbi_store.store.binning import Binning, BinningSpec
    from casbi_store.store.io import store_attrs

    fid = build_store(work, "fiducial", 42, None, {})
    compose_set(fid, name="nsub_uniform", scheme="uniform", seed=42, split_by="simulation",
                n_sub_min=2, n_sub_max=100, train_per_n=100, test_per_n=20)
    b = Binning.from_dict(store_attrs(str(fid))[S.ATTR_BINNING])
    fixed = BinningSpec(method="fixed", n_bins=b.spec.n_bins, feh_range=tuple(b.feh_range),
                        ofe_range=tuple(b.ofe_range))
    result = {"benchmark": "misspecification", "platform": platform.platform(),
              "physics": {k: PHYSICS[k] for k in args.physics}, "other_seed": args.other_seed,
              "n_small": args.n_small, "pools": {}}
    cals = {}
    for label in args.pools:
        pools = [tuple(int(v) for v in p.split("x")) for p in label.split("+")]
        cpu, wall = cpu_seconds(), time.perf_counter()
        cal = calibrate(fid, "nsub_uniform", "v1", pools=pools)  # auto: the test split
        cal_cpu, cal_wall = cpu_seconds() - cpu, time.perf_counter() - wall
        on_val = calibrate(fid, "nsub_uniform", "v1", split="val", pools=pools)  # same ref.
        assert np.array_equal(on_val.reference, cal.reference)
        cals[label] = (cal, on_val)
        result["pools"][label] = {
            "threshold": cal.threshold, "threshold_if_calibrated_on_val": on_val.threshold,
            "threshold_at_quantile_0.95": float(np.quantile(cal.scores, 0.95)),
            "calibration_split": cal.meta["calibration_split"], "quantile": cal.quantile,
            "k": cal.meta["k"], "components": cal.meta["components"],
            "reference_halos": int(len(cal.reference)), "calibration_halos": int(len(cal.scores)),
            "calibration_cpu_s": cal_cpu, "calibration_wall_s": cal_wall, "rows": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def record(name: str, x: np.ndarray) -> dict[str, np.ndarray]:
        scores = {}
        for label, (cal, on_val) in cals.items():
            cpu, wall = cpu_seconds(), time.perf_counter()
            s = scores[label] = cal.score(x)
            cpu_s, wall_s = cpu_seconds() - cpu, time.perf_counter() - wall
            # on_val has its own scales: its scores, not cal's, against its threshold
            result["pools"][label]["rows"][name] = {
                "halos": len(x), "flagged": float(np.mean(s > cal.threshold)),
                "flagged_if_calibrated_on_val": float(np.mean(on_val.score(x) > on_val.threshold)),
                "flagged_at_quantile_0.95": float(np.mean(s > np.quantile(cal.scores, 0.95))),
                "score_quantiles_5_50_95": np.percentile(s, [5, 50, 95]).round(4).tolist(),
                "cpu_ms_per_halo": 1e3 * cpu_s / len(x), "wall_ms_per_halo": 1e3 * wall_s / len(x),
                "load_average": os.getloadavg()}
            logging.info("%s, pool %s: %d halos, %.1f%% flagged", name, label, len(x),
                         100 * result["pools"][label]["rows"][name]["flagged"])
        (out / args.name).write_text(json.dumps(result, indent=2))
        return scores

    record("fiducial_val", split_x(fid, "nsub_uniform", "val"))
    # the test split calibrated the threshold: its false-alarm rate out of sample, two-fold
    test_scores = record("fiducial_test_heldout_simulations", split_x(fid, "nsub_uniform", "test"))
    for label, s in test_scores.items():
        halves = np.array_split(np.random.default_rng(0).permutation(len(s)), 2)
        q = cals[label][0].quantile
        result["pools"][label]["rows"]["fiducial_test_heldout_simulations"]["flagged_two_fold"] = \
            float(np.mean([np.mean(s[b] > np.quantile(s[a], q)) for a, b in (halves, halves[::-1])]))
    for name in ["external_same_physics", *args.physics]:
        t, cpu = time.perf_counter(), cpu_seconds()
        store = build_store(work, name, args.other_seed, args.n_small, PHYSICS.get(name, {}), fixed)
        compose_set(store, name="halos", scheme="uniform", seed=1, split_by="combination",
                    n_sub_min=2, n_sub_max=100, train_per_n=args.halos_per_n,
                    test_per_n=args.halos_per_n)
        got = Binning.from_dict(store_attrs(str(store))[S.ATTR_BINNING])
        assert np.array_equal(got.feh_edges, b.feh_edges), name
        result.setdefault("build", {})[name] = {
            "wall_s": time.perf_counter() - t, "cpu_s": cpu_seconds() - cpu,
            "load_average": os.getloadavg()}  # ~0 when the store was already there
        record(name, all_halos(store, "halos"))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
