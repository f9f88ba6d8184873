"""Mock survey tables of held-out halos, and the end-to-end check observe -> infer (issue 10 §4).

A survey table is what a survey would publish of one halo of a training set's split (the test
split by default: simulations or combinations held out of training): its blocks' stored stars,
drawn and given errors by an ``ObservationSpec`` (N_obs, weighting, heteroscedastic Gaussian
errors with the sigma of each star listed, [Fe/H] selection), written as a FITS table (astropy)
with the columns ``FE_H``, ``O_FE``, ``FE_H_ERR``, ``O_FE_ERR`` that ``casbi-store observe``
finds by itself. The truth (N_sub, theta of the blocks by rank) is returned with the table and
written to ``truth.json`` beside the tables, never into them.

``survey_coverage`` takes each table through what a user runs, ``infer.read_input`` (the
table observed as ``casbi-store observe --binning MODEL`` does) and ``infer.infer``, and counts
how often the truth lies inside the central 68% and 95% credible intervals of the two-step
posterior (N_sub; theta of ranks 1..``ranks``, from the samples whose N_sub draw has that rank).
Over many tables a calibrated posterior gives 0.68 and 0.95.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from casbi_store import InputError
from casbi_store.compose.sources.observation import ObservationSpec
from casbi_store.learn.calibration import LEVELS
from casbi_store.learn.misspecification import MisspecificationWarning
from casbi_store.learn.modelfolder import TrainedModel, as_model
from casbi_store.store import schema as S
from casbi_store.store import trainingsets
from casbi_store.store.atomic import atomic_path
from casbi_store.store.io import open_stars, open_store

from .infer import ObservedHistogram, infer, read_input
from .observe import NObsRangeWarning, load_binning_source

log = logging.getLogger(__name__)

COLUMNS = ("FE_H", "O_FE", "FE_H_ERR", "O_FE_ERR")


@dataclass(frozen=True)
class SurveyTable:
    """One mock survey table and the truth of the halo it shows."""

    path: str
    halo: int  # row of the halo in its split
    n_sub: int
    theta: list[list[float]]  # (log10 M*, log10 M_dm, tau) of each block, by M* rank
    n_obs: int  # stars in the table


def set_observation(store: str | os.PathLike, name: str, version: str) -> ObservationSpec:
    """The observation model a published set was composed with (refused if it has none)."""
    if version not in trainingsets.versions(store, name, consolidated=False):
        raise InputError(f"{store}: no published training set {name}:{version}")
    spec = trainingsets.observation_model(store, name, version, consolidated=False)
    if not spec:
        raise InputError(f"{store}: {name}:{version} has no observation model; give the survey's "
                         "(observation: {n_obs: ..., feh_err: ..., ...})")
    return ObservationSpec.from_dict(spec, where=f"{name}:{version} observation")


def write_table(path: Path, columns: dict[str, np.ndarray]) -> Path:
    """A FITS table of float32 columns, written atomically (astropy)."""
    from astropy.table import Table

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        Table({k: np.asarray(v, dtype=np.float32) for k, v in columns.items()}).write(
            partial, format="fits", overwrite=True)
    return path


def make_survey_tables(store: str | os.PathLike, name: str, version: str, out: str | os.PathLike,
                       *, n_tables: int, observation: ObservationSpec | dict | None = None,
                       split: str = "test", seed: int = 0) -> list[SurveyTable]:
    """``n_tables`` survey tables (FITS) of distinct halos of ``split`` (chosen at random with
    ``seed``), observed with ``observation`` (default: the set's own observation model);
    ``truth.json`` lists every table with its truth."""
    if n_tables < 1:
        raise InputError(f"n_tables must be >= 1, not {n_tables}")
    spec = (set_observation(store, name, version) if observation is None
            else ObservationSpec.from_dict(observation))
    group = trainingsets.open_split_group(store, name, version, split)
    members_all = group[S.MEMBERS.name]
    n_halos = members_all.shape[0]
    if n_tables > n_halos:
        raise InputError(f"{name}:{version} {split} has {n_halos} halos, fewer than the "
                         f"{n_tables} tables asked for")
    rng = np.random.default_rng([seed, 10])
    halos = np.sort(rng.choice(n_halos, size=n_tables, replace=False))
    gal = open_store(store)
    offsets, n_star = gal[S.STAR_OFFSET.name].values, gal[S.N_STAR.name].values
    stars = open_stars(store)
    out = Path(out)
    tables = []
    for i, h in enumerate(halos):
        members = np.asarray(members_all[int(h)])
        members = members[members >= 0]
        parts = [stars.isel({S.DIM_STAR: slice(int(offsets[m]), int(offsets[m] + n_star[m]))})
                 for m in members]
        feh, ofe, mass = (np.concatenate([p[k].values.astype(np.float64) for p in parts])
                          for k in ("feh", "ofe", "mass"))
        obs = spec.observe_with_errors(feh, ofe, mass, np.random.default_rng([seed, 11, int(h)]))
        path = write_table(out / f"survey-{i:04d}-halo{int(h)}.fits",
                           dict(zip(COLUMNS, (obs[0], obs[1], obs[3], obs[4]), strict=True)))
        theta = np.asarray(group[S.THETA.name][int(h)], dtype=np.float64)
        theta = theta[np.isfinite(theta[:, 0])]
        logged = np.column_stack([np.log10(theta[:, 0]), np.log10(theta[:, 1]), theta[:, 2]])
        tables.append(SurveyTable(str(path), int(h), len(members), logged.tolist(), len(obs[0])))
    (out / "truth.json").write_text(json.dumps(
        {"store": str(store), "set": f"{name}:{version}", "split": split, "seed": seed,
         "observation": spec.to_dict(), "tables": [asdict(t) for t in tables]}, indent=2))
    log.info("%d survey tables of %s:%s %s -> %s", len(tables), name, version, split, out)
    return tables


def central_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` credible interval of finite samples."""
    tail = 50 * (1 - level)
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def _truths(table: SurveyTable, parameters: list[str], ranks: int) -> dict[tuple[str, int], float]:
    """(variable, rank) -> true value (rank 0: N_sub)."""
    out = {("n_sub", 0): float(table.n_sub)}
    for r in range(1, min(ranks, table.n_sub) + 1):
        for k, p in enumerate(parameters):
            out[(p, r)] = table.theta[r - 1][k]
    return out


def survey_coverage(models: list[TrainedModel | str | os.PathLike], tables: list[SurveyTable],
                    *, n_samples: int = 500, ranks: int = 3, seed: int = 0,
                    out: str | os.PathLike | None = None,
                    observed: dict[str, ObservedHistogram] | None = None) -> dict:
    """Each table observed and inferred as a user would (``read_input`` + ``infer``); per
    parameter, the fraction of tables whose truth lies inside the central 68%/95% intervals.

    Returns ``{"coverage": {name: {"n": tables, "0.68": fraction, "0.95": fraction}},
    "tables": [{path, n_obs, per parameter: [truth, 68% lo, hi, 95% lo, hi]}]}``; written as
    ``coverage.json`` into ``out`` with each table's samples (``<table>.nc``) if given.
    ``observed``: tables already observed (table path -> ``read_input``'s answer), not read
    again."""
    loaded = [as_model(m) for m in models]
    step2 = [m for m in loaded if m.task_spec.step == 2 and m.task_spec.needs_nsub]
    parameters = step2[0].parameters if step2 else []
    hits: dict[str, dict[float, list[bool]]] = {}
    rows = []
    source = load_binning_source(loaded[0].path)  # the training halos' star counts, read once
    for i, table in enumerate(tables):
        seen = (observed or {}).get(table.path) or read_input(table.path, loaded[0], source)
        with warnings.catch_warnings():  # counted below (``flagged``), not one warning per table
            warnings.simplefilter("ignore", MisspecificationWarning)
            warnings.simplefilter("ignore", NObsRangeWarning)
            samples = infer(loaded, seen, n_samples=n_samples, seed=seed + i, ranks=ranks)
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            samples.to_netcdf(Path(out) / (Path(table.path).stem + ".nc"))
        row = {"path": table.path, "n_obs": int(seen.counts.sum()), "halo": table.halo,
               "misspecification_score": samples.attrs.get("misspecification_score"),
               "misspecification_flagged": bool(samples.attrs.get("misspecification_flagged", 0))}
        for (var, rank), truth in _truths(table, parameters, ranks).items():
            if var not in samples:
                continue
            values = samples[var].values if rank == 0 else samples[var].sel(rank=rank).values
            values = values[np.isfinite(values)]
            if len(values) < 10:  # the draws hardly ever reach this rank: no interval to judge
                continue
            label = var if rank == 0 else f"{var}_{rank}"
            intervals = [central_interval(values, level) for level in LEVELS]
            row[label] = [truth, *(v for lo_hi in intervals for v in lo_hi)]
            for level, (lo, hi) in zip(LEVELS, intervals, strict=True):
                hits.setdefault(label, {lv: [] for lv in LEVELS})[level].append(lo <= truth <= hi)
        rows.append(row)
    coverage = {label: {"n": len(h[LEVELS[0]]), **{str(lv): float(np.mean(h[lv])) for lv in LEVELS}}
                for label, h in hits.items()}
    result = {"models": [str(m.path) for m in loaded], "n_tables": len(tables),
              "n_samples": n_samples, "coverage": coverage,
              "misspecification_flagged": sum(r["misspecification_flagged"] for r in rows),
              "tables": rows}
    if out is not None:
        (Path(out) / "coverage.json").write_text(json.dumps(result, indent=2))
    return result
