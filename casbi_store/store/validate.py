"""Checking a store against its schema: every array present, readable, consistent and honest.

``validate_store`` reads every chunk of every array (so a corrupted or missing chunk file
surfaces, with the array's path), checks dtypes, that every table has one length, that galaxy
names are unique, lengths against :mod:`casbi_store.store.schema`, looks for NaN or
negative counts, checks that every training-set member points at an existing galaxy, and
recomputes each published training-set version's checksum.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.core.sync import sync

from . import schema as S
from . import trainingsets
from .binning import Binning
from .commit import block_digest, chunk_regions
from .io import as_strings, open_snapshot


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the store, at ``path`` inside it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _dtype_ok(field: S.Field, arr: zarr.Array) -> bool:
    if field.dtype == "str":
        return arr.dtype.kind in "OTU"
    return np.dtype(arr.dtype) == np.dtype(field.dtype)


def _missing_chunks(arr: zarr.Array) -> list[str]:
    """Chunk keys the array's shape needs but the store lacks (zarr would read them as fill
    values: zeros or NaN). Our writers write every chunk, empty or not."""
    sep = getattr(arr.metadata, "dimension_separator", ".") or "."
    keys = [f"{arr.path}/{sep.join(map(str, idx))}" if idx else f"{arr.path}/0"
            for idx in itertools.product(*(range(n) for n in arr.cdata_shape))]
    if arr.size == 0:
        return []
    store = arr.store_path.store
    return [k for k in keys if not sync(store.exists(k))]


class _Reader:
    def __init__(self, root: zarr.Group, problems: list[Problem], local: Path | None = None,
                 digests: dict[str, dict[str, str]] | None = None):
        self.root, self.problems, self.local = root, problems, local
        self.digests = digests or {}
        self.verified = 0  # chunks checked against their digest

    def check_digests(self, path: str, arr: zarr.Array, values: np.ndarray) -> None:
        """Compare every chunk with the digest its commit recorded; name the chunks that differ."""
        recorded = self.digests.get(path)
        if not recorded:
            return
        sep = getattr(arr.metadata, "dimension_separator", ".") or "."
        changed = []
        for key, region in chunk_regions(arr.shape, arr.chunks, sep).items():
            if key in recorded:
                self.verified += 1
                if block_digest(values[region]) != recorded[key]:
                    changed.append(key)
        if changed:
            self.problems.append(Problem(path, f"chunk{'s' if len(changed) > 1 else ''} "
                                               f"{', '.join(changed[:5])} changed since committed "
                                               "(digest differs): silent corruption"))

    def read(self, path: str, field: S.Field | None = None) -> np.ndarray | None:
        """The whole array (every chunk present and decoded), or None after recording why not."""
        try:
            arr = self.root[path]
            if self.local is not None and not sync(self.root.store.on_disk(f"{path}/.zarray")):
                raise KeyError(path)  # deleted on disk, still listed in .zmetadata
        except KeyError:
            self.problems.append(Problem(path, "missing array"))
            return None
        if field is not None and not _dtype_ok(field, arr):
            self.problems.append(Problem(path, f"dtype {arr.dtype}, schema says {field.dtype}"))
        try:
            missing = _missing_chunks(arr)
            if missing:
                self.problems.append(Problem(path, f"{len(missing)} chunk file(s) missing "
                                                   f"(e.g. {missing[0]}); they would read as "
                                                   "fill values"))
                return None
            values = arr[...]
        except Exception as exc:  # codec errors, truncated chunks
            self.problems.append(Problem(path, f"unreadable ({type(exc).__name__}: {exc})"))
            return None
        self.check_digests(path, arr, np.asarray(values))
        return values

    def table(self, group: str, fields: tuple[S.Field, ...]) -> tuple[dict, int | None]:
        """Every array of a table group, and its length (None if the arrays disagree)."""
        arrays = {f.name: self.read(f"{group}/{f.name}", f) for f in fields}
        lengths = {name: len(v) for name, v in arrays.items() if v is not None}
        if len(set(lengths.values())) > 1:
            self.problems.append(Problem(group, "arrays differ in length: " + ", ".join(
                f"{k} {n}" for k, n in lengths.items())))
            return arrays, None
        return arrays, next(iter(lengths.values()), None)


def validate_store(path_or_url: str | os.PathLike, storage_options: dict | None = None, *,
                   quick: bool = False, report: dict | None = None) -> list[Problem]:
    """Every problem found in the store (an empty list means it is valid).

    The store is checked as readers see it: one commit, through its consolidated metadata, so
    rows a running or killed writer has not committed are not looked at. Unless ``quick``, every
    chunk of the extraction's arrays is also compared with the digest its commit recorded, which
    finds bytes flipped in a way that still decodes. ``report`` (a dict) gets ``digests``: how
    many chunks were verified, 0 for stores written before digests were recorded.
    """
    store = os.fspath(path_or_url)
    problems: list[Problem] = []
    try:
        snapshot = open_snapshot(store, storage_options)
        root = zarr.open_consolidated(snapshot, mode="r", zarr_format=S.ZARR_FORMAT)
    except Exception as exc:
        return [Problem("/", f"cannot open as a consolidated Zarr v2 store ({exc})")]
    version = root.attrs.get(S.ATTR_SCHEMA_VERSION)
    if version != S.SCHEMA_VERSION:
        problems.append(Problem("/", f"schema version {version}, expected {S.SCHEMA_VERSION}"))
        return problems
    r = _Reader(root, problems, Path(store) if os.path.isdir(store) else None,
                None if quick else snapshot.digests)
    n_gal = None
    if S.GALAXIES in root or S.STARS in root or S.HISTOGRAMS in root:
        n_gal = _validate_galaxies(r)
    if S.ERRORS in root:
        r.table(S.ERRORS, S.ERROR_FIELDS)

    # as readers see them: the versions in the consolidated metadata
    for name, published in trainingsets.read_registry(store, storage_options).items():
        for version, meta in published.items():
            _validate_version(r, name, version, meta, n_gal)
    if report is not None:
        report["digests"] = r.verified
    return problems


def _validate_galaxies(r: _Reader) -> int | None:
    """Galaxies, stars and histograms agree with each other; return the number of galaxies."""
    problems = r.problems
    gal, n_gal = r.table(S.GALAXIES, S.GALAXY_FIELDS)
    names = gal[S.NAME.name]
    if names is not None:
        unique, counts = np.unique(as_strings(names), return_counts=True)
        if (counts > 1).any():
            dup = unique[counts > 1]
            problems.append(Problem(f"{S.GALAXIES}/{S.NAME.name}", f"{len(dup)} name(s) stored more "
                                    f"than once (e.g. {dup[0]}, {counts.max()} times)"))
    stars, n_stars = r.table(S.STARS, S.STAR_FIELDS)
    offsets, n_star = gal[S.STAR_OFFSET.name], gal[S.N_STAR.name]
    if offsets is not None and n_star is not None and n_stars is not None and len(offsets):
        if offsets[0] != 0 or np.any(offsets[1:] != (offsets + n_star)[:-1]):
            problems.append(Problem(f"{S.GALAXIES}/{S.STAR_OFFSET.name}", "not contiguous"))
        if offsets[-1] + n_star[-1] != n_stars:
            problems.append(Problem(S.STARS, f"{n_stars} rows, galaxies reference "
                                             f"{offsets[-1] + n_star[-1]}"))

    for field in S.HISTOGRAM_FIELDS:
        path = f"{S.HISTOGRAMS}/{field.name}"
        values = r.read(path, field)
        if values is None:
            continue
        if n_gal is not None and values.shape[0] != n_gal:
            problems.append(Problem(path, f"{values.shape[0]} rows, {n_gal} galaxies"))
        if np.isnan(values).any() if values.dtype.kind == "f" else False:
            problems.append(Problem(path, f"{int(np.isnan(values).sum())} NaN values"))
        if (values < 0).any():
            problems.append(Problem(path, f"{int((values < 0).sum())} negative values"))
        if field is S.COUNTS and n_star is not None and values.shape[0] == len(n_star):
            over = np.flatnonzero(values.sum(axis=(1, 2)) > n_star)
            if over.size:
                problems.append(Problem(path, f"{over.size} histograms hold more stars than "
                                              "their galaxy"))
            _validate_outside(r, n_star - values.sum(axis=(1, 2), dtype=np.int64))
    hist_names = r.read(f"{S.HISTOGRAMS}/{S.HIST_NAME.name}", S.HIST_NAME)
    if hist_names is not None and names is not None and not np.array_equal(
            as_strings(hist_names), as_strings(names)):
        problems.append(Problem(f"{S.HISTOGRAMS}/{S.HIST_NAME.name}",
                                "differs from galaxies/name row by row"))
    for field in (S.FEH_EDGES, S.OFE_EDGES):
        edges = r.read(f"{S.HISTOGRAMS}/{field.name}", field)
        if edges is not None and not np.all(np.diff(edges) > 0):
            problems.append(Problem(f"{S.HISTOGRAMS}/{field.name}", "edges not increasing"))
    return n_gal


def _validate_outside(r: _Reader, expected: np.ndarray) -> None:
    """``histograms/n_star_outside``, where stored (stores before it lack it), is what the
    counts leave out of each galaxy's stars."""
    if S.HISTOGRAMS not in r.root or S.N_STAR_OUTSIDE.name not in r.root[S.HISTOGRAMS]:
        return
    path = f"{S.HISTOGRAMS}/{S.N_STAR_OUTSIDE.name}"
    outside = r.read(path, S.N_STAR_OUTSIDE)
    if outside is not None and not np.array_equal(outside, expected):
        r.problems.append(Problem(path, "differs from n_star - counts.sum()"))


def _validate_version(r: _Reader, name: str, version: str, meta: dict, n_gal: int | None) -> None:
    prefix = trainingsets.set_path(name, version)
    readable = True
    binning = Binning.from_dict(meta["binning"]) if meta.get("binning") else None
    for split in S.SPLITS:
        if binning is not None:  # a set describes its own binning: edges equal its entry's
            for field, edges in ((S.FEH_EDGES, binning.feh_edges), (S.OFE_EDGES, binning.ofe_edges)):
                stored = r.read(f"{prefix}/{split}/{field.name}", field)
                readable &= stored is not None
                if stored is not None and not np.array_equal(stored, edges):
                    r.problems.append(Problem(f"{prefix}/{split}/{field.name}",
                                              "differs from the binning in the registry entry"))
        arrays = {f.name: r.read(f"{prefix}/{split}/{f.name}", f) for f in S.TRAINING_FIELDS}
        readable &= all(v is not None for v in arrays.values())
        x, members, n_sub = arrays[S.X.name], arrays[S.MEMBERS.name], arrays[S.N_SUB.name]
        if x is not None and (x < 0).any():
            r.problems.append(Problem(f"{prefix}/{split}/{S.X.name}", "negative counts"))
        if members is not None:
            if n_gal is not None and ((members < S.SYNTHETIC_MEMBER) | (members >= n_gal)).any():
                r.problems.append(Problem(f"{prefix}/{split}/{S.MEMBERS.name}",
                                          f"members outside the {n_gal} galaxies"))
            if n_sub is not None and not np.array_equal((members != -1).sum(axis=1), n_sub):
                r.problems.append(Problem(f"{prefix}/{split}/{S.N_SUB.name}",
                                          "does not match the members"))
        if x is not None and len(x) != meta["counts"].get(split):
            r.problems.append(Problem(f"{prefix}/{split}", f"{len(x)} halos, registry says "
                                                           f"{meta['counts'].get(split)}"))
    if readable and trainingsets.version_checksum(r.root, name, version) != meta.get("checksum"):
        r.problems.append(Problem(prefix, "checksum differs from the published one"))
