"""The Zarr store: reading it as xarray, and committing extraction results to it.

Layout and names come from :mod:`casbi_store.store.schema` (documented in ``docs/STORE.md``).

Nothing written is visible before :meth:`StoreWriter.commit` publishes it
(:mod:`casbi_store.store.commit`); a killed commit is rolled back by the next writer. The star
and histogram chunks are written by chunk tasks (:mod:`casbi_store.store.chunkwrite`, on the
workers), after this module has set the arrays' new shapes; the binning's percentile ranges
come from the chunks' extreme values. Histograms are a pure function of the stars and the
binning, so a rewritten chunk holds the same values for its committed rows.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from casbi_store import CasbiError, InputError

from . import commit
from . import schema as S
from .binning import Binning, BinningSpec, coverage_lines, resolve_binning
from .chunkwrite import (
    ChunkRunner,
    HistogramChunk,
    Ranks,
    merge_digests,
    resolve_ranges,
    star_chunks,
    star_extremes,
    write_histogram_chunk,
    write_star_chunk,
)
from .locks import LOCK_DIR, is_local

log = logging.getLogger(__name__)


class StoreError(CasbiError, RuntimeError):
    """The store is missing, inconsistent or was made with incompatible settings."""


# ---- reading ------------------------------------------------------------------------------------

def open_snapshot(store: str, storage_options: dict | None = None) -> commit.SnapshotStore:
    """One committed state of the store, whatever a writer publishes meanwhile: every group
    opened through it sees the same commit (:class:`casbi_store.store.commit.SnapshotStore`)."""
    from zarr.storage import FsspecStore, LocalStore

    try:
        if is_local(store) and not storage_options:
            root = Path(store.removeprefix("file://"))
            return commit.SnapshotStore.snapshot_of(LocalStore(root, read_only=True), root)
        remote = FsspecStore.from_url(store, storage_options=storage_options or None,
                                      read_only=True)
        return commit.SnapshotStore.snapshot_of(remote)
    except (FileNotFoundError, KeyError, ValueError, OSError) as exc:
        raise StoreError(f"{store}: cannot open as a Zarr store ({exc})") from exc


def _open_group(store: str, group: str, storage_options: dict | None = None,
                snapshot: commit.SnapshotStore | None = None) -> xr.Dataset:
    snapshot = snapshot or open_snapshot(store, storage_options)
    try:
        return xr.open_zarr(snapshot, group=group, consolidated=True, zarr_format=S.ZARR_FORMAT,
                            decode_times=False)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"{store}: no '{group}' group (not a casbi store, or still empty)") from exc
    except ValueError as exc:  # arrays of one group disagree in length
        raise StoreError(f"{store}: group '{group}' is inconsistent ({exc}): the store is damaged "
                         "(`casbi-store validate` lists what)") from exc


def store_attrs(store: str, storage_options: dict | None = None,
                snapshot: commit.SnapshotStore | None = None) -> dict:
    """Root attributes of the store (schema version, binning, provenance...)."""
    snapshot = snapshot or open_snapshot(store, storage_options)
    try:
        root = zarr.open_consolidated(snapshot, mode="r", zarr_format=S.ZARR_FORMAT)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise StoreError(f"{store}: cannot open as a Zarr store ({exc})") from exc
    return dict(root.attrs)


def open_store(path_or_url: str | os.PathLike, storage_options: dict | None = None) -> xr.Dataset:
    """The galaxies table joined with their histograms, lazily, as one ``xarray.Dataset``.

    Dimension ``galaxy`` is indexed by galaxy name (``ds.sel(galaxy="g1.05e10.00512")``); the
    histograms ``counts`` and ``mass_weighted`` have dims ``(galaxy, feh_bin, ofe_bin)`` with bin
    centres as coordinates and ``feh_edges``/``ofe_edges`` as variables. Works for local paths
    and fsspec URLs (``http://``, ``s3://``). Everything in it, loaded now or later, is of the
    one commit that was current when it was opened, while writers extract and compose.
    """
    store = os.fspath(path_or_url)
    snap = open_snapshot(store, storage_options)
    attrs = store_attrs(store, snapshot=snap)
    if attrs.get(S.ATTR_SCHEMA_VERSION) != S.SCHEMA_VERSION:
        raise StoreError(f"{store}: schema version {attrs.get(S.ATTR_SCHEMA_VERSION)} is not "
                         f"{S.SCHEMA_VERSION} (this casbi_store reads version {S.SCHEMA_VERSION})")
    galaxies = _open_group(store, S.GALAXIES, snapshot=snap)
    hist = _open_group(store, S.HISTOGRAMS, snapshot=snap)
    if hist.sizes.get(S.DIM_GALAXY) != galaxies.sizes.get(S.DIM_GALAXY):
        raise StoreError(f"{store}: histograms ({hist.sizes.get(S.DIM_GALAXY)} rows) and galaxies "
                         f"({galaxies.sizes.get(S.DIM_GALAXY)} rows) differ: the store is damaged "
                         "(`casbi-store validate` lists what)")
    hist = hist.drop_vars(S.HIST_NAME.name)
    ds = xr.merge([galaxies, hist], compat="override", combine_attrs="drop_conflicts")
    ds.attrs = {k: attrs[k] for k in (S.ATTR_SCHEMA_VERSION, S.ATTR_BINNING) if k in attrs}
    return ds.set_coords(S.NAME.name).set_index({S.DIM_GALAXY: S.NAME.name})


def load_checked(ds: xr.Dataset, where: str) -> xr.Dataset:
    """``ds.load()``, variable by variable, so a corrupt chunk gives an error naming its array."""
    for name, var in ds.variables.items():
        try:
            var.load()
        except Exception as exc:  # codec errors, truncated or garbage chunk files
            raise StoreError(f"{where}/{name}: unreadable ({type(exc).__name__}: {exc}); the "
                             "store is damaged (`casbi-store validate` lists what)") from exc
    return ds


def open_errors(path_or_url: str | os.PathLike, storage_options: dict | None = None) -> xr.Dataset:
    """The error table: snapshots that failed or were excluded, with kind and message."""
    store = os.fspath(path_or_url)
    return load_checked(_open_group(store, S.ERRORS, storage_options), f"{store}/{S.ERRORS}")


def open_stars(path_or_url: str | os.PathLike, storage_options: dict | None = None) -> xr.Dataset:
    """The ragged per-star arrays (dim ``star``); rows of galaxy k start at its ``star_offset``."""
    return _open_group(os.fspath(path_or_url), S.STARS, storage_options)


def galaxy_stars(path_or_url: str | os.PathLike, name: str) -> xr.Dataset:
    """The stars of one galaxy, by name."""
    store = os.fspath(path_or_url)
    snap = open_snapshot(store)
    gal = _open_group(store, S.GALAXIES, snapshot=snap)
    hits = np.flatnonzero(np.asarray(as_strings(gal[S.NAME.name].values)) == name)
    if hits.size == 0:
        raise InputError(f"{store}: no galaxy named {name!r}")
    k = int(hits[0])
    start = int(gal[S.STAR_OFFSET.name][k])
    stop = start + int(gal[S.N_STAR.name][k])
    stars = _open_group(store, S.STARS, snapshot=snap)
    return stars.isel({S.DIM_STAR: slice(start, stop)}).load()


# ---- writing ------------------------------------------------------------------------------------

def _variable(field: S.Field, dim: str | tuple[str, ...], values) -> xr.Variable:
    dims = (dim,) if isinstance(dim, str) else dim
    if field.dtype == "str":
        data = np.asarray(values, dtype=object)
    else:
        data = np.asarray(values, dtype=field.dtype)
    return xr.Variable(dims, data, attrs={S.ATTR_UNITS: field.units,
                                          S.ATTR_DESCRIPTION: field.description})


def _table(fields: Iterable[S.Field], dim: str, columns: dict) -> xr.Dataset:
    return xr.Dataset({f.name: _variable(f, dim, columns[f.name]) for f in fields})


@dataclass
class GalaxyBatch:
    """Galaxies to append, rows already in final (sorted) order; each galaxy's stars are the
    arrays ``feh``, ``ofe``, ``mass``, ``tform`` of its staged ``.npz`` file."""

    columns: dict[str, list]  # galaxy field name -> values (without star_offset)
    star_files: list[str]  # one per galaxy


def _lazy_variable(field: S.Field, dims: tuple[str, ...], shape: tuple[int, ...],
                   chunks: tuple[int, ...]) -> xr.Variable:
    """A variable whose values chunk tasks write later: xarray writes only its metadata."""
    import dask.array as da

    return xr.Variable(dims, da.zeros(shape, dtype=field.dtype, chunks=chunks),
                       attrs={S.ATTR_UNITS: field.units, S.ATTR_DESCRIPTION: field.description})


class StoreWriter:
    """Commits extraction results to a local Zarr store (format 2, consolidated metadata).

    Use under ``locks.store_lock(path, "store")``. Opening recovers an interrupted commit
    (:func:`casbi_store.store.commit.recover`); nothing written is visible to readers until
    :meth:`commit`, which publishes it atomically.
    """

    def __init__(self, path: str | os.PathLike, extraction: dict, binning_spec: BinningSpec,
                 runner: ChunkRunner | None = None):
        self.path = os.fspath(path)
        # chunk tasks run in worker processes with their own working folder: an absolute path
        self._task_root = os.path.abspath(self.path)
        self.runner = runner or ChunkRunner()
        self._digests: dict[str, dict[str, dict[str, str]]] = {}  # folder -> chunk tasks' digests
        self.extraction = extraction
        self.binning_spec = binning_spec
        check_target(Path(self.path))
        self.recovered = commit.recover(self.path)
        self._zstore = commit.local_store(self.path)
        self._swaps: list[str] = []  # groups rebuilt under .pending, swapped in at commit
        self._root = self._open_root()
        attrs = self._root.attrs
        if S.ATTR_SCHEMA_VERSION not in attrs:
            attrs.update({S.ATTR_SCHEMA_VERSION: S.SCHEMA_VERSION, S.ATTR_EXTRACTION: extraction,
                          S.ATTR_PROVENANCE: [], S.ATTR_BINNING_HISTORY: []})
        elif attrs[S.ATTR_SCHEMA_VERSION] != S.SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {attrs[S.ATTR_SCHEMA_VERSION]}, "
                             f"this casbi_store writes {S.SCHEMA_VERSION}")
        elif _jsonable(attrs[S.ATTR_EXTRACTION]) != _jsonable(extraction):
            raise StoreError(
                f"{self.path} was extracted with {attrs[S.ATTR_EXTRACTION]}, not {extraction}; "
                "mixing settings in one store would make its rows incomparable: use a new store")

    def _open_root(self) -> zarr.Group:
        # Never through .zmetadata: it is the last commit, the writer needs what it has written.
        return zarr.open_group(self._zstore, mode="a", zarr_format=S.ZARR_FORMAT,
                               use_consolidated=False)

    def _target(self, group: str):
        """Where a replaced group is written: in place while uncommitted, else under .pending."""
        if group in commit.committed_groups(self.path):
            if group not in self._swaps:
                self._swaps.append(group)
            return commit.local_store(Path(self.path) / commit.PENDING)
        return self._zstore

    # -- what is there ----------------------------------------------------------------------------
    def _has(self, group: str) -> bool:
        return (Path(self.path) / group / ".zgroup").exists()  # listing warns about .locks

    def _column(self, group: str, name: str) -> np.ndarray:
        if not self._has(group):
            return np.array([])
        return self._root[group][name][:]

    def galaxy_index(self) -> dict[str, str]:
        """name -> fingerprint of committed galaxies."""
        names = as_strings(self._column(S.GALAXIES, S.NAME.name))
        prints = as_strings(self._column(S.GALAXIES, S.FINGERPRINT.name))
        return dict(zip(names, prints, strict=True))

    def error_rows(self) -> dict[str, dict]:
        """path -> error row (as a dict of the error fields)."""
        if not self._has(S.ERRORS):
            return {}
        cols = {f.name: as_strings(self._column(S.ERRORS, f.name)) for f in S.ERROR_FIELDS}
        return {row[S.ERR_PATH.name]: row for row in
                (dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True))}

    def n_galaxies(self) -> int:
        return len(self._column(S.GALAXIES, S.NAME.name))

    def _committed_star_rows(self) -> int:
        offsets = self._column(S.GALAXIES, S.STAR_OFFSET.name)
        if offsets.size == 0:
            return 0
        return int(offsets[-1] + self._column(S.GALAXIES, S.N_STAR.name)[-1])

    def repair(self) -> list[str]:
        """What opening the store did to undo or finish an interrupted commit."""
        if self.recovered:
            log.warning("repaired %s: %s", self.path, "; ".join(self.recovered))
        return self.recovered

    # -- commit -----------------------------------------------------------------------------------
    def append_galaxies(self, batches: Iterable[GalaxyBatch]) -> int:
        """Append galaxies past the committed rows (stars, then rows); return how many.

        The star chunks are written by chunk tasks (:mod:`casbi_store.store.chunkwrite`) from
        the staged files; here only the arrays' metadata (their new length) and the galaxy
        rows are written."""
        added = 0
        for batch in batches:
            n = len(batch.columns[S.NAME.name])
            if n == 0:
                continue
            offset = self._committed_star_rows()
            n_star = np.asarray(batch.columns[S.N_STAR.name], dtype=np.int64)
            self._grow(S.STARS, S.DIM_STAR, offset + int(n_star.sum()),
                       {f: (S.STAR_CHUNK,) for f in S.STAR_FIELDS})
            chunks = star_chunks(self._task_root, offset, n_star, batch.star_files)
            self._note_digests("", merge_digests(self.runner.map(write_star_chunk, chunks)))
            starts = offset + np.concatenate([[0], np.cumsum(n_star)[:-1]])
            columns = {**batch.columns, S.STAR_OFFSET.name: starts}
            rows = _table(S.GALAXY_FIELDS, S.DIM_GALAXY, columns)
            self._write(rows, S.GALAXIES, S.DIM_GALAXY,
                        {f.name: (S.TABLE_CHUNK,) for f in S.GALAXY_FIELDS})
            added += n
        return added

    def _note_digests(self, folder: str, digests: dict[str, dict[str, str]]) -> None:
        mine = self._digests.setdefault(folder, {})
        for path, chunks in digests.items():
            mine.setdefault(path, {}).update(chunks)

    def _grow(self, group: str, dim: str, length: int, fields: dict, target=None,
              shape: tuple[int, ...] = (), dims: tuple[str, ...] = ()) -> None:
        """Give the arrays ``fields`` (field -> chunks) of ``group`` the length ``length``
        along ``dim`` (their metadata only: chunk tasks write the values). A group that does
        not exist (or is empty) is created as xarray would write it."""
        target = target or self._zstore
        root = zarr.open_group(target, mode="a", zarr_format=S.ZARR_FORMAT, use_consolidated=False)
        first = next(iter(fields)).name
        if group in root and first in root[group] and root[group][first].shape[0]:
            for f in fields:
                arr = root[group][f.name]
                arr.resize((length, *arr.shape[1:]))
        else:
            dims = (dim, *dims)
            ds = xr.Dataset({f.name: _lazy_variable(f, dims, (length, *shape), c)
                             for f, c in fields.items()})
            encoding = {f.name: {"chunks": c} for f, c in fields.items()}
            ds.to_zarr(target, group=group, mode="w", encoding=encoding, write_empty_chunks=True,
                       zarr_format=S.ZARR_FORMAT, consolidated=False, compute=False)
        self._root = self._open_root()

    def _write(self, ds: xr.Dataset, group: str, dim: str, chunks: dict) -> None:
        if self._has(group) and ds.sizes[dim] and self._root[group][next(iter(ds.data_vars))].shape[0]:
            ds.to_zarr(self._zstore, group=group, mode="a", append_dim=dim, write_empty_chunks=True,
                       zarr_format=S.ZARR_FORMAT, consolidated=False)
        else:
            encoding = {name: {"chunks": c} for name, c in chunks.items() if name in ds}
            ds.to_zarr(self._zstore, group=group, mode="w", encoding=encoding,
                       write_empty_chunks=True, zarr_format=S.ZARR_FORMAT, consolidated=False)
        self._root = self._open_root()

    def write_errors(self, rows: dict[str, dict]) -> None:
        """Replace the error table with ``rows`` (path -> row), sorted by path."""
        rows = {k: {f.name: str(v[f.name]) for f in S.ERROR_FIELDS} for k, v in rows.items()}
        if self._has(S.ERRORS) and rows == self.error_rows():
            return
        ordered = [rows[k] for k in sorted(rows)]
        # xarray writes an empty object column as float64: write one blank row, then drop it
        columns = {f.name: [r[f.name] for r in ordered] or [""] for f in S.ERROR_FIELDS}
        table = _table(S.ERROR_FIELDS, S.DIM_ERROR, columns)
        encoding = {f.name: {"chunks": (S.TABLE_CHUNK,)} for f in S.ERROR_FIELDS}
        target = self._target(S.ERRORS)
        table.to_zarr(target, group=S.ERRORS, mode="w", encoding=encoding,
                      write_empty_chunks=True, zarr_format=S.ZARR_FORMAT, consolidated=False)
        if not ordered:
            group = zarr.open_group(target, path=S.ERRORS, mode="a", zarr_format=S.ZARR_FORMAT,
                                    use_consolidated=False)
            for f in S.ERROR_FIELDS:
                group[f.name].resize((0,))
        self._root = self._open_root()

    # -- binning and histograms -------------------------------------------------------------------
    def _resolve_binning(self) -> Binning:
        """The binning of every stored star: percentile ranges from a tree reduction of each
        star chunk's extreme values (chunk tasks), the same numbers as ``np.percentile``."""
        if self.binning_spec.method == "fixed":
            return resolve_binning(self.binning_spec, [], [])
        n = self._root[S.STARS][S.FEH.name].shape[0] if self._has(S.STARS) else 0
        if n == 0:
            raise ValueError("cannot derive percentile ranges from zero stars")
        rows = [(self._task_root, s0, min(s0 + S.STAR_CHUNK, n))
                for s0 in range(0, n, S.STAR_CHUNK)]
        part = self.runner.extremes(star_extremes, rows, Ranks.of(n, self.binning_spec.percentiles))
        return resolve_ranges(self.binning_spec, part)

    def update_binning(self, new_rows: int = 0) -> dict:
        """Bring histograms in line with the stars.

        If the ranges are unchanged, only the ``new_rows`` last galaxies get histograms appended;
        otherwise the binning version is bumped and every histogram is rebuilt from the stars
        (under ``.pending``, swapped in at commit).
        """
        binning = self._resolve_binning()
        attrs = self._root.attrs
        current = attrs.get(S.ATTR_BINNING)
        same = current is not None and Binning.from_dict(current) == binning
        if same and self._has(S.HISTOGRAMS):
            hist = self._root[S.HISTOGRAMS]
            rows = hist[S.COUNTS.name].shape[0]
            if (hist.attrs.get(S.ATTR_BINNING_VERSION) == current["version"]
                    and rows == self.n_galaxies() - new_rows
                    and S.N_STAR_OUTSIDE.name in hist):  # older stores: rebuilt, to add it
                self._write_histograms(binning, current["version"], start=rows)
                return current
        if current is None:
            version = 1
        elif same:
            version = current["version"]
        else:
            version = current["version"] + 1
            attrs[S.ATTR_BINNING_HISTORY] = [*attrs.get(S.ATTR_BINNING_HISTORY, []), current]
        record = {**binning.to_dict(), "version": version}
        attrs[S.ATTR_BINNING] = record
        self._write_histograms(binning, version, start=0)
        return record

    def _write_histograms(self, binning: Binning, version: int, start: int) -> None:
        """Histogram rows ``start:`` from the stars: the 64x64 chunks by chunk tasks (the
        chunk holding row ``start`` is rebuilt whole, its earlier rows to the same values),
        names, stars outside, edges and centres here. ``start`` 0 rebuilds the group (under
        ``.pending`` once committed)."""
        gal = self._root[S.GALAXIES]
        names = gal[S.NAME.name][:]
        offsets = gal[S.STAR_OFFSET.name][:]
        n_star = gal[S.N_STAR.name][:]
        n_gal = len(names)
        target = self._zstore if start else self._target(S.HISTOGRAMS)
        folder = "" if target is self._zstore else commit.PENDING
        nb = binning.spec.n_bins
        dims = (S.DIM_GALAXY, S.DIM_FEH_BIN, S.DIM_OFE_BIN)
        fields = {S.COUNTS: (S.HISTOGRAM_CHUNK, nb, nb), S.MASS_WEIGHTED: (S.HISTOGRAM_CHUNK, nb, nb),
                  S.N_STAR_OUTSIDE: (S.TABLE_CHUNK,)}
        if start:
            self._grow(S.HISTOGRAMS, S.DIM_GALAXY, n_gal, {S.HIST_NAME: None, **fields})
        else:
            self._create_histograms(target, binning, version, names, fields, dims)
        first = start // S.HISTOGRAM_CHUNK * S.HISTOGRAM_CHUNK
        chunks = [HistogramChunk(self._task_root, os.path.join(self._task_root, folder), g0,
                                 min(g0 + S.HISTOGRAM_CHUNK, n_gal), int(offsets[g0]),
                                 tuple(int(x) for x in n_star[g0:g0 + S.HISTOGRAM_CHUNK]),
                                 binning.to_dict())
                  for g0 in range(first, n_gal, S.HISTOGRAM_CHUNK)]
        results = self.runner.map(write_histogram_chunk, chunks)
        self._note_digests(folder, merge_digests(r[0] for r in results))
        outside = np.concatenate([r[1] for r in results]) if results else np.zeros(0, np.int64)
        hist = zarr.open_group(target, path=S.HISTOGRAMS, mode="a", zarr_format=S.ZARR_FORMAT,
                               use_consolidated=False)
        hist[S.N_STAR_OUTSIDE.name][first:n_gal] = outside.astype(S.N_STAR_OUTSIDE.dtype)
        if start:
            hist[S.HIST_NAME.name][start:n_gal] = np.asarray(as_strings(names[start:]),
                                                             dtype=object)
        self._root = self._open_root()

    def _create_histograms(self, target, binning: Binning, version: int, names, fields: dict,
                           dims: tuple[str, ...]) -> None:
        """The histograms group's metadata, names, edges and centres, as xarray writes them;
        counts, mass-weighted counts and stars outside are written by the chunk tasks."""
        n_gal = len(names)
        nb = binning.spec.n_bins
        block = xr.Dataset({
            S.COUNTS.name: _lazy_variable(S.COUNTS, dims, (n_gal, nb, nb), fields[S.COUNTS]),
            S.MASS_WEIGHTED.name: _lazy_variable(S.MASS_WEIGHTED, dims, (n_gal, nb, nb),
                                                 fields[S.MASS_WEIGHTED]),
            S.HIST_NAME.name: _variable(S.HIST_NAME, S.DIM_GALAXY, names),
            S.N_STAR_OUTSIDE.name: _lazy_variable(S.N_STAR_OUTSIDE, (S.DIM_GALAXY,), (n_gal,),
                                                  fields[S.N_STAR_OUTSIDE]),
        })
        fe, of = binning.feh_edges, binning.ofe_edges
        block = block.assign_coords({
            S.FEH_CENTERS.name: _variable(S.FEH_CENTERS, S.DIM_FEH_BIN, (fe[1:] + fe[:-1]) / 2),
            S.OFE_CENTERS.name: _variable(S.OFE_CENTERS, S.DIM_OFE_BIN, (of[1:] + of[:-1]) / 2),
        })
        block[S.FEH_EDGES.name] = _variable(S.FEH_EDGES, S.DIM_FEH_EDGE, fe)
        block[S.OFE_EDGES.name] = _variable(S.OFE_EDGES, S.DIM_OFE_EDGE, of)
        block.attrs[S.ATTR_BINNING_VERSION] = version
        encoding = {f.name: {"chunks": c} for f, c in fields.items()}
        encoding[S.HIST_NAME.name] = {"chunks": (S.TABLE_CHUNK,)}
        block.to_zarr(target, group=S.HISTOGRAMS, mode="w", encoding=encoding,
                      write_empty_chunks=True, zarr_format=S.ZARR_FORMAT, consolidated=False,
                      compute=False)

    def binning_current(self) -> bool:
        """True if the histograms were built with what the binning spec gives for these stars."""
        current = self._root.attrs.get(S.ATTR_BINNING)
        return current is not None and Binning.from_dict(current) == self._resolve_binning()

    def binning_version(self) -> int:
        """Version of the binning the histograms were last built with."""
        return self._root.attrs[S.ATTR_BINNING]["version"]

    # -- publishing -------------------------------------------------------------------------------
    def commit(self, record: dict) -> None:
        """Add the run's provenance ``record`` and publish everything written, atomically."""
        attrs = self._root.attrs
        attrs[S.ATTR_PROVENANCE] = [*attrs.get(S.ATTR_PROVENANCE, []), _jsonable(record)]
        commit.publish(self.path, self._swaps, digests=self._digests)
        self._swaps = []
        self._digests = {}


def check_target(path: Path) -> None:
    """Refuse to write into a file, or into a folder that holds something else than a store."""
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path}: is a file, not a store folder")
    if not path.is_dir() or (path / commit.ZMETADATA).exists() or (path / ".zgroup").exists():
        return
    foreign = [p.name for p in path.iterdir() if p.name not in (LOCK_DIR, *commit.OWNED_GROUPS)]
    if foreign:
        raise StoreError(f"{path}: folder holds {sorted(foreign)[:5]} and is not a casbi store; "
                         "refusing to write into it (give a new or empty folder)")


def as_strings(values) -> list[str]:
    """Zarr/xarray give numpy StringDType or object arrays; plain Python strings either way."""
    return [str(v) for v in np.asarray(values, dtype=object)]


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def stars_outside(path_or_url: str | os.PathLike, storage_options: dict | None = None
                  ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, n_star, n_star_outside) of every galaxy: how many of its kept stars the current
    binning leaves out of its histogram. Stores written before ``n_star_outside`` was stored
    give ``n_star - counts.sum()``, the same number (reading every histogram). Read with zarr,
    not dask: an extraction's summary calls it, and a run without a cluster imports no dask
    scheduler."""
    store = os.fspath(path_or_url)
    try:
        root = zarr.open_consolidated(open_snapshot(store, storage_options), mode="r",
                                      zarr_format=S.ZARR_FORMAT)  # one committed state
        gal, hist = root[S.GALAXIES], root[S.HISTOGRAMS]
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise StoreError(f"{store}: no galaxies ({exc})") from exc

    def read(group: zarr.Group, name: str) -> np.ndarray:
        try:
            return group[name][...]
        except Exception as exc:  # codec errors, truncated or garbage chunk files
            raise StoreError(f"{store}/{group.path}/{name}: unreadable ({type(exc).__name__}: "
                             f"{exc}); the store is damaged (`casbi-store validate` lists what)"
                             ) from exc

    n_star = read(gal, S.N_STAR.name).astype(np.int64)
    if S.N_STAR_OUTSIDE.name in hist:
        outside = read(hist, S.N_STAR_OUTSIDE.name).astype(np.int64)
    else:
        outside = n_star - read(hist, S.COUNTS.name).sum(axis=(1, 2), dtype=np.int64)
    return as_strings(read(gal, S.NAME.name)), n_star, outside


def coverage_summary(path_or_url: str | os.PathLike, storage_options: dict | None = None,
                     width: int = 13) -> list[str]:
    """The lines a summary gives about stars outside the binning (``binning.coverage_lines``);
    none for a store without galaxies."""
    try:
        return coverage_lines(*stars_outside(path_or_url, storage_options), width=width)
    except StoreError as exc:  # no galaxies yet; a damaged store is validate's to list
        if "unreadable" in str(exc):
            raise
        return []


def describe_store(path_or_url: str | os.PathLike, storage_options: dict | None = None) -> str:
    """A readable summary: galaxies, simulations, ranges, binning versions, errors, runs."""
    store = os.fspath(path_or_url)
    snap = open_snapshot(store, storage_options)
    attrs = store_attrs(store, snapshot=snap)
    lines = [f"store {store}  (schema v{attrs.get(S.ATTR_SCHEMA_VERSION)})"]
    try:
        gal = load_checked(_open_group(store, S.GALAXIES, snapshot=snap)[
            [S.SIMULATION.name, S.MSTAR.name, S.MDM.name, S.TIME.name, S.N_STAR.name]],
            f"{store}/{S.GALAXIES}")
    except StoreError as exc:
        if "unreadable" in str(exc):
            raise
        gal = None
    if gal is not None and gal.sizes[S.DIM_GALAXY]:
        sims = sorted(set(as_strings(gal[S.SIMULATION.name].values)))
        lines += [
            f"galaxies     {gal.sizes[S.DIM_GALAXY]} from {len(sims)} simulations, "
            f"{int(gal[S.N_STAR.name].sum()):,} stars",
            f"  M*         {float(gal[S.MSTAR.name].min()):.3g} .. "
            f"{float(gal[S.MSTAR.name].max()):.3g} Msun",
            f"  M_dm       {float(gal[S.MDM.name].min()):.3g} .. "
            f"{float(gal[S.MDM.name].max()):.3g} Msun",
            f"  time       {float(gal[S.TIME.name].min()):.2f} .. "
            f"{float(gal[S.TIME.name].max()):.2f} Gyr",
        ]
    else:
        lines.append("galaxies     none")
    binning = attrs.get(S.ATTR_BINNING)
    if binning:
        lines.append(
            f"binning      v{binning['version']} ({binning['spec']['method']}, "
            f"{binning['spec']['n_bins']}x{binning['spec']['n_bins']}): "
            f"[Fe/H] {binning['feh_range'][0]:.3f} .. {binning['feh_range'][1]:.3f}, "
            f"[O/Fe] {binning['ofe_range'][0]:.3f} .. {binning['ofe_range'][1]:.3f}")
        for old in attrs.get(S.ATTR_BINNING_HISTORY, []):
            lines.append(f"  earlier    v{old['version']}: [Fe/H] {old['feh_range']}, "
                         f"[O/Fe] {old['ofe_range']}")
        lines += coverage_summary(store, storage_options)
    try:
        err = open_errors(store, storage_options)
        kinds = as_strings(err[S.ERR_KIND.name].values)
        status = as_strings(err[S.ERR_STATUS.name].values)
        names = as_strings(err[S.ERR_NAME.name].values)
        lines.append(f"not used     {len(kinds)} snapshots "
                     f"({status.count('failed')} failed, {status.count('excluded')} excluded)")
        for name, st, kind in zip(names, status, kinds, strict=True):
            lines.append(f"  {st:<9}  {name:<28} {kind}")
    except StoreError as exc:
        if "unreadable" in str(exc):
            raise
    from .trainingsets import read_registry

    for name, published in read_registry(store, storage_options).items():
        for version, meta in published.items():
            counts = ", ".join(f"{k} {v}" for k, v in meta["counts"].items())
            spec = meta["spec"]
            lines.append(f"training set {name}:{version}  {spec['scheme']}, split by "
                         f"{spec['split_by']}, seed {meta['seed']}, binning "
                         f"v{meta['binning_version']}: {counts}")
    runs = attrs.get(S.ATTR_PROVENANCE, [])
    for run in runs[-5:]:
        lines.append(f"run          {run.get('time_utc')} {run.get('action')}: ok {run.get('ok')}, "
                     f"excluded {run.get('excluded')}, failed {run.get('failed')}, "
                     f"skipped {run.get('skipped')} in {run.get('seconds')} s")
    return "\n".join(lines)
