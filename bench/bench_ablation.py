"""Ablation of what the networks learn: input representation, embedding, flow size, epochs, data.

Every variant trains on the same training set (``--set``; the data-size variant on ``--big-set``,
composed from the same store with the same simulation split), with the same seed, and is judged
on the same halos: ``--halos`` evenly spaced halos of ``--set``'s test split (held-out
simulations). Step-2 variants (``theta``) are judged conditioned on the true N_sub (the
per-rank flow alone: 68%/95% coverage, skill against the prior, RMSE per parameter of rank 1);
step-1 variants (N_sub, classifier or NPE) on their own posterior. The ridge and gradient-boosted
baselines are fitted once on the training split (2,000 rows) and scored on the same halos:
``rmse / ridge`` is each variant's RMSE over ridge's (< 1: the network beats the linear model).

Results are appended per variant to ``--out`` (JSON), so an interrupted run keeps what it did;
a variant already in the file is skipped. CPU seconds (``time.process_time``) are recorded
beside wall seconds: the machine is shared.

    python bench/bench_ablation.py --store /work/power_bench/store.zarr --set abl_small:v1 \\
        --big-set abl:v1 --work /work/power_bench/models --out bench/results/ablation.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

# demo.yaml's training settings (10 epochs, patience 3, lr 1e-3, batch 128), the seed's network
BASE = dict(epochs=10, patience=3, batch_size=128, learning_rate=1e-3, seed=0)
VARIANTS: dict[str, tuple[str, dict, str]] = {
    # name: (task, TrainConfig options over BASE, which set), in the order they run
    "theta/log1p+cnn (default)": ("theta", {}, "set"),
    "theta/log1p_marginals+cnn": ("theta", {"representation": "log1p_marginals"}, "set"),
    "theta/log1p_marginals+mlp": ("theta", {"representation": "log1p_marginals",
                                            "embedding": "mlp"}, "set"),
    "nsub_classifier/log1p (default)": ("nsub_classifier", {}, "set"),
    "nsub/log1p (NPE)": ("nsub", {}, "set"),
    "theta/normalised+cnn": ("theta", {"representation": "normalised"}, "set"),
    "theta/log1p+cnn, 2.5x data": ("theta", {}, "big"),
    "theta/log1p+cnn, flow 5x50": ("theta", {"num_transforms": 5, "hidden_features": 50}, "set"),
    "nsub_classifier/log1p_marginals": ("nsub_classifier", {"representation": "log1p_marginals"},
                                        "set"),
    "theta/log1p+cnn, 25 epochs": ("theta", {"epochs": 25, "patience": 5}, "set"),
    "theta/log1p+pooled": ("theta", {"embedding": "pooled"}, "set"),
    "theta/log1p+cnn, batch 32": ("theta", {"batch_size": 32}, "set"),  # 4x the steps
    "nsub_classifier/normalised": ("nsub_classifier", {"representation": "normalised"}, "set"),
}
THETA_COLUMNS = ("log10_mstar_1", "tau_1", "log10_mdm_1")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _row(metrics: dict, parameter: str, ridge: dict) -> dict:
    out = {k: metrics.get(f"{k}_{parameter}") for k in ("coverage_68", "coverage_95", "skill",
                                                        "rmse", "r2", "truth_std")}
    r = ridge.get(parameter, {}).get("rmse")
    out["rmse_over_ridge"] = out["rmse"] / r if out["rmse"] is not None and r else None
    return out


def run_variant(name: str, args, sets: dict, test, ridge: dict) -> dict:
    from casbi_store.learn.trainer import TrainConfig, train

    task, options, which = VARIANTS[name]
    set_name, version = sets[which]
    folder = Path(args.work) / _slug(name)
    smoke = dict(epochs=1, hidden_features=8, num_transforms=2, embedding_dim=8,
                 conv_channels=(2, 4)) if args.smoke else {}
    cfg = TrainConfig(**{**BASE, **options, **smoke})
    wall, cpu = time.perf_counter(), time.process_time()
    trained = train(args.store, set_name, version, task, folder, cfg)
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    row = {"task": task, "options": options, "set": f"{set_name}:{version}",
           "epochs": [len(h) for h in trained["members"]],
           "best_val_loss": trained["best_val_loss"],
           "train_seconds": train_wall, "train_cpu_seconds": train_cpu}
    row.update(judge(name, args, test, ridge))
    return row


def judge(name: str, args, data, ridge: dict) -> dict:
    """A trained variant's per-parameter figures on ``data``."""
    from casbi_store.evaluation import evaluate as ev
    from casbi_store.learn.modelfolder import load_model

    task = VARIANTS[name][0]
    model = load_model(Path(args.work) / _slug(name))
    wall, cpu = time.perf_counter(), time.process_time()
    if task == "theta":
        result = ev.evaluate_theta(model, data, n_samples=args.samples, seed=0)
        columns = THETA_COLUMNS
    else:
        result = ev.evaluate_nsub(model, data, n_samples=max(args.samples, 500), seed=0)
        result["metrics"] = {f"{k}_n_sub": v for k, v in result["metrics"].items()}
        columns = ("n_sub",)
    metrics = result["metrics"]
    row = {"eval_seconds": time.perf_counter() - wall, "eval_cpu_seconds": time.process_time() - cpu,
           "load_average": os.getloadavg()[0],
           "parameters": {p: _row(metrics, p, ridge) for p in columns}}
    if task != "theta":
        row["median_rel_error_n_sub"] = metrics.get("median_rel_error_n_sub")
    else:
        row["outside_prior_fraction"] = metrics.get("outside_prior_fraction")
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--set", required=True, help="NAME:VERSION every variant trains on")
    p.add_argument("--big-set", required=True, help="NAME:VERSION, the same scheme with more halos")
    p.add_argument("--work", required=True, help="folder for the model folders")
    p.add_argument("--out", default="bench/results/ablation.json")
    p.add_argument("--halos", type=int, default=200)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="*", help="variant names (default: all)")
    p.add_argument("--smoke", action="store_true", help="1 epoch of tiny networks: does it run?")
    p.add_argument("--table-only", action="store_true", help="print the table of --out and stop")
    p.add_argument("--in-distribution", action="store_true",
                   help="judge the trained variants of --out on the validation split too "
                        "(new combinations of the training galaxies) and stop")
    args = p.parse_args(argv)
    if args.table_only:
        results = json.loads(Path(args.out).read_text())
        print(table(results))
        return results

    import torch

    from casbi_store.evaluation import baselines
    from casbi_store.evaluation import evaluate as ev
    from casbi_store.store import trainingsets

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    sets = {"set": tuple(args.set.split(":")), "big": tuple(args.big_set.split(":"))}
    test = ev.read_split(args.store, *sets["set"], "test", args.halos)
    # the data-size variant must not have seen the test halos' building blocks
    big_train = trainingsets.open_split_group(args.store, *sets["big"], "train", None)
    test_members = trainingsets.open_split_group(args.store, *sets["set"], "test", None)
    seen = set(np.unique(big_train["members"][:])) & set(np.unique(test_members["members"][:]))
    seen.discard(-1)
    if seen and not args.smoke:
        raise SystemExit(f"{args.big_set} trains on {len(seen)} building blocks of {args.set}'s test")
    train_rows = ev.read_split(args.store, *sets["set"], "train", 2000)
    fitted = baselines.fit(train_rows.x, train_rows.n_sub, train_rows.theta, ranks=1)
    scores = baselines.score(fitted, test.x, test.n_sub, test.theta, ranks=1)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"variants": {}}
    if args.in_distribution:
        val = ev.read_split(args.store, *sets["set"], "val", args.halos)
        val_scores = baselines.score(fitted, val.x, val.n_sub, val.theta, ranks=1)
        results["baselines_in_distribution"] = val_scores
        for name, row in results["variants"].items():
            if "in_distribution" not in row:
                print(f"{time.strftime('%H:%M:%S')} {name} (in distribution) ...", flush=True)
                row["in_distribution"] = judge(name, args, val, val_scores["ridge"])
                out.write_text(json.dumps(results, indent=1, default=float))
        print(table(results, "in_distribution"))
        return results
    results.update(store=os.fspath(args.store), set=args.set, big_set=args.big_set,
                   halos=len(test.x), samples=args.samples, threads=args.threads,
                   base=BASE, baselines=scores)
    for name in args.only or VARIANTS:
        if name in results["variants"]:
            continue
        print(f"{time.strftime('%H:%M:%S')} {name} ...", flush=True)
        results["variants"][name] = run_variant(name, args, sets, test, scores["ridge"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=float))
        print(json.dumps(results["variants"][name], default=float), flush=True)
    print(table(results))
    return results


def _fmt(v, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def table(results: dict, condition: str = "held_out") -> str:
    """The Markdown table of bench/README.md (RMSE over both baselines' RMSE on the same halos)
    in one condition (``held_out``, or ``in_distribution`` once judged there)."""
    held = condition == "held_out"
    base = results["baselines" if held else "baselines_in_distribution"]
    lines = ["| variant | param | cov 68 | cov 95 | skill | RMSE | / ridge | / GBR | epochs "
             "| train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, variant in results["variants"].items():
        row = variant if held else variant.get("in_distribution")
        if row is None:
            continue
        for param, m in row["parameters"].items():
            gbr = base["gbr"].get(param, {}).get("rmse")
            lines.append(f"| {name} | {param} | {_fmt(m['coverage_68'])} | "
                         f"{_fmt(m['coverage_95'])} | {_fmt(m['skill'])} | {_fmt(m['rmse'], 3)} | "
                         f"{_fmt(m['rmse_over_ridge'])} | {_fmt(m['rmse'] / gbr if gbr else None)} "
                         f"| {variant['epochs'][0]} | {variant['train_seconds']:.0f} |")
    for kind, per in base.items():
        for param in ("n_sub", *THETA_COLUMNS):
            if param in per:
                lines.append(f"| {kind} baseline | {param} | | | | {_fmt(per[param]['rmse'], 3)} "
                             f"| | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
