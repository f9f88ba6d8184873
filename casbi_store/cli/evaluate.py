"""``casbi-store evaluate``: metrics, calibration and report.html of model folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from casbi_store import InputError


def add_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="metrics, calibration (TARP, SBC) and report.html")
    ev.add_argument("models", nargs="+", help="model folders (any task)")
    ev.add_argument("--split", choices=["test", "val", "train"], default="test",
                    help="the held-out condition's split (default: test)")
    ev.add_argument("--against", metavar="STORE[:SET[:VERSION]]",
                    help="an external store (e.g. a mock suite of another seed, extracted with the "
                         "model's bin edges) as a third test condition; other edges are refused")
    ev.add_argument("--in-distribution-split", choices=["val", "none"], default="val",
                    help="split of the in-distribution condition (new combinations of training "
                         "galaxies); none: skip it")
    ev.add_argument("--baseline-rows", type=int, default=2000,
                    help="training rows the ridge/GBR baselines are fitted on (0: no baselines)")
    ev.add_argument("--surrogate-validation", metavar="DIR",
                    help="a `casbi-store surrogate validate` folder, shown in the report")
    ev.add_argument("--survey", metavar="DIR",
                    help="a `casbi-store survey` folder: its survey-style inference (observed "
                         "plane, drops, posterior with the truth and the misspecification score, "
                         "coverage) shown in the report")
    ev.add_argument("--out", default="report", help="folder for report.html, figures, metrics.json")
    ev.add_argument("--halos", type=int, default=300, help="halos per condition (evenly spaced)")
    ev.add_argument("--samples", type=int, default=200, help="posterior samples per halo")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=run)


def parse_against(value: str | None) -> tuple | None:
    """``STORE[:SET[:VERSION]]`` -> (store, set or None, version or None); a URL's scheme kept."""
    if not value:
        return None
    scheme, sep, rest = value.partition("://")
    head, rest = (scheme + sep, rest) if sep else ("", value)
    parts = rest.split(":")
    if len(parts) > 3 or not parts[0]:
        raise InputError(f"--against must be STORE[:SET[:VERSION]], not {value!r}")
    parts += [None] * (3 - len(parts))
    return (head + parts[0], parts[1] or None, parts[2] or None)


def evaluate_models(models: list[str], out: str, *, split: str = "test", halos: int = 300,
                    samples: int = 200, seed: int = 0, against: tuple | None = None,
                    in_distribution_split: str | None = "val", baseline_rows: int = 2000,
                    surrogate_validation: str | None = None, survey: str | None = None) -> int:
    """Evaluate the model folders ``models`` in every test condition, write the report into
    ``out``, print the metrics and the targets (the `evaluate` command and the pipeline's stage;
    ``surrogate_validation``/``survey``: folders shown in sections of their own)."""
    from casbi_store.evaluation.evaluate import evaluate
    from casbi_store.evaluation.report import corner_for_halo, write_report

    for name, value in (("halos", halos), ("samples", samples)):
        if value < 1:
            raise InputError(f"--{name} must be at least 1, not {value}")
    if baseline_rows < 0:
        raise InputError(f"--baseline-rows must be >= 0, not {baseline_rows}")
    results = evaluate(models, split=split, max_halos=halos, n_samples=samples, seed=seed,
                       against=against, in_distribution_split=in_distribution_split,
                       baseline_fit_rows=baseline_rows)
    folder = Path(out)
    corner = corner_for_halo(results, folder / "figures" / "corner.png")
    page = write_report(results, folder, corner=corner, surrogate=surrogate_validation,
                        survey=survey)
    for path, r in results["models"].items():
        m = r["metrics"]
        shown = {k: v for k, v in m.items() if k in (
            "accuracy", "median_rel_error", "coverage_68", "coverage_95", "coverage_68_log10_mstar_1",
            "skill_log10_mstar_1", "skill_tau_1", "tarp_max_deviation")}
        print(f"{r['task']:<16} {path}: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
    for condition, cond in results["conditions"].items():
        print(f"targets, {condition} ({cond.get('source', '')}):")
        for metric, t in cond.get("targets", {}).items():
            kind, target = t["target"]
            print(f"  {metric:<28} {t['value']:7.3f}  target {kind} {target}: "
                  f"{'met' if t['met'] else 'NOT met'}")
    print(f"report     {page}")
    return 0


def run(args: argparse.Namespace) -> int:
    split = None if args.in_distribution_split == "none" else args.in_distribution_split
    return evaluate_models(args.models, args.out, split=args.split, halos=args.halos,
                           samples=args.samples, seed=args.seed, against=parse_against(args.against),
                           in_distribution_split=split, baseline_rows=args.baseline_rows,
                           surrogate_validation=args.surrogate_validation, survey=args.survey)
