"""Training sets' one home: layout, registry, publishing, checksums and reading a split.

Layout (names from :mod:`casbi_store.store.schema`)::

    training_sets/<name>/<version>/<split>/{x, n_sub, theta, members, feh_edges, ofe_edges}

A version's registry entry (spec, seed, counts, checksum, binning...) is the attribute
``training_set`` of its group ``training_sets/<name>/<version>``. A version exists for readers
only once that entry is there; stores written before entries moved per version keep theirs in
the ``versions`` attribute of ``training_sets/<name>``, which is still read.

Writing goes through :func:`begin` (a :class:`Draft`) and :func:`Draft.publish`, the only place
that makes a version visible. Under the lock ``set-<name>-<version>`` (:mod:`casbi_store.store.locks`)
the registry is re-read without consolidated metadata: the same identity already published is a
no-op, a different one is refused. Arrays go to a draft group ``_draft_<version>_<token>`` next
to the versions; on a local store the draft, entry included, is renamed to ``<version>`` in one
``os.rename`` (the commit point), then the consolidated metadata is rewritten. A compose killed at
any instant therefore leaves no version, or a whole one; a re-run completes it, and every compose
sweeps the drafts of any version whose composer is gone (:func:`sweep_drafts`).
On object storage (no rename, no lock) the draft is moved and the entry written last.

A set describes itself: each split stores ``feh_edges``/``ofe_edges`` and the entry the store's
binning record (spec, ranges, version), so :func:`binning` never opens the galaxies store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from casbi_store import CasbiError, MissingInput

from . import schema as S
from .binning import Binning
from .locks import LockHeld, is_local, store_lock

log = logging.getLogger(__name__)

LATEST = "latest"
VERSION_PATTERN = re.compile(r"^v\d+$")
DRAFT_PREFIX = "_draft_"
EDGE_FIELDS: tuple[S.Field, ...] = (S.FEH_EDGES, S.OFE_EDGES)


class TrainingSetError(CasbiError, ValueError):
    """A training set, version or split that does not exist or cannot be written."""


class VersionConflict(TrainingSetError):
    """The version is published with another identity: published versions are immutable."""


class SplitNotFound(TrainingSetError, KeyError):
    """No published split at that place (a KeyError too, for dict-like callers)."""

    def __str__(self) -> str:
        return str(self.args[0])


# ---- layout -------------------------------------------------------------------------------------

def set_path(name: str, version: str | None = None, split: str | None = None) -> str:
    """``training_sets/<name>[/<version>[/<split>]]``: the one place the layout is spelled."""
    return "/".join(p for p in (S.TRAINING_SETS, name, version, split) if p)


def version_key(version: str) -> tuple:
    """Natural sort key: ``v2 < v10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", version))


def sorted_versions(versions: Iterable[str]) -> list[str]:
    """Version names in natural order (oldest first)."""
    return sorted(versions, key=version_key)


# ---- the registry -------------------------------------------------------------------------------

def _root(store: str, storage_options: dict | None, consolidated: bool) -> zarr.Group:
    """The store's root group; ``MissingInput`` where there is no store."""
    try:
        if consolidated:
            return zarr.open_consolidated(store, mode="r", zarr_format=S.ZARR_FORMAT,
                                          storage_options=storage_options or None)
        return zarr.open_group(store, mode="r", zarr_format=S.ZARR_FORMAT, use_consolidated=False,
                               storage_options=storage_options or None)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise MissingInput(f"{os.fspath(store)}: no such store ({exc})") from exc


def _entries(group: zarr.Group) -> dict[str, dict]:
    """Published versions under one ``training_sets/<name>`` group, natural order."""
    found = dict(group.attrs.get(S.ATTR_VERSIONS) or {})  # the pre-per-version format
    for version, sub in group.groups():
        entry = sub.attrs.get(S.ATTR_TRAINING_SET)
        if VERSION_PATTERN.match(version) and entry:
            found[version] = dict(entry)
    return {v: found[v] for v in sorted_versions(found)}


def read_registry(store: str | os.PathLike, storage_options: dict | None = None, *,
                  consolidated: bool = True) -> dict[str, dict[str, dict]]:
    """Every published training set: ``{name: {version: entry}}``, versions in natural order.

    Readers (local, HTTP, S3) go through the consolidated metadata; a writer passes
    ``consolidated=False`` to see the store as it is on disk. Sets without a published version
    are left out.
    """
    root = _root(os.fspath(store), storage_options, consolidated)
    try:
        sets = root[S.TRAINING_SETS]
    except KeyError:
        return {}
    out = {}
    for name, group in sorted(sets.groups()):
        entries = _entries(group)
        if entries:
            out[name] = entries
    return out


def versions(store: str | os.PathLike, name: str, storage_options: dict | None = None, *,
             consolidated: bool = True) -> dict[str, dict]:
    """Published versions of one set (version -> entry), natural order; ``{}`` if none."""
    root = _root(os.fspath(store), storage_options, consolidated)
    try:
        return _entries(root[set_path(name)])
    except KeyError:
        return {}


def observation_model(store: str | os.PathLike, name: str, version: str,
                      storage_options: dict | None = None, *, consolidated: bool = True
                      ) -> dict | None:
    """The observation model (``n_obs_min``, ``n_obs_max``, errors, ...) a published set was
    composed with, from its registry entry; None if it has none or is not published."""
    entry = versions(store, name, storage_options, consolidated=consolidated).get(version) or {}
    return (entry.get("source") or {}).get("observation")


def resolve_version(store: str | os.PathLike, name: str, version: str,
                    storage_options: dict | None = None) -> tuple[str, dict]:
    """``(version, entry)`` of a published version, ``"latest"`` meaning the highest."""
    published = versions(store, name, storage_options)
    if not published:
        raise TrainingSetError(f"{os.fspath(store)}: no published training set {name!r}")
    if version == LATEST:
        version = next(reversed(published))
    if version not in published:
        raise TrainingSetError(f"{os.fspath(store)}: training set {name!r} has no published "
                               f"version {version!r} (published: {', '.join(published)})")
    return version, published[version]


def binning(store: str | os.PathLike, name: str, version: str,
            storage_options: dict | None = None) -> Binning:
    """The binning a version was composed with (its ``feh_edges``/``ofe_edges``), read from the
    set's own entry; sets published before entries carried it fall back to the store's binning
    record of the same version (root attributes only, never the galaxies group)."""
    version, entry = resolve_version(store, name, version, storage_options)
    if entry.get("binning"):
        return Binning.from_dict(entry["binning"])
    attrs = _root(os.fspath(store), storage_options, True).attrs
    for record in [attrs.get(S.ATTR_BINNING), *attrs.get(S.ATTR_BINNING_HISTORY, [])]:
        if record and record.get("version") == entry.get("binning_version"):
            return Binning.from_dict(record)
    raise TrainingSetError(f"{os.fspath(store)}: {name}:{version} was composed with binning "
                           f"v{entry.get('binning_version')}, which the store no longer records")


# ---- reading ------------------------------------------------------------------------------------

def _check_split(split: str) -> None:
    if split not in S.SPLITS:
        raise TrainingSetError(f"split must be one of {S.SPLITS}, not {split!r}")


def open_split_group(store: str | os.PathLike, name: str, version: str, split: str,
                     storage_options: dict | None = None) -> zarr.Group:
    """The Zarr group of one split of a published version (local path or fsspec URL)."""
    _check_split(split)
    store = os.fspath(store)
    root = _root(store, storage_options, True)
    path = set_path(name, version, split)
    try:
        published = _entries(root[set_path(name)])
    except KeyError:
        published = {}
    if version not in published:
        raise SplitNotFound(f"{store}: no training-set split {path} (published versions of "
                            f"{name!r}: {', '.join(published) or 'none'})")
    try:
        return root[path]
    except KeyError as exc:
        raise SplitNotFound(f"{store}: no training-set split {path}") from exc


def open_split(store: str | os.PathLike, name: str, version: str, split: str,
               storage_options: dict | None = None) -> xr.Dataset:
    """One split as a lazy ``xarray.Dataset`` (dims halo, block, param, feh_bin, ofe_bin)."""
    open_split_group(store, name, version, split, storage_options)  # published?
    return xr.open_zarr(os.fspath(store), group=set_path(name, version, split), consolidated=True,
                        zarr_format=S.ZARR_FORMAT, storage_options=storage_options or None)


def read_rows(store: str | os.PathLike, name: str, version: str, split: str, rows: np.ndarray,
              fields: Iterable[str] = (S.X.name, S.N_SUB.name, S.THETA.name),
              storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """The given halo rows of a split, field by field (orthogonal selection: only their chunks)."""
    group = open_split_group(store, name, version, split, storage_options)
    rows = np.asarray(rows, dtype=np.int64)
    out = {}
    for key in fields:
        arr = group[key]
        out[key] = np.asarray(arr.get_orthogonal_selection((rows,) + (slice(None),) * (arr.ndim - 1)))
    return out


# ---- checksums ----------------------------------------------------------------------------------

def chunk_digest(block: np.ndarray) -> bytes:
    """SHA-256 of one chunk of halos (its C-ordered bytes)."""
    return hashlib.sha256(np.ascontiguousarray(block).tobytes()).digest()


def combine_digests(digests: dict[str, dict[str, list[bytes]]]) -> str:
    """The version checksum: SHA-256 over, per split and field (halo fields, then the bin edges
    where stored), the chunk digests in order."""
    h = hashlib.sha256()
    for split in S.SPLITS:
        for f in (*S.TRAINING_FIELDS, *S.OPTIONAL_TRAINING_FIELDS, *EDGE_FIELDS):
            if f.name not in digests[split]:
                continue  # sets published before edges were stored with them; optional fields
            h.update(f"{split}/{f.name}".encode())
            for digest in digests[split][f.name]:
                h.update(digest)
    return h.hexdigest()


def split_digests(group: zarr.Group) -> dict[str, list[bytes]]:
    """Chunk digests of one stored split, read back chunk by chunk (bounded memory)."""
    out = {}
    for f in (*S.TRAINING_FIELDS, *S.OPTIONAL_TRAINING_FIELDS):
        if f in S.OPTIONAL_TRAINING_FIELDS and f.name not in group:
            continue
        arr = group[f.name]
        out[f.name] = [chunk_digest(arr[i:i + S.HALO_CHUNK]) for i in range(0, arr.shape[0], S.HALO_CHUNK)]
    for f in EDGE_FIELDS:
        if f.name in group:
            out[f.name] = [chunk_digest(group[f.name][:])]
    return out


def version_checksum(root: zarr.Group, name: str, version: str) -> str:
    """The checksum of a stored version, recomputed from its arrays."""
    return combine_digests({split: split_digests(root[set_path(name, version, split)])
                            for split in S.SPLITS})


# ---- writing ------------------------------------------------------------------------------------

def _fs(store: str, storage_options: dict | None):
    import fsspec

    return fsspec.core.url_to_fs(store, **(storage_options or {}))


def _same(entry: dict, identity: dict) -> bool:
    return all(entry.get(k) == v for k, v in identity.items())


def consolidate(store: str | os.PathLike, storage_options: dict | None = None) -> None:
    """Rewrite the consolidated metadata (what HTTP/S3 readers and the registry see)."""
    target = os.fspath(store)
    if is_local(target) and not storage_options:  # only our group: never an extraction's rows
        from .commit import publish_group

        publish_group(target.removeprefix("file://"), S.TRAINING_SETS)
        return
    if storage_options:
        from zarr.storage import FsspecStore

        target = FsspecStore.from_url(target, storage_options=storage_options, read_only=False)
    with warnings.catch_warnings():  # the store's lock folder is not Zarr, and need not be
        warnings.filterwarnings("ignore", message=r"Object at \.locks is not recognized")
        zarr.consolidate_metadata(target, zarr_format=S.ZARR_FORMAT)


@dataclass
class Draft:
    """An unpublished version being written; arrays go to ``path`` until :meth:`publish`."""

    store: str
    name: str
    version: str
    identity: dict
    binning_record: dict
    storage_options: dict | None = None
    published: dict | None = None  # set when the same identity was already published
    path: str = ""
    digests: dict = field(default_factory=dict)

    def split_path(self, split: str) -> str:
        return f"{self.path}/{split}"

    def with_edges(self, split: str, ds: xr.Dataset) -> xr.Dataset:
        """``ds`` plus the set's bin edges, whose digests join the checksum."""
        b = Binning.from_dict(self.binning_record)
        ds = ds.assign({S.FEH_EDGES.name: (S.DIM_FEH_EDGE, b.feh_edges,
                                           {S.ATTR_UNITS: S.FEH_EDGES.units,
                                            S.ATTR_DESCRIPTION: S.FEH_EDGES.description}),
                        S.OFE_EDGES.name: (S.DIM_OFE_EDGE, b.ofe_edges,
                                           {S.ATTR_UNITS: S.OFE_EDGES.units,
                                            S.ATTR_DESCRIPTION: S.OFE_EDGES.description})})
        self.digests.setdefault(split, {}).update(
            {S.FEH_EDGES.name: [chunk_digest(b.feh_edges)],
             S.OFE_EDGES.name: [chunk_digest(b.ofe_edges)]})
        return ds

    def write_split(self, split: str, ds: xr.Dataset, encoding: dict):
        """The delayed write of one split into the draft (compute it, e.g. with its digests)."""
        _check_split(split)
        return self.with_edges(split, ds).to_zarr(
            self.store, group=self.split_path(split), mode="w", encoding=encoding,
            zarr_format=S.ZARR_FORMAT, consolidated=False, compute=False,
            storage_options=self.storage_options or None)

    def add_digests(self, split: str, digests: dict[str, list[bytes]]) -> None:
        """Chunk digests of the halo fields of a written split."""
        self.digests.setdefault(split, {}).update(digests)

    def rows_written(self, split: str) -> int:
        return zarr.open_array(self.store, path=f"{self.split_path(split)}/{S.X.name}", mode="r",
                               zarr_format=S.ZARR_FORMAT,
                               storage_options=self.storage_options or None).shape[0]

    def checksum(self) -> str:
        return combine_digests(self.digests)

    def publish(self, entry: dict) -> dict:
        """Make the version visible (the only place that does): check-and-set against the
        registry on disk, move the draft into place, write the entry, consolidate.

        ``entry`` gets the identity, the binning record and the checksum added; returns it.
        """
        missing = [f"{split}/{f.name}" for split in S.SPLITS for f in S.TRAINING_FIELDS
                   if f.name not in self.digests.get(split, {})]
        if missing:
            raise TrainingSetError(f"{self.store}: {self.name}:{self.version} cannot be published "
                                   f"without {', '.join(missing)}")
        entry = {**entry, **self.identity, "binning": self.binning_record,
                 "checksum": self.checksum()}
        now = versions(self.store, self.name, self.storage_options, consolidated=False)
        if self.version in now:  # only without a lock (object storage): someone else won
            self._discard()
            return _conflict_or_same(self.store, self.name, self.version, now[self.version],
                                     self.identity)
        final = set_path(self.name, self.version)
        fs, base = _fs(self.store, self.storage_options)
        if is_local(self.store):
            group = zarr.open_group(self.store, path=self.path, mode="a", zarr_format=S.ZARR_FORMAT,
                                    use_consolidated=False)
            group.attrs[S.ATTR_TRAINING_SET] = entry
            os.rename(f"{base}/{self.path}", f"{base}/{final}")  # the commit point
        else:
            fs.invalidate_cache()  # listings cached before the draft's writes would miss files
            for src in fs.find(f"{base}/{self.path}"):
                fs.copy(src, f"{base}/{final}" + src[len(f"{base}/{self.path}"):])
            fs.rm(f"{base}/{self.path}", recursive=True)
            group = zarr.open_group(self.store, path=final, mode="a", zarr_format=S.ZARR_FORMAT,
                                    use_consolidated=False, storage_options=self.storage_options or None)
            group.attrs[S.ATTR_TRAINING_SET] = entry  # the commit point
        consolidate(self.store, self.storage_options)
        log.info("published %s:%s (checksum %s)", self.name, self.version, entry["checksum"][:12])
        self.published = entry
        return entry

    def _discard(self) -> None:
        _remove(self.store, self.path, self.storage_options)


def _remove(store: str, path: str, storage_options: dict | None) -> None:
    fs, base = _fs(store, storage_options)
    target = f"{base}/{path}"
    fs.invalidate_cache()
    if fs.exists(target):
        if is_local(store):
            shutil.rmtree(target, ignore_errors=True)
        else:
            fs.rm(target, recursive=True)


def _conflict_or_same(store: str, name: str, version: str, old: dict, identity: dict) -> dict:
    if _same(old, identity):
        log.info("%s:%s already published with this spec; nothing to do", name, version)
        return old
    raise VersionConflict(
        f"{store}: {name}:{version} is published with a different spec or binning (published "
        f"{ {k: old.get(k) for k in identity} }); published versions are immutable: choose a "
        "new version")


def _clear_unpublished(store: str, name: str, version: str, storage_options: dict | None) -> None:
    """Drafts of this version and an unpublished ``<version>`` group left by a killed writer."""
    try:
        group = zarr.open_group(store, path=set_path(name), mode="r", zarr_format=S.ZARR_FORMAT,
                                use_consolidated=False, storage_options=storage_options or None)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return
    for key in list(group.group_keys()):
        if key == version or key.startswith(f"{DRAFT_PREFIX}{version}_"):
            log.warning("%s: removing %s/%s left by an interrupted compose", store, set_path(name),
                        key)
            _remove(store, set_path(name, key), storage_options)


def sweep_drafts(store: str) -> list[str]:
    """Remove the drafts of every set and version of a local store whose writer is gone (its lock
    ``set-<name>-<version>`` can be taken: free, or stale and broken); return what was removed.
    A draft whose composer still runs is left alone."""
    base = os.fspath(store).removeprefix("file://")
    removed = []
    for draft in sorted(Path(base, S.TRAINING_SETS).glob(f"*/{DRAFT_PREFIX}*")):
        version = draft.name[len(DRAFT_PREFIX):].rsplit("_", 1)[0]
        try:
            with store_lock(base, f"set-{draft.parent.name}-{version}", purpose="sweeping drafts"):
                if draft.exists():
                    shutil.rmtree(draft, ignore_errors=True)
                    removed.append(f"{draft.parent.name}/{draft.name}")
        except LockHeld:
            continue
    if removed:
        log.warning("%s: removed drafts left by interrupted composes: %s", store, ", ".join(removed))
    return removed


@contextmanager
def begin(store: str | os.PathLike, name: str, version: str, identity: dict,
          binning_record: dict, storage_options: dict | None = None) -> Iterator[Draft]:
    """Start writing ``name:version`` under its lock; yields a :class:`Draft`.

    ``identity`` (e.g. spec and binning version) decides sameness: if that version is published
    with the same identity the draft comes with ``published`` set (nothing to write); with a
    different one :class:`VersionConflict`. Another writer of the same version is refused
    (:class:`casbi_store.store.locks.LockHeld`, naming it). A draft not published is removed on exit.
    """
    store = os.fspath(store)
    if not VERSION_PATTERN.match(version):
        raise TrainingSetError(f"version {version!r} must look like v1, v2, ...")
    if is_local(store):
        sweep_drafts(store)
    with store_lock(store, f"set-{name}-{version}", purpose=f"compose {name}:{version}"):
        draft = Draft(store, name, version, identity, binning_record, storage_options,
                      path=set_path(name, f"{DRAFT_PREFIX}{version}_{os.urandom(4).hex()}"))
        now = versions(store, name, storage_options, consolidated=False)
        if version in now:
            draft.published = _conflict_or_same(store, name, version, now[version], identity)
            if version not in versions(store, name, storage_options):
                consolidate(store, storage_options)  # killed after the rename: finish it
            yield draft
            return
        _clear_unpublished(store, name, version, storage_options)
        try:
            yield draft
        finally:
            if draft.published is None:
                _discard_quietly(draft)


def _discard_quietly(draft: Draft) -> None:
    try:
        draft._discard()
    except OSError as exc:  # the next compose of this version clears it
        log.warning("%s: could not remove the draft %s (%s)", draft.store, draft.path, exc)


__all__ = [
    "LATEST", "Draft", "LockHeld", "SplitNotFound", "TrainingSetError", "VersionConflict",
    "begin", "binning", "chunk_digest", "combine_digests", "consolidate", "open_split",
    "open_split_group", "read_registry", "read_rows", "resolve_version", "set_path",
    "sorted_versions", "split_digests", "version_checksum", "version_key", "versions",
]
