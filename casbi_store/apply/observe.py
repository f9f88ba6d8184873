"""Survey star tables -> an observation: cuts, binning like the store, a small NetCDF file.

``observe_table`` reads a CSV or FITS table (astropy), keeps the stars that pass every cut and
bins them with the binning of a model folder (its ``transform.npz`` edges) or of a store (its
``binning`` attribute) through the store's own ``histogram_stack``, so an observation is binned
exactly as the training halos were. ``write_observation`` writes the result as NetCDF (the 64x64
``counts`` that ``infer.read_histogram`` reads, N_obs, the binned stars with their errors, an
error summary and the cuts' provenance); ``read_observation`` reads it back.

Every star of the table is kept or dropped for exactly one reason, tested in this order:
``not_finite`` ([Fe/H] or [O/Fe] NaN, infinite or masked), ``flagged`` (flag column nonzero or
masked), ``quality_cut`` (fails the ``--where`` expression, see ``casbi_store.apply.quality``),
``outside_range`` (outside the binning's [Fe/H] or [O/Fe] range: counted, never clipped).

Refused with an ``ObservationError`` naming the file: a missing column (the available ones are
listed), a non-numeric column, values that look like linear abundances rather than dex (see
``check_dex``), no star left after the cuts, and far too few stars for the model (see
``minimum_stars``).

Alpha proxies. When the [O/Fe] column is [Mg/Fe], [Si/Fe], [Ca/Fe], [Ti/Fe] or [alpha/Fe]
(or [alpha/M]), it stands in for [O/Fe]; the mapping and ``ALPHA_PROXY_CAVEAT`` are recorded.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from casbi_store import CasbiError
from casbi_store.store import schema as S
from casbi_store.store.atomic import atomic_path
from casbi_store.store.binning import Binning, BinningSpec, bin_stars, histogram_stack
from casbi_store.store.provenance import PACKAGES, package_versions, provenance, sha256_file

from .quality import parse_quality

FEH_NAMES = ("[Fe/H]", "FE_H", "fe_h", "feh", "FeH")
OFE_NAMES = ("[O/Fe]", "O_FE", "o_fe", "ofe", "OFe")
ERROR_PATTERNS = ("{}_ERR", "{}_err", "e_{}")  # APOGEE FE_H_ERR, GALAH e_fe_h
TABLE_FORMATS = {".csv": "ascii.csv", ".fits": "fits", ".fit": "fits", ".fits.gz": "fits",
                 ".fit.gz": "fits"}
DROP_REASONS = ("not_finite", "flagged", "quality_cut", "outside_range")
ERROR_PERCENTILES = (5.0, 16.0, 50.0, 84.0, 95.0)

# Far too few stars: below MIN_STARS, or below 1/FEW_STARS_FACTOR of the 5th percentile of the
# star counts of the halos the model was trained on.
MIN_STARS = 10
FEW_STARS_FACTOR = 10
TRAINING_CHUNKS_READ = 16  # chunks of the training split read to measure its star counts

# Dex or linear? Values look linear (mass or number fractions, 10**[X/Y]) when every finite value
# lies in (0, LINEAR_MAX) (at least LINEAR_MIN_VALUES of them), or when their median lies
# outside the plausible dex range (e.g. log-epsilon A(Fe) ~ 7.5, or percentages).
LINEAR_MAX = 0.1
LINEAR_MIN_VALUES = 10
# Linear ratios 10**[Fe/H]: every value positive and spanning more than this factor (in dex that
# would be a population without a single sub-solar star yet reaching down to ~0: implausible).
LINEAR_RATIO_SPAN = 20.0
DEX_MEDIAN_RANGE = {"[Fe/H]": (-5.0, 1.0), "[O/Fe]": (-2.0, 2.0)}

ALPHA_ELEMENTS = {"mg": "Mg", "si": "Si", "ca": "Ca", "ti": "Ti", "s": "S", "alpha": "alpha",
                  "a": "alpha"}
_RATIO_NAME = re.compile(r"^\[?(?P<num>[a-z]+?)[_/ ]?(?P<den>fe|m)\]?$", re.IGNORECASE)
ALPHA_PROXY_CAVEAT = (
    "The model was trained on [O/Fe]. [Mg/Fe] and [alpha/Fe] trace [O/Fe] only roughly: O and Mg "
    "both come from core-collapse supernovae, but their yields differ with progenitor mass and "
    "metallicity, [alpha/Fe] averages several elements, and surveys measure them from different "
    "lines; offsets of ~0.1 dex and a different height of the low-metallicity plateau are typical.")


class ObservationError(CasbiError, ValueError):
    """A table or binning source that cannot become an observation; the message names the file."""


class NObsRangeWarning(UserWarning):
    """An observation's N_obs lies outside the N_obs range a ``normalised`` model was trained on."""


def warn_if_outside_n_obs(n_obs: float, model: str | os.PathLike,
                          n_obs_range: tuple[float, float, str] | None, stacklevel: int = 3) -> None:
    """A ``NObsRangeWarning`` (one line) when ``n_obs`` lies outside ``n_obs_range`` (the
    model's ``modelfolder.n_obs_range``; None: unknown or not a condition, no warning)."""
    if n_obs_range is None or n_obs_range[0] <= n_obs <= n_obs_range[1]:
        return
    lo, hi, origin = n_obs_range
    warnings.warn(f"N_obs {n_obs:g} lies outside the N_obs range {lo:g}..{hi:g} that {model} was "
                  f"trained on ({origin}): its posterior is an extrapolation; compose a set whose "
                  "observation model brackets this N_obs", NObsRangeWarning, stacklevel=stacklevel)


@dataclass(frozen=True)
class ColumnNames:
    """Table columns to read; None: the usual names ([Fe/H]: ``FE_H``, ``fe_h``...; errors:
    ``<col>_ERR``, ``<col>_err``, ``e_<col>``; no flag column)."""

    feh: str | None = None
    ofe: str | None = None
    feh_err: str | None = None
    ofe_err: str | None = None
    flag: str | None = None


@dataclass(frozen=True)
class BinningSource:
    """The binning an observation is made with, and what its model was trained on."""

    binning: Binning
    kind: str  # "model" | "store"
    path: str
    binning_version: int | None = None  # the store's, when read from a store
    training_stars: dict = field(default_factory=dict)  # percentiles of the training halos' stars
    note: str = ""  # why training_stars is empty, if it is
    n_obs_range: tuple | None = None  # a normalised model's (modelfolder.n_obs_range)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": self.path, "binning": self.binning.to_dict(),
                "binning_version": self.binning_version}


def _binning_from_edges(feh_edges: np.ndarray, ofe_edges: np.ndarray, where: Path) -> Binning:
    """The ``Binning`` whose uniform edges are exactly these (as the store wrote them)."""
    n = len(feh_edges) - 1
    if len(ofe_edges) - 1 != n or n < 1:
        raise ObservationError(f"{where}: bin edges of unequal or zero length "
                               f"({len(feh_edges)}, {len(ofe_edges)})")
    spec = BinningSpec(method="fixed", n_bins=n, feh_range=(float(feh_edges[0]),
                       float(feh_edges[-1])), ofe_range=(float(ofe_edges[0]), float(ofe_edges[-1])))
    binning = Binning(spec, spec.feh_range, spec.ofe_range)
    if not (np.array_equal(binning.feh_edges, feh_edges)
            and np.array_equal(binning.ofe_edges, ofe_edges)):
        raise ObservationError(f"{where}: bin edges are not the uniform edges the store writes")
    return binning


def training_star_counts(store: str, name: str, version: str) -> dict:
    """Star counts of the training halos of ``name:version``: percentiles over whole chunks
    evenly spread through the train split (at most ``TRAINING_CHUNKS_READ`` chunks)."""
    from casbi_store.store import trainingsets

    x = trainingsets.open_split_group(store, name, version, "train")[S.X.name]
    rows = x.chunks[0]
    n_chunks = math.ceil(x.shape[0] / rows)
    picked = np.unique(np.linspace(0, n_chunks - 1, min(TRAINING_CHUNKS_READ, n_chunks)).astype(int))
    totals = np.concatenate([np.asarray(x[c * rows:(c + 1) * rows]).sum(axis=(1, 2))
                             for c in picked])
    p5, p50, p95 = np.percentile(totals, [5, 50, 95])
    return {"set": f"{name}:{version}", "store": store, "halos_read": len(totals),
            "halos": int(x.shape[0]), "p5": float(p5), "median": float(p50), "p95": float(p95)}


def load_binning_source(path: str | os.PathLike) -> BinningSource:
    """Binning of a model folder (``transform.npz``) or of a store (its ``binning`` attribute)."""
    from casbi_store.learn.modelfolder import TRANSFORM, n_obs_range, read_meta, read_transform

    path = Path(path)
    transform = path / TRANSFORM
    if transform.is_file():
        stats = read_transform(path)  # refused, naming the file, if damaged or incomplete
        binning = _binning_from_edges(stats["feh_edges"], stats["ofe_edges"], transform)
        meta = None
        try:
            meta = read_meta(path)
            trained = training_star_counts(meta["store"], meta["set"], meta["version"])
            return BinningSource(binning, "model", str(path), training_stars=trained,
                                 n_obs_range=n_obs_range(meta))
        except Exception as exc:  # a moved or remote store: the documented minimum applies
            return BinningSource(binning, "model", str(path),
                                 n_obs_range=n_obs_range(meta) if meta else None,
                                 note=f"training set not readable ({type(exc).__name__}: {exc})")
    from casbi_store.store.io import StoreError, store_attrs

    try:
        attrs = store_attrs(os.fspath(path))
    except StoreError as exc:
        raise ObservationError(f"{path}: neither a model folder (no transform.npz) nor a casbi "
                               f"store ({exc})") from exc
    if S.ATTR_BINNING not in attrs:
        raise ObservationError(f"{path}: the store has no binning yet (extract a suite first)")
    binning = Binning.from_dict(attrs[S.ATTR_BINNING])
    return BinningSource(binning, "store", str(path), attrs[S.ATTR_BINNING].get("version"),
                         note="binning from a store: no training set to compare the star count with")


def minimum_stars(source: BinningSource, override: int | None = None) -> tuple[int, str]:
    """Fewest stars accepted, and why: ``override`` if given, else the larger of ``MIN_STARS``
    and 1/``FEW_STARS_FACTOR`` of the 5th percentile of the training halos' star counts."""
    if override is not None:
        return int(override), "given (--min-stars)"
    t = source.training_stars
    if not t:
        return MIN_STARS, f"documented minimum ({source.note})"
    value = max(MIN_STARS, math.ceil(t["p5"] / FEW_STARS_FACTOR))
    return value, (f"1/{FEW_STARS_FACTOR} of the 5th percentile of the star counts of the "
                   f"training halos of {t['set']} ({t['p5']:.0f}; median {t['median']:.0f}, "
                   f"95th percentile {t['p95']:.0f}, from {t['halos_read']} of {t['halos']} halos)")


# ---- tables ------------------------------------------------------------------------------------

def _table_format(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in sorted(TABLE_FORMATS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    raise ObservationError(f"{path}: unsupported table format; give a CSV (.csv) or FITS "
                           f"(.fits, .fit, .fits.gz) table")


class StarTable:
    """The columns of a CSV or FITS table, read with astropy, as float arrays on request."""

    def __init__(self, path: str | os.PathLike):
        from astropy.table import Table
        from astropy.utils.exceptions import AstropyWarning

        self.path = Path(path)
        if not self.path.is_file():
            raise ObservationError(f"{self.path}: no such table file")
        fmt = _table_format(self.path)
        try:
            with warnings.catch_warnings():  # unit strings, multiple HDUs: not the user's concern
                warnings.simplefilter("ignore", AstropyWarning)
                if fmt == "fits":
                    self.table = Table.read(self.path, format=fmt, memmap=True)
                else:
                    self.table = Table.read(_csv_lines(self.path), format=fmt)
        except Exception as exc:
            raise ObservationError(f"{self.path}: not readable as a {fmt} table "
                                   f"({type(exc).__name__}: {exc})") from exc
        self.names = list(self.table.colnames)
        self.n_rows = len(self.table)

    def resolve(self, name: str, role: str) -> str:
        """The table's column ``name`` (exact, else the one case-insensitive match)."""
        if name in self.names:
            return name
        matches = [n for n in self.names if n.lower() == name.lower()]
        if len(matches) == 1:
            return matches[0]
        raise ObservationError(f"{self.path}: no column {name!r} for {role}; the columns are "
                               f"{', '.join(self.names)}")

    def find(self, candidates: tuple[str, ...]) -> str | None:
        """The first of ``candidates`` present in the table (case-insensitively), else None."""
        lower = {n.lower(): n for n in self.names}
        for name in candidates:
            if name in self.names:
                return name
            if name.lower() in lower:
                return lower[name.lower()]
        return None

    def floats(self, name: str, fill: float = np.nan) -> np.ndarray:
        """Column ``name`` as float64; masked entries become ``fill``."""
        col = self.table[name]
        if col.ndim != 1:
            raise ObservationError(f"{self.path}: column {name!r} holds arrays of shape "
                                   f"{col.shape[1:]} per row, not one number")
        if col.dtype.kind not in "biuf":
            raise ObservationError(f"{self.path}: column {name!r} is not numeric "
                                   f"(type {col.dtype}, e.g. {col[0]!r})" if len(col) else
                                   f"{self.path}: column {name!r} is not numeric")
        values = np.array(np.ma.getdata(col), dtype=np.float64)
        values[np.ma.getmaskarray(col)] = fill
        return values


def _csv_lines(path: Path) -> list[str]:
    """A CSV's lines as a reader should see them: without a byte-order mark (Excel writes one)
    and without ``#`` comment lines (provenance headers of survey exports), blank lines dropped."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        lines = [line.rstrip("\r\n") for line in f]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def ofe_mapping(column: str) -> tuple[str, str]:
    """What the [O/Fe] column holds: ('[O/Fe]', '') or the alpha proxy with its caveat."""
    m = _RATIO_NAME.match(column.strip())
    if not m:
        return "[O/Fe]", ""
    num, den = m["num"].lower(), m["den"].lower()
    if num == "o" and den == "fe":
        return "[O/Fe]", ""
    if num in ALPHA_ELEMENTS:
        ratio = f"[{ALPHA_ELEMENTS[num]}/{'Fe' if den == 'fe' else 'M'}]"
        caveat = ALPHA_PROXY_CAVEAT
        if den == "m":
            caveat += " [X/M] is relative to the overall metallicity, not to iron."
        return f"{ratio} (column {column}) stands in for [O/Fe]", caveat
    ratio = f"[{num.capitalize()}/{'Fe' if den == 'fe' else 'M'}]"
    return (f"{ratio} (column {column}) taken as [O/Fe]",
            f"The model was trained on [O/Fe]; {ratio} is neither O nor an alpha element.")


def check_dex(values: np.ndarray, quantity: str, column: str, path: Path) -> None:
    """Refuse values that look like linear abundances rather than dex (see module constants)."""
    v = values[np.isfinite(values)]
    if v.size >= LINEAR_MIN_VALUES and (v > 0).all() and v.max() < LINEAR_MAX:
        raise ObservationError(
            f"{path}: column {column!r} ({quantity}) looks like linear abundances, not dex: all "
            f"{v.size} values lie in (0, {LINEAR_MAX}) (largest {v.max():.3g}); give "
            f"{quantity} as log10 ratios relative to the Sun in dex")
    if (quantity == "[Fe/H]" and v.size >= LINEAR_MIN_VALUES and (v > 0).all()
            and v.max() / v.min() > LINEAR_RATIO_SPAN):
        raise ObservationError(
            f"{path}: column {column!r} ({quantity}) looks like linear ratios 10^{quantity}, not "
            f"dex: all {v.size} values are positive, spanning a factor {v.max() / v.min():.3g} "
            f"({v.min():.3g} .. {v.max():.3g}); give {quantity} as log10 ratios relative to the "
            "Sun in dex (log10 of these values)")
    if v.size:
        lo, hi = DEX_MEDIAN_RANGE[quantity]
        median = float(np.median(v))
        if not lo <= median <= hi:
            raise ObservationError(
                f"{path}: column {column!r} ({quantity}) has median {median:.3g}, far outside "
                f"[{lo}, {hi}] where {quantity} in dex lies; is it linear, a log-epsilon "
                "abundance (A(X) = 12 + log N_X/N_H) or in other units?")


# ---- the observation ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Observation:
    """One star table binned like the store, with everything needed to audit it."""

    counts: np.ndarray  # (n_bins, n_bins) int32, [feh, ofe]
    binning: Binning
    stars: dict[str, np.ndarray]  # feh, ofe, feh_err, ofe_err of the binned stars
    n_rows: int
    dropped: dict[str, int]
    columns: dict[str, str]
    ofe_mapping: str
    ofe_caveat: str
    where: str
    table: str
    table_sha256: str
    source: BinningSource
    min_stars: tuple[int, str]

    @property
    def n_obs(self) -> int:
        return int(self.counts.sum())

    def error_percentiles(self) -> np.ndarray:
        """(2, len(ERROR_PERCENTILES)) percentiles of the binned stars' finite errors, NaN if none."""
        out = np.full((2, len(ERROR_PERCENTILES)), np.nan)
        for k, key in enumerate(("feh_err", "ofe_err")):
            err = self.stars[key][np.isfinite(self.stars[key])]
            if err.size:
                out[k] = np.percentile(err, ERROR_PERCENTILES)
        return out

    def summary(self) -> str:
        """What was read, dropped and binned, for people."""
        b = self.binning
        lines = [f"{self.table}: {self.n_rows} rows -> {self.n_obs} stars binned with the "
                 f"{self.source.kind} binning of {self.source.path} ([Fe/H] {b.feh_range[0]:.2f}.."
                 f"{b.feh_range[1]:.2f}, [O/Fe] {b.ofe_range[0]:.2f}..{b.ofe_range[1]:.2f} dex)"]
        labels = {"not_finite": "not finite", "flagged": f"flagged ({self.columns.get('flag')})",
                  "quality_cut": f"quality cut ({self.where})",
                  "outside_range": "outside the binning ranges"}
        lines.append("  dropped: " + ", ".join(f"{labels[k]} {self.dropped[k]}" for k in DROP_REASONS))
        lines.append("  columns: " + ", ".join(f"{k} {v}" for k, v in self.columns.items()))
        if self.ofe_caveat:
            lines.append(f"  [O/Fe] axis: {self.ofe_mapping}")
            lines.append(f"  caveat: {self.ofe_caveat}")
        pct = self.error_percentiles()
        for k, name in enumerate(("[Fe/H]", "[O/Fe]")):
            if np.isfinite(pct[k]).all():
                lines.append(f"  {name} errors: median {pct[k, 2]:.3f} dex (16-84%: "
                             f"{pct[k, 1]:.3f}..{pct[k, 3]:.3f}, 5-95%: {pct[k, 0]:.3f}.."
                             f"{pct[k, 4]:.3f})")
            else:
                lines.append(f"  {name} errors: not given")
        lines.append(f"  at least {self.min_stars[0]} stars required: {self.min_stars[1]}")
        return "\n".join(lines)

    def to_dataset(self) -> xr.Dataset:
        """The observation as an ``xarray.Dataset`` (names from ``schema``, see docs/STORE.md)."""
        b = self.binning
        fe, of = b.feh_edges, b.ofe_edges
        star = {S.OBS_STAR_FEH: "feh", S.OBS_STAR_OFE: "ofe", S.OBS_STAR_FEH_ERR: "feh_err",
                S.OBS_STAR_OFE_ERR: "ofe_err"}

        def meta(f: S.Field) -> dict:
            return {S.ATTR_UNITS: f.units, S.ATTR_DESCRIPTION: f.description}

        data = {
            S.OBS_COUNTS.name: ((S.DIM_FEH_BIN, S.DIM_OFE_BIN), self.counts.astype(np.int32),
                                meta(S.OBS_COUNTS)),
            S.OBS_N.name: ((), np.int32(self.n_obs), meta(S.OBS_N)),
            S.FEH_EDGES.name: (S.DIM_FEH_EDGE, fe, meta(S.FEH_EDGES)),
            S.OFE_EDGES.name: (S.DIM_OFE_EDGE, of, meta(S.OFE_EDGES)),
            **{f.name: (S.DIM_STAR, self.stars[key].astype(np.float32), meta(f))
               for f, key in star.items()},
            S.OBS_ERROR_PERCENTILES.name: ((S.DIM_ABUNDANCE, S.DIM_PERCENTILE),
                                           self.error_percentiles(), meta(S.OBS_ERROR_PERCENTILES)),
        }
        coords = {S.FEH_CENTERS.name: (fe[:-1] + fe[1:]) / 2, S.OFE_CENTERS.name: (of[:-1] + of[1:]) / 2,
                  S.DIM_ABUNDANCE: np.array(["feh", "ofe"]),
                  S.DIM_PERCENTILE: np.array(ERROR_PERCENTILES)}
        attrs = {
            S.ATTR_OBSERVATION_VERSION: S.OBSERVATION_VERSION,
            "table": self.table, "table_sha256": self.table_sha256, "n_rows": self.n_rows,
            "columns": json.dumps(self.columns), "ofe_mapping": self.ofe_mapping,
            "ofe_caveat": self.ofe_caveat, "quality_expression": self.where,
            "dropped": json.dumps(self.dropped), "binning_source": json.dumps(self.source.to_dict()),
            "min_stars": json.dumps({"value": self.min_stars[0], "reason": self.min_stars[1]}),
            "training_stars": json.dumps(self.source.training_stars),
            "provenance": json.dumps(provenance(versions=package_versions((*PACKAGES, "astropy")))),
        }
        return xr.Dataset(data, coords=coords, attrs=attrs)


def observe_table(table: str | os.PathLike, source: BinningSource | str | os.PathLike,
                  columns: ColumnNames = ColumnNames(), where: str | None = None,
                  min_stars: int | None = None) -> Observation:
    """Read, cut and bin a star table (see the module docstring for the rules and errors)."""
    source = source if isinstance(source, BinningSource) else load_binning_source(source)
    query = parse_quality(where) if where else None  # grammar errors before reading a large table
    t = StarTable(table)
    path = t.path
    used: dict[str, str] = {}
    for role, given, candidates in (("feh", columns.feh, FEH_NAMES),
                                    ("ofe", columns.ofe, OFE_NAMES)):
        quantity = "[Fe/H]" if role == "feh" else "[O/Fe]"
        name = t.resolve(given, quantity) if given else t.find(candidates)
        if name is None:
            raise ObservationError(f"{path}: no {quantity} column "
                                   f"(looked for {', '.join(candidates)}; name it with "
                                   f"--{role}-col); the columns are {', '.join(t.names)}")
        used[role] = name
    for role, given in (("feh_err", columns.feh_err), ("ofe_err", columns.ofe_err)):
        base = used[role[:3]]
        name = t.resolve(given, f"the {role} error") if given else \
            t.find(tuple(p.format(base) for p in ERROR_PATTERNS))
        if name:
            used[role] = name
    if columns.flag:
        used["flag"] = t.resolve(columns.flag, "the flag")

    feh, ofe = t.floats(used["feh"]), t.floats(used["ofe"])
    check_dex(feh, "[Fe/H]", used["feh"], path)
    check_dex(ofe, "[O/Fe]", used["ofe"], path)
    errors = {k: t.floats(used[k]) if k in used else np.full(t.n_rows, np.nan)
              for k in ("feh_err", "ofe_err")}

    dropped = dict.fromkeys(DROP_REASONS, 0)
    alive = np.isfinite(feh) & np.isfinite(ofe)
    dropped["not_finite"] = int((~alive).sum())
    if "flag" in used:
        good = t.floats(used["flag"], fill=1.0) == 0  # masked or NaN flags count as bad
        dropped["flagged"] = int((alive & ~good).sum())
        alive &= good
    if query is not None:
        passed = query.evaluate(lambda n: t.floats(t.resolve(n, f"the quality expression {where!r}")),
                                t.n_rows)
        dropped["quality_cut"] = int((alive & ~passed).sum())
        alive &= passed
    if t.n_rows == 0:
        raise ObservationError(f"{path}: the table has no rows")
    if not alive.any():
        raise ObservationError(f"{path}: no star left after the cuts ({t.n_rows} rows; dropped: "
                               + ", ".join(f"{k} {v}" for k, v in dropped.items()) + ")")
    b = source.binning
    # in range as the store's binning sees it (values compared at the stored precision)
    inside = alive & (bin_stars(feh, b.feh_edges) >= 0) & (bin_stars(ofe, b.ofe_edges) >= 0)
    dropped["outside_range"] = int((alive & ~inside).sum())
    counts, _ = histogram_stack(feh[inside], ofe[inside], np.ones(int(inside.sum())),
                                np.array([int(inside.sum())]), b)
    counts = counts[0]
    if counts.sum() != inside.sum():  # the store's binning and the range test must agree
        raise AssertionError(f"{path}: binned {counts.sum()} of {inside.sum()} stars in range")
    needed = minimum_stars(source, min_stars)
    n_obs = int(counts.sum())
    if n_obs == 0:
        raise ObservationError(f"{path}: none of the {int(alive.sum())} stars left after the cuts "
                               f"lies inside the binning ranges of {source.path} ([Fe/H] "
                               f"{b.feh_range}, [O/Fe] {b.ofe_range})")
    if n_obs < needed[0]:
        raise ObservationError(
            f"{path}: {n_obs} stars after the cuts, far too few for {source.path}: at least "
            f"{needed[0]} required, {needed[1]}. A survey this small needs a model trained on a "
            "set with an observation model (issue 10, section 2); --min-stars overrides the check")
    warn_if_outside_n_obs(n_obs, source.path, source.n_obs_range)
    mapping, caveat = ofe_mapping(used["ofe"])
    return Observation(
        counts=counts, binning=b,
        stars={"feh": feh[inside], "ofe": ofe[inside], **{k: v[inside] for k, v in errors.items()}},
        n_rows=t.n_rows, dropped=dropped, columns=used, ofe_mapping=mapping, ofe_caveat=caveat,
        where=where or "", table=str(path.resolve()), table_sha256=sha256_file(path),
        source=source, min_stars=needed)


def write_observation(obs: Observation, out: str | os.PathLike) -> Path:
    """Write the observation NetCDF atomically (a temporary file renamed into place)."""
    out = Path(out)
    if out.suffix != ".nc":
        raise ObservationError(f"{out}: an observation is written as NetCDF; name it *.nc")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as partial:
        obs.to_dataset().to_netcdf(partial)
    return out


JSON_ATTRS = ("columns", "dropped", "binning_source", "min_stars", "training_stars", "provenance")


def read_observation(path: str | os.PathLike, feh_edges: np.ndarray | None = None,
                     ofe_edges: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The histogram (float32, [feh, ofe]) and attributes of an observation file, JSON decoded,
    plus ``feh_edges``/``ofe_edges``. Given edges (a model's), refuses another binning."""
    path = Path(path)
    if not path.is_file():
        raise ObservationError(f"{path}: no such observation file")
    try:
        with xr.open_dataset(path) as ds:
            ds.load()
    except Exception as exc:
        raise ObservationError(f"{path}: not readable as NetCDF ({type(exc).__name__}: {exc})"
                               ) from exc
    if S.ATTR_OBSERVATION_VERSION not in ds.attrs:
        raise ObservationError(f"{path}: not an observation file (no "
                               f"{S.ATTR_OBSERVATION_VERSION} attribute; write it with "
                               "casbi-store observe)")
    if ds.attrs[S.ATTR_OBSERVATION_VERSION] != S.OBSERVATION_VERSION:
        raise ObservationError(f"{path}: observation version {ds.attrs[S.ATTR_OBSERVATION_VERSION]}"
                               f" is not {S.OBSERVATION_VERSION}")
    attrs = {k: json.loads(v) if k in JSON_ATTRS else v for k, v in ds.attrs.items()}
    attrs["feh_edges"] = ds[S.FEH_EDGES.name].values
    attrs["ofe_edges"] = ds[S.OFE_EDGES.name].values
    for name, given in (("feh_edges", feh_edges), ("ofe_edges", ofe_edges)):
        if given is not None and not np.allclose(attrs[name], given, rtol=0, atol=1e-9):
            raise ObservationError(f"{path}: binned with other {name} than the model's "
                                   f"({attrs[name][[0, -1]]} vs {np.asarray(given)[[0, -1]]}); "
                                   "observe the table again with this model's binning")
    counts = ds[S.OBS_COUNTS.name].values.astype(np.float32)
    return counts, attrs
