"""Leave-simulations-out k-fold: the two-step posterior judged on every simulation of a suite.

The demo's held-out condition is one draw of 10 simulations whose top blocks barely vary; here
the suite's simulations are split into ``--folds`` disjoint folds (``ComposeSpec.folds``), and
for each fold a set whose test halos come from that fold alone is composed, the step-1 and step-2
models are trained on the rest (validation on simulations of its own, as the demo does), and the
two-step posterior is evaluated on the fold's halos (and, with ``--external``, on another suite).
Every simulation is held out once. Per fold and pooled (mean and spread over folds): the targets'
metrics of ``casbi_store.evaluation.evaluate``.

    python bench/bench_unseen.py --store demo/store.zarr --work kfold --folds 4 \\
        --external ext2002/store.zarr:ext:v1 --out bench/results/unseen_kfold.json

Training options follow the demo's (``--cls-epochs``, ``--theta-epochs``, ``--cls-extra`` and
``--theta-extra`` for more ``casbi-store train`` options, one member each); a fold's models are
reused when present, and so are its evaluations (resumable: run it again after a stop).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

KEYS = ("coverage_68_n_sub", "median_rel_error_n_sub", "coverage_68_log10_mstar_1", "r2_log10_mstar_1",
        "coverage_68_log10_mdm_1", "r2_log10_mdm_1", "coverage_68_tau_1", "r2_tau_1",
        "coverage_68_ranks_2_3_min", "coverage_68_ranks_2_3_max", "tarp_max_deviation",
        "rmse_over_ridge", "rmse_over_gbr")
CLI = [sys.executable, "-m", "casbi_store.cli"]


def run(*args: str) -> None:
    subprocess.run([*CLI, *args], check=True, stdout=subprocess.DEVNULL)


def fold_spec(base: dict, folds: int, fold: int) -> dict:
    # named after the base set: folds of another base are other sets (published ones are immutable)
    return {**base, "name": f"{base['name']}_fold{fold}of{folds}", "version": "v1",
            "split_by": "simulation",
            "folds": folds, "fold": fold}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--work", required=True, help="folder for the fold's specs and models")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--only", type=int, nargs="+", metavar="FOLD",
                    help="run these folds only (e.g. two processes, one per core)")
    ap.add_argument("--spec", default="pipelines/demo.yaml",
                    help="a pipeline whose first compose set is the base spec (or a spec YAML)")
    ap.add_argument("--external", help="STORE:SET:VERSION judged too")
    ap.add_argument("--cls-epochs", type=int, default=20)
    ap.add_argument("--theta-epochs", type=int, default=10)
    ap.add_argument("--cls-extra", default="", help="more `casbi-store train` options, classifier")
    ap.add_argument("--theta-extra", default="--representation log1p_marginals --embedding mlp",
                    help="more `casbi-store train` options for theta (default: the demo's)")
    ap.add_argument("--halos", type=int, default=200)
    ap.add_argument("--val-fraction", type=float,
                    help="override the spec's (the validation simulations must hold n_sub_max blocks)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    data = yaml.safe_load(Path(args.spec).read_text())
    base = data["compose"]["sets"][0] if "compose" in data else data
    if args.val_fraction is not None:
        base = {**base, "val_fraction": args.val_fraction}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {"command": " ".join(sys.argv), "folds": []}
    for fold in args.only if args.only else range(args.folds):
        spec = fold_spec(base, args.folds, fold)
        path = work / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec))
        start = time.perf_counter()
        run("compose", args.store, "--spec", str(path), "--catalog", "")
        models = []
        for task, epochs, extra in (("nsub_classifier", args.cls_epochs, args.cls_extra),
                                    ("theta", args.theta_epochs, args.theta_extra)):
            out = work / f"fold{fold}" / task
            if not (out / "ensemble.json").exists():
                run("train", args.store, "--set", f"{spec['name']}:v1", "--task", task, "--out",
                    str(out), "--epochs", str(epochs), "--patience", "3", "--in-memory",
                    *extra.split())
            models.append(str(out))
        report = work / f"fold{fold}" / "report"
        if not (report / "metrics.json").exists():  # a fold already evaluated is kept
            run("evaluate", *models, "--out", str(report), "--split", "test", "--halos",
                str(args.halos), *(["--against", args.external] if args.external else []))
        metrics = json.loads((report / "metrics.json").read_text())
        row = {"fold": fold, "seconds": time.perf_counter() - start}
        for cond in ("held_out", "external"):
            if cond in metrics["conditions"]:
                row[cond] = {k: v["value"] for k, v in metrics["conditions"][cond]["targets"].items()}
        results["folds"].append(row)
        print(f"fold {fold}: " + ", ".join(f"{k} {row['held_out'].get(k, float('nan')):.3f}"
                                             for k in KEYS[:4]), flush=True)
    for cond in ("held_out", "external"):
        rows = [f[cond] for f in results["folds"] if cond in f]
        if rows:
            results[cond] = {k: {"mean": statistics.fmean(r[k] for r in rows),
                                 "std": statistics.pstdev(r[k] for r in rows)}
                             for k in KEYS if all(k in r for r in rows)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    for cond in ("held_out", "external"):
        if cond in results:
            print(f"{cond} over {args.folds} folds: " + ", ".join(
                f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in results[cond].items()))


if __name__ == "__main__":
    main()
