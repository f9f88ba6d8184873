"""``casbi-store evaluate``: metrics, calibration and report.html of model folders."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="metrics, calibration (TARP, SBC) and report.html")
    ev.add_argument("models", nargs="+", help="model folders (any of the four tasks)")
    ev.add_argument("--split", choices=["test", "val", "train"], default="test")
    ev.add_argument("--out", default="report", help="folder for report.html, figures, metrics.json")
    ev.add_argument("--halos", type=int, default=300, help="halos of the split (evenly spaced)")
    ev.add_argument("--samples", type=int, default=200, help="posterior samples per halo")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=run)


def evaluate_models(models: list[str], out: str, *, split: str = "test", halos: int = 300,
                    samples: int = 200, seed: int = 0) -> int:
    """Evaluate the model folders ``models``, write the report into ``out``, print the metrics
    and the targets (the `evaluate` command and the pipeline's evaluate stage)."""
    from ..evaluate import TARGETS, evaluate, headline, meets
    from ..report import corner_for_halo, write_report

    results = evaluate(models, split=split, max_halos=halos, n_samples=samples, seed=seed)
    folder = Path(out)
    corner = corner_for_halo(results, folder / "figures" / "corner.png")
    page = write_report(results, folder, corner=corner)
    for path, r in results["models"].items():
        m = r["metrics"]
        shown = {k: v for k, v in m.items() if k in (
            "accuracy", "median_rel_error", "coverage_68", "coverage_95", "r2_log10_mstar_1",
            "bias_log10_mstar_1", "tarp_max_deviation", "tarp_atc", "seconds_10k_samples")}
        print(f"{r['task']:<16} {path}: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
    print("targets (the trainer issue's, on the demo set):")
    for metric, value in headline(results).items():
        kind, target = TARGETS[metric]
        print(f"  {metric:<24} {value:7.3f}  target {kind} {target}: "
              f"{'met' if meets(metric, value) else 'NOT met'}")
    print(f"report     {page}")
    return 0


def run(args: argparse.Namespace) -> int:
    return evaluate_models(args.models, args.out, split=args.split, halos=args.halos,
                           samples=args.samples, seed=args.seed)
