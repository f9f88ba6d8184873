"""Checking a store against its schema: every array present, readable, consistent and honest.

``validate_store`` reads every chunk of every array (so a corrupted chunk surfaces, with the
array's path), checks dtypes and lengths against :mod:`casbi_store.schema`, looks for NaN or
negative counts, checks that every training-set member points at an existing galaxy, and
recomputes each published training-set version's checksum.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import zarr

from . import schema as S
from . import trainingsets
from .binning import Binning


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


class _Reader:
    def __init__(self, root: zarr.Group, problems: list[Problem]):
        self.root, self.problems = root, problems

    def read(self, path: str, field: S.Field | None = None) -> np.ndarray | None:
        """The whole array (every chunk decoded), or None after recording why not."""
        try:
            arr = self.root[path]
        except KeyError:
            self.problems.append(Problem(path, "missing array"))
            return None
        if field is not None and not _dtype_ok(field, arr):
            self.problems.append(Problem(path, f"dtype {arr.dtype}, schema says {field.dtype}"))
        try:
            return arr[...]
        except Exception as exc:  # codec errors, truncated chunks, missing chunk files
            self.problems.append(Problem(path, f"unreadable ({type(exc).__name__}: {exc})"))
            return None


def validate_store(path_or_url: str | os.PathLike, storage_options: dict | None = None) -> list[Problem]:
    """Every problem found in the store (an empty list means it is valid)."""
    store = os.fspath(path_or_url)
    problems: list[Problem] = []
    local = os.path.isdir(store)
    try:
        zarr.open_consolidated(store, mode="r", zarr_format=S.ZARR_FORMAT,
                               storage_options=storage_options)
        # A local store is checked file by file (an array deleted on disk still appears in
        # .zmetadata); a remote one through its consolidated metadata.
        root = zarr.open_group(store, mode="r", zarr_format=S.ZARR_FORMAT,
                               use_consolidated=not local, storage_options=storage_options)
    except Exception as exc:
        return [Problem("/", f"cannot open as a consolidated Zarr v2 store ({exc})")]
    version = root.attrs.get(S.ATTR_SCHEMA_VERSION)
    if version != S.SCHEMA_VERSION:
        problems.append(Problem("/", f"schema version {version}, expected {S.SCHEMA_VERSION}"))
        return problems
    r = _Reader(root, problems)

    gal = {f.name: r.read(f"{S.GALAXIES}/{f.name}", f) for f in S.GALAXY_FIELDS}
    n_gal = len(gal[S.NAME.name]) if gal[S.NAME.name] is not None else None
    for name, values in gal.items():
        if values is not None and n_gal is not None and len(values) != n_gal:
            problems.append(Problem(f"{S.GALAXIES}/{name}", f"{len(values)} rows, {n_gal} galaxies"))

    stars = {f.name: r.read(f"{S.STARS}/{f.name}", f) for f in S.STAR_FIELDS}
    lengths = {len(v) for v in stars.values() if v is not None}
    if len(lengths) > 1:
        problems.append(Problem(S.STARS, f"arrays differ in length: {sorted(lengths)}"))
    offsets, n_star = gal[S.STAR_OFFSET.name], gal[S.N_STAR.name]
    if offsets is not None and n_star is not None and lengths and len(offsets):
        if offsets[0] != 0 or np.any(offsets[1:] != (offsets + n_star)[:-1]):
            problems.append(Problem(f"{S.GALAXIES}/{S.STAR_OFFSET.name}", "not contiguous"))
        if offsets[-1] + n_star[-1] != max(lengths):
            problems.append(Problem(S.STARS, f"{max(lengths)} rows, galaxies reference "
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
    for field in (S.FEH_EDGES, S.OFE_EDGES):
        edges = r.read(f"{S.HISTOGRAMS}/{field.name}", field)
        if edges is not None and not np.all(np.diff(edges) > 0):
            problems.append(Problem(f"{S.HISTOGRAMS}/{field.name}", "edges not increasing"))
    for field in S.ERROR_FIELDS:
        r.read(f"{S.ERRORS}/{field.name}", field)

    registry = trainingsets.read_registry(store, storage_options, consolidated=not local)
    for name, published in registry.items():
        for version, meta in published.items():
            _validate_version(r, name, version, meta, n_gal)
    return problems


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
            if n_gal is not None and ((members < -1) | (members >= n_gal)).any():
                r.problems.append(Problem(f"{prefix}/{split}/{S.MEMBERS.name}",
                                          f"members outside the {n_gal} galaxies"))
            if n_sub is not None and not np.array_equal((members >= 0).sum(axis=1), n_sub):
                r.problems.append(Problem(f"{prefix}/{split}/{S.N_SUB.name}",
                                          "does not match the members"))
        if x is not None and len(x) != meta["counts"].get(split):
            r.problems.append(Problem(f"{prefix}/{split}", f"{len(x)} halos, registry says "
                                                           f"{meta['counts'].get(split)}"))
    if readable and trainingsets.version_checksum(r.root, name, version) != meta.get("checksum"):
        r.problems.append(Problem(prefix, "checksum differs from the published one"))
