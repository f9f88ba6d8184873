"""Extracting one snapshot with pynbody: the main halo's stars, their abundances and masses.

``extract_snapshot`` raises :class:`SnapshotError` with a kind for every way a snapshot can be
unusable; ``extract_outcome`` wraps it for Dask workers and always returns a plain dict (no
pynbody objects cross processes: snapshots cannot be pickled).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from casbi_store import InputError

from .abundances import abundance_ratios
from .binning import Binning, inside

log = logging.getLogger(__name__)

MAIN_HALO_RULES = ("first", "most_massive")
DEFAULT_MSTAR_LIMIT = 6e9  # Msun, about the LMC (seed 3.2)


class ErrorKind(StrEnum):
    """Why a snapshot was not turned into a galaxy row."""

    LOAD = "load_error"  # unreadable / truncated / inconsistent file
    NO_HALOS = "no_halos"  # no halo catalogue, or an empty one
    NO_STARS = "no_stars"  # the main halo holds no star particles
    MISSING_ARRAY = "missing_array"  # FeMassFrac / OxMassFrac / metals absent
    NO_CHEMISTRY = "no_chemistry"  # every star has zero iron or oxygen
    EXCLUDED_MASS = "excluded_mass"  # M* at or above the stellar-mass limit (excluded, not failed)
    SOURCE_CHANGED = "source_changed"  # already extracted from a file that has since changed
    OUTSIDE_BINNING = "outside_binning"  # every kept star outside the run's fixed binning ranges
    UNEXPECTED = "unexpected"  # anything else: a bug, reported with its traceback


EXCLUDED_KINDS = frozenset({ErrorKind.EXCLUDED_MASS})


class SnapshotError(Exception):
    """A snapshot that cannot be used; ``kind`` says why, the message names the file."""

    def __init__(self, kind: ErrorKind, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.kind = ErrorKind(kind)
        self.path = path

    @property
    def status(self) -> str:
        return "excluded" if self.kind in EXCLUDED_KINDS else "failed"


@dataclass(frozen=True)
class ExtractionSettings:
    """How to pick the main halo and which galaxies to keep."""

    main_halo: str = "first"  # 'first' AHF row, or 'most_massive' (largest Mvir)
    mstar_limit: float = DEFAULT_MSTAR_LIMIT

    def __post_init__(self):
        if self.main_halo not in MAIN_HALO_RULES:
            raise InputError(f"main_halo must be one of {MAIN_HALO_RULES}, not {self.main_halo!r}")
        if not self.mstar_limit > 0:
            raise InputError(f"mstar_limit must be positive, not {self.mstar_limit}")


_UNIT_CACHE: dict[tuple, np.ndarray] = {}


def memoize_unit_projection() -> None:
    """Cache pynbody's ``UnitBase.dimensional_project`` in this process.

    pynbody re-derives the on-disk units of every array it loads with a rational Gauss-Jordan
    elimination over ``fractions.Fraction`` (``infer_original_units``): about 60% of the CPU time
    of a snapshot extraction. The answer depends only on the powers of the units' bases, which
    their string forms spell out exactly, so it is cached per (unit, basis). Idempotent.
    """
    from pynbody import units

    if getattr(units.UnitBase.dimensional_project, "_casbi_cached", False):
        return
    original = units.UnitBase.dimensional_project

    def dimensional_project(self, basis_units):
        key = (type(self).__name__, str(self), tuple(str(b) for b in basis_units))
        if key not in _UNIT_CACHE:
            _UNIT_CACHE[key] = original(self, basis_units)
        return _UNIT_CACHE[key].copy()

    dimensional_project._casbi_cached = True
    units.UnitBase.dimensional_project = dimensional_project


def _load(path: str):
    import pynbody

    pynbody.config["number_of_threads"] = 1
    memoize_unit_projection()
    try:
        snap = pynbody.load(path)
        snap["mass"]  # read the main file now, so a truncated file fails here
    except Exception as exc:  # pynbody raises many types for a broken file
        raise SnapshotError(ErrorKind.LOAD, path, f"cannot load snapshot: {exc!r}") from exc
    return snap


def _main_halo(snap, path: str, rule: str):
    try:
        catalogue = snap.halos(priority=["AHFCatalogue"], write_fpos=False)
    except Exception as exc:
        raise SnapshotError(ErrorKind.NO_HALOS, path, f"no halo catalogue: {exc}") from exc
    props = catalogue.get_properties_all_halos()
    n_halos = len(catalogue.number_mapper)
    if n_halos == 0:
        raise SnapshotError(ErrorKind.NO_HALOS, path, "halo catalogue lists no halos")
    if rule == "first":
        index = 0
    else:
        key = "Mvir" if "Mvir" in props else "npart"
        index = int(np.argmax(props[key]))
    number = int(catalogue.number_mapper.index_to_number(index))
    try:
        return number, catalogue[number]
    except Exception as exc:
        raise SnapshotError(ErrorKind.LOAD, path, f"cannot read halo {number}: {exc!r}") from exc


def _redshift(snap) -> float:
    try:
        return float(snap.properties["z"])
    except KeyError:  # a non-cosmological run has no redshift
        return float("nan")


def _star_array(stars, name: str, path: str) -> np.ndarray:
    try:
        return np.asarray(stars[name])
    except KeyError as exc:
        raise SnapshotError(ErrorKind.MISSING_ARRAY, path, f"star array {name!r} is missing") from exc


def _check_inside(feh: np.ndarray, ofe: np.ndarray, binning: Binning, path: str, number: int):
    """A galaxy none of whose stars a histogram of the fixed ``binning`` would count is no
    building block: its histogram would be all zeros (``infer`` refuses such a plane)."""
    if not inside(feh, ofe, binning).any():
        raise SnapshotError(
            ErrorKind.OUTSIDE_BINNING, path,
            f"all {len(feh)} stars of halo {number} lie outside the fixed binning ranges "
            f"[Fe/H] {binning.feh_range[0]:g}..{binning.feh_range[1]:g}, [O/Fe] "
            f"{binning.ofe_range[0]:g}..{binning.ofe_range[1]:g} (its stars: [Fe/H] "
            f"{feh.min():.2f}..{feh.max():.2f}, [O/Fe] {ofe.min():.2f}..{ofe.max():.2f})")


def extract_snapshot(path: str, settings: ExtractionSettings | None = None,
                     fixed_binning: Binning | None = None) -> dict:
    """Extract the main halo of one snapshot.

    Returns a dict of galaxy metadata (``time`` in Gyr, masses in Msun, ...) and float32 per-star
    arrays ``feh``, ``ofe``, ``mass``, ``tform`` for the stars with finite abundances. With the
    run's ``fixed_binning``, a galaxy whose stars all fall outside it is an error
    (``outside_binning``); percentile ranges are known only once every snapshot is extracted.
    """
    settings = settings or ExtractionSettings()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        snap = _load(path)
        number, halo = _main_halo(snap, path, settings.main_halo)
        stars = halo.star
        n_all = len(stars)
        if n_all == 0:
            raise SnapshotError(ErrorKind.NO_STARS, path,
                                f"main halo {number} holds no star particles")
        mass = np.asarray(stars["mass"].in_units("Msol"), dtype=np.float64)
        mstar = float(mass.sum())
        mdm = float(np.asarray(halo.dark["mass"].in_units("Msol"), dtype=np.float64).sum())
        if mstar >= settings.mstar_limit:
            raise SnapshotError(ErrorKind.EXCLUDED_MASS, path,
                                f"M* = {mstar:.3e} Msun >= limit {settings.mstar_limit:.3e} Msun")
        fe = _star_array(stars, "FeMassFrac", path)
        ox = _star_array(stars, "OxMassFrac", path)
        metals = _star_array(stars, "metals", path)
        tform = np.asarray(stars["tform"].in_units("Gyr"), dtype=np.float64)
        t_snap = float(snap.properties["time"].in_units("Gyr"))
        redshift = _redshift(snap)
    feh, ofe, valid = abundance_ratios(fe, ox, metals)
    n_keep = int(valid.sum())
    if n_keep == 0:
        raise SnapshotError(ErrorKind.NO_CHEMISTRY, path,
                            f"all {n_all} stars of halo {number} have zero iron or oxygen")
    if fixed_binning is not None:
        _check_inside(feh[valid], ofe[valid], fixed_binning, path, number)
    return {
        "time": t_snap,
        "redshift": redshift,
        "mstar": mstar,
        "mdm": mdm,
        "n_star": n_keep,
        "n_star_dropped": n_all - n_keep,
        "halo_number": number,
        "feh": feh[valid].astype(np.float32),
        "ofe": ofe[valid].astype(np.float32),
        "mass": mass[valid].astype(np.float32),
        "tform": tform[valid].astype(np.float32),
    }


def extract_outcome(path: str, settings: ExtractionSettings | None = None,
                    fixed_binning: Binning | None = None) -> dict:
    """Run ``extract_snapshot`` and never raise: ``{"status": "ok"|"failed"|"excluded", ...}``."""
    start = time.perf_counter()
    try:
        result = extract_snapshot(path, settings, fixed_binning)
        result["status"] = "ok"
    except SnapshotError as exc:
        result = {"status": exc.status, "kind": str(exc.kind), "message": str(exc)}
    except Exception as exc:  # a bug must not kill a run of thousands: record it
        import traceback

        result = {"status": "failed", "kind": str(ErrorKind.UNEXPECTED),
                  "message": f"{path}: {exc!r}\n{traceback.format_exc(limit=5)}"}
    result["seconds"] = time.perf_counter() - start
    return result
