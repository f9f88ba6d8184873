"""``casbi-store survey``: mock survey tables (FITS) of a set's held-out halos, one of them through
``observe`` and ``infer`` as a user would, and the coverage of the truth over all of them."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from casbi_store import InputError

from .common import split_set


def add_parser(sub) -> None:
    s = sub.add_parser("survey", help="mock survey tables of held-out halos through observe -> "
                                      "infer: the truth's 68%%/95%% coverage")
    s.add_argument("store", help="store path")
    s.add_argument("--set", required=True, help="NAME:VERSION whose split's halos are observed")
    s.add_argument("--models", nargs="+", required=True, help="step-1 and step-2 model folders")
    s.add_argument("--out", required=True, help="folder: tables/, observation.nc, posterior.nc, "
                                                "posteriors/coverage.json")
    s.add_argument("--split", default="test")
    s.add_argument("--tables", type=int, default=20, help="survey tables (distinct halos)")
    s.add_argument("--observation", help="the survey as JSON, e.g. '{\"n_obs\": 500, "
                                         "\"feh_err\": 0.05}' (default: the set's own model)")
    s.add_argument("--samples", type=int, default=500, help="posterior samples per table")
    s.add_argument("--ranks", type=int, default=3)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=run)


FIRST_TABLE_SAMPLES = 4000  # at least, for the first table's corner plot (seconds)


def survey_check(store: str | os.PathLike, set_name: str, version: str, models: list[str],
                 out: str | os.PathLike, *, split: str = "test", tables: int = 20,
                 observation: dict | None = None, samples: int = 500, ranks: int = 3,
                 seed: int = 0) -> dict:
    """Write ``tables`` survey tables of ``split``'s halos, take the first through ``observe``
    (observation.nc) and ``infer`` (posterior.nc, corner plot; at least ``FIRST_TABLE_SAMPLES``
    samples) as the commands do, then every table through ``survey.survey_coverage`` (``samples``
    each); print and return the coverage."""
    from casbi_store.apply.infer import read_input
    from casbi_store.apply.survey import make_survey_tables, survey_coverage

    from .infer import infer_halo
    from .observe import observe

    out = Path(out)
    made = make_survey_tables(store, set_name, version, out / "tables", n_tables=tables,
                              observation=observation, split=split, seed=seed)
    first = made[0]
    print(f"survey table {first.path}: {first.n_obs} stars of a halo of N_sub {first.n_sub}")
    observe(first.path, models[-1], str(out / "observation.nc"))
    infer_halo(models, str(out / "posterior.nc"), histogram=str(out / "observation.nc"),
               samples=max(samples, FIRST_TABLE_SAMPLES), ranks=ranks, seed=seed)
    # the first table's observation, read back (not observed a second time) for the coverage
    first_observed = read_input(out / "observation.nc", models[0])
    result = survey_coverage(models, made, n_samples=samples, ranks=ranks, seed=seed,
                             out=out / "posteriors", observed={first.path: first_observed})
    print(f"truth inside the central credible intervals over {len(made)} survey tables "
          f"({samples} samples each; {out / 'posteriors' / 'coverage.json'}):")
    print(f"  {'parameter':<16} {'tables':>6} {'68%':>6} {'95%':>6}")
    for label, c in result["coverage"].items():
        print(f"  {label:<16} {c['n']:>6} {c['0.68']:>6.2f} {c['0.95']:>6.2f}")
    print(f"misspecification: {result['misspecification_flagged']} of {len(made)} tables above "
          "the threshold")
    return result


def run(args: argparse.Namespace) -> int:
    name, version = split_set(args.set)
    try:
        observation = json.loads(args.observation) if args.observation else None
    except json.JSONDecodeError as exc:
        raise InputError(f"--observation is not JSON ({exc}): {args.observation!r}") from None
    survey_check(args.store, name, version, args.models, args.out, split=args.split,
                 tables=args.tables, observation=observation, samples=args.samples,
                 ranks=args.ranks, seed=args.seed)
    return 0
