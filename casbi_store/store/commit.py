"""Atomic commits of a local Zarr v2 store: what a reader sees changes in one ``os.replace``.

The committed state of the store is its consolidated metadata (``.zmetadata``): every array's
shape and every attribute. Readers open with ``consolidated=True`` and so never see rows past a
committed shape. A commit therefore

1. writes new rows past the committed length of each array (chunk files are written whole and
   atomically by zarr, so a rewritten last chunk holds the committed rows either way) and new
   attributes into the on-disk ``.zarray``/``.zattrs``;
2. builds groups that are *replaced* (the error table, histograms rebuilt for a new binning) in
   full under ``.pending/<group>``, invisible to readers;
3. publishes: without replaced groups, one atomic write of ``.zmetadata`` is the commit point;
   with them, one atomic write of the commit record ``.commit.json`` (the new consolidated
   metadata and the groups to swap) is the commit point, after which the swaps and
   ``.zmetadata`` are applied; applying is idempotent, so an interrupted one is rolled forward.

:func:`recover` (run by every writer under the store lock before it writes, and by local readers
that find a commit record) rolls an interrupted commit forward if its record exists, and
otherwise back to ``.zmetadata``: on-disk metadata is restored, arrays and groups unknown to it
are removed, chunks past a committed shape are deleted. Training sets are left alone (composing
has its own protocol: a version is listed only once its registry entry is published).

Fault injection for tests: with ``CASBI_STORE_KILL_AT_WRITE=N`` the writing process SIGKILLs
itself at its N-th write (chunk, metadata, rename or delete); ``CASBI_STORE_COUNT_WRITES=FILE``
records how many writes a run made.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.storage import LocalStore, WrapperStore

from . import schema as S
from .atomic import atomic_write_text

ZMETADATA = ".zmetadata"
COMMIT_RECORD = ".commit.json"
PENDING = ".pending"
TRASH = ".trash"  # superseded groups before generations were retained (removed when found)
RETAINED = ".retained"  # superseded generations of replaced groups, for readers of older commits
GENERATION_FILE = ".generation"
GENERATIONS_KEY = "casbi_generations"  # in .zmetadata: group -> generation of this commit
RETAIN_SECONDS = 24 * 3600.0  # how long a reader may keep reading a superseded commit
META_FILES = (".zgroup", ".zarray", ".zattrs")
# Top-level entries recovery may remove or rewrite: the extraction's groups and bookkeeping only.
OWNED_GROUPS = (S.GALAXIES, S.STARS, S.HISTOGRAMS, S.ERRORS)
METADATA_LOCK = "metadata"
METADATA_WAIT = 120.0  # seconds a writer waits for another's .zmetadata update (milliseconds long)
KILL_ENV = "CASBI_STORE_KILL_AT_WRITE"
COUNT_ENV = "CASBI_STORE_COUNT_WRITES"
LOG_ENV = "CASBI_STORE_LOG_WRITES"

_writes = 0
_written: dict[str, set[str]] = {}  # store folder -> keys written since its last publish
DIGESTS_KEY = "casbi_digests"  # in .zmetadata: array path -> chunk key -> digest of its values


class RecoveryError(RuntimeError):
    """The store's committed metadata cannot be read, so recovery cannot decide what to keep."""


def write_point(what: str = "") -> None:
    """Count one write (``what``: its key or file); the test hook kills the process at the chosen
    one, and ``CASBI_STORE_LOG_WRITES=FILE`` lists them (number and key, one a line)."""
    global _writes
    _writes += 1
    if (count_file := os.environ.get(COUNT_ENV)):
        Path(count_file).write_text(str(_writes))
    if (log_file := os.environ.get(LOG_ENV)):
        with open(log_file, "a") as f:
            f.write(f"{_writes} {what}\n")
    if os.environ.get(KILL_ENV) == str(_writes):
        os.kill(os.getpid(), signal.SIGKILL)


class CountedStore(WrapperStore):
    """A store whose every write and delete is a :func:`write_point`, and whose written keys are
    remembered until the next :func:`publish` digests them."""

    def _record(self, key: str) -> None:
        _written.setdefault(os.path.abspath(self._store.root), set()).add(key)

    async def set(self, key, value) -> None:
        write_point(key)
        self._record(key)
        await super().set(key, value)

    async def set_if_not_exists(self, key, value) -> None:
        write_point(key)
        self._record(key)
        await super().set_if_not_exists(key, value)

    async def delete(self, key) -> None:
        if await self.exists(key):  # deleting nothing is not a write
            write_point(f"delete {key}")
        await super().delete(key)

    async def delete_dir(self, prefix) -> None:
        if not await self.is_empty(prefix):
            write_point(f"delete {prefix}/")
        await super().delete_dir(prefix)


class UnrecordedStore(CountedStore):
    """A :class:`CountedStore` whose writes are not remembered for :func:`publish`: a chunk
    task's, which returns its chunk's digest itself."""

    def _record(self, key: str) -> None:
        pass


def local_store(path: str | os.PathLike, record: bool = True) -> Store:
    """A writable zarr store of the folder ``path`` whose writes are counted write points (and,
    unless ``record`` is false, remembered until :func:`publish` digests them)."""
    return (CountedStore if record else UnrecordedStore)(LocalStore(os.fspath(path)))


def _atomic_json(path: Path, obj: dict) -> None:
    write_point(path.name)
    atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=True))


def committed(path: str | os.PathLike) -> dict | None:
    """The committed metadata (key -> JSON) of a store, or None if nothing is committed yet."""
    zmeta = Path(path) / ZMETADATA
    if not zmeta.exists():
        return None
    try:
        meta = json.loads(zmeta.read_text())["metadata"]
    except (OSError, ValueError, KeyError) as exc:
        raise RecoveryError(f"{zmeta}: unreadable consolidated metadata ({exc})") from exc
    return {k: _plain(k, v) for k, v in meta.items()}


def _plain(key: str, value: dict) -> dict:
    """Metadata as a Zarr v2 file holds it: zarr-python's ``consolidate_metadata`` adds an inline
    ``consolidated_metadata`` to each group's entry, which must never be written to a .zgroup
    (zarr would then look children up in it, and find none)."""
    if key.endswith(".zgroup") and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "consolidated_metadata"}
    return value


def on_disk_metadata(root: Path) -> dict:
    """key -> JSON of every ``.zgroup``/``.zarray``/``.zattrs`` under ``root`` (hidden folders
    skipped), keys relative to ``root`` as in ``.zmetadata``."""
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(folder).relative_to(root)
        for name in META_FILES:
            if name in files:
                key = (rel / name).as_posix().removeprefix("./")
                out[key] = _plain(key, json.loads((Path(folder) / name).read_text()))
    return out


def _top(key: str) -> str:
    return key.split("/", 1)[0] if "/" in key else ""


def _new_metadata(root: Path, swaps: list[str]) -> dict:
    """What ``.zmetadata`` will say after the commit: the extraction's groups and the root as on
    disk (replaced groups as staged under ``.pending``), everything else as committed."""
    meta = {k: v for k, v in (committed(root) or {}).items()
            if _top(k) not in OWNED_GROUPS and _top(k) != ""}
    for key, value in on_disk_metadata(root).items():
        top = _top(key)
        if top == "" or (top in OWNED_GROUPS and top not in swaps):
            meta[key] = value
    for group in swaps:
        for key, value in on_disk_metadata(root / PENDING / group).items():
            meta[f"{group}/{key}"] = value
    return meta


def block_digest(values: np.ndarray) -> str:
    """Digest of one chunk's values within the array's shape (decoded, so a chunk rewritten
    with the same rows, or with rows past the shape, digests the same)."""
    if values.dtype.kind in "OTU":
        data = "\x00".join(str(v) for v in values.ravel()).encode()
    else:
        data = np.ascontiguousarray(values).tobytes()
    return hashlib.blake2b(data + repr(values.shape).encode(), digest_size=16).hexdigest()


def chunk_regions(shape: tuple[int, ...], chunks: tuple[int, ...], sep: str = "."
                  ) -> dict[str, tuple[slice, ...]]:
    """Chunk key (as Zarr v2 names the file) -> the region of the array it holds."""
    if not shape or 0 in shape:
        return {}
    out = {}
    for idx in itertools.product(*(range(-(-n // c)) for n, c in zip(shape, chunks, strict=True))):
        out[sep.join(map(str, idx))] = tuple(slice(i * c, min((i + 1) * c, n))
                                             for i, c, n in zip(idx, chunks, shape, strict=True))
    return out


def committed_digests(root: Path) -> dict[str, dict[str, str]]:
    """The chunk digests recorded by the last commit ({} for stores written before digests)."""
    try:
        return json.loads((root / ZMETADATA).read_text()).get(DIGESTS_KEY) or {}
    except (OSError, ValueError):
        return {}


def _new_digests(root: Path, meta: dict, swaps: list[str],
                 given: dict[str, dict[str, dict[str, str]]] | None = None
                 ) -> dict[str, dict[str, str]]:
    """Chunk digests of every array of the extraction's groups after this commit: the digests
    ``given`` by the chunk tasks that wrote them (folder -> array path -> chunk key), chunks
    written here since the last commit (and any without a digest) read back and digested, the
    rest kept."""
    from zarr.storage import LocalStore

    base = committed_digests(root)
    written = {folder: _written.pop(os.path.abspath(root / folder), set()) for folder in ("", PENDING)}
    out = {}
    for key, zarray in sorted(meta.items()):
        group = _top(key)
        if not key.endswith("/.zarray") or group not in OWNED_GROUPS:
            continue
        path = key.removesuffix("/.zarray")
        folder = PENDING if group in swaps else ""
        old = {} if group in swaps else base.get(path, {})
        regions = chunk_regions(tuple(zarray["shape"]), tuple(zarray["chunks"]),
                                zarray.get("dimension_separator") or ".")
        known = (given or {}).get(folder, {}).get(path, {})
        todo = [k for k in regions if k not in known
                and (k not in old or f"{path}/{k}" in written[folder])]
        digests = {k: known.get(k, old.get(k)) for k in regions if k not in todo}
        if todo:
            arr = zarr.open_array(LocalStore(root / folder, read_only=True), path=path, mode="r",
                                  zarr_format=2)
            digests.update({k: block_digest(np.asarray(arr[regions[k]])) for k in todo})
        out[path] = dict(sorted(digests.items()))
    return out


def _metadata_lock(root: Path):
    """The short lock every writer of ``.zmetadata`` holds for its read-modify-write: the
    extraction's commit and a compose publishing a training-set version (which holds no store
    lock) must not interleave, or one would drop the other's entries. A holder that died inside
    it is broken by the next writer (:mod:`casbi_store.store.locks`)."""
    from .locks import store_lock

    return store_lock(root, METADATA_LOCK, purpose="updating .zmetadata", wait=METADATA_WAIT)


def publish(path: str | os.PathLike, swaps: list[str] = (),
            digests: dict[str, dict[str, dict[str, str]]] | None = None) -> None:
    """Make everything written since the last commit visible to readers, atomically.

    ``digests``: the digests of chunks written by chunk tasks (folder ``""`` or ``.pending``
    -> array path -> chunk key), which are then not read back here."""
    root = Path(path)
    with _metadata_lock(root):
        generations = _stamp_generations(root, list(swaps))
        meta = _new_metadata(root, list(swaps))
        extra = {DIGESTS_KEY: _new_digests(root, meta, list(swaps), digests),
                 GENERATIONS_KEY: generations}
        if swaps:
            _atomic_json(root / COMMIT_RECORD, {"metadata": meta, "swaps": list(swaps), **extra})
            _apply(root)  # (the record is the commit point)
        else:
            _atomic_json(root / ZMETADATA, {"metadata": meta, "zarr_consolidated_format": 1,
                                            **extra})


def publish_group(path: str | os.PathLike, group: str) -> None:
    """Make one top-level group (``training_sets``) visible as it is on disk, keeping every other
    entry of ``.zmetadata`` as committed: composing never publishes an extraction's uncommitted
    rows, whatever runs beside it."""
    root = Path(path)
    with _metadata_lock(root):
        base = committed(root)
        if base is None:
            base = on_disk_metadata(root)
        meta = {k: v for k, v in base.items() if _top(k) != group}
        if (root / group).is_dir():
            for key, value in on_disk_metadata(root / group).items():
                meta[f"{group}/{key}"] = value
        _atomic_json(root / ZMETADATA, {"metadata": meta, "zarr_consolidated_format": 1,
                                        DIGESTS_KEY: committed_digests(root),
                                        GENERATIONS_KEY: committed_generations(root)})


def generation_path(root: Path, group: str, generation: int) -> Path:
    """Where generation ``generation`` of a replaced group is kept after it is superseded."""
    return root / RETAINED / f"{group}.{generation}"


def live_generation(root: Path, group: str) -> int | None:
    """The generation of the group now at ``root/group`` (its marker file; 0 for groups written
    before generations), None while a swap has moved it away."""
    try:
        return int((root / group / GENERATION_FILE).read_text())
    except FileNotFoundError:
        return 0 if (root / group).is_dir() else None
    except ValueError:
        return 0


def _stamp_generations(root: Path, swaps: list[str]) -> dict[str, int]:
    """The generation of every extraction group after this commit: a staged group gets the one
    after the live one, as a marker file in its folder (what a reader checks a chunk against)."""
    out = {}
    for group in OWNED_GROUPS:
        if group in swaps:
            out[group] = (live_generation(root, group) or 0) + 1
            write_point(f"{PENDING}/{group}/{GENERATION_FILE}")
            (root / PENDING / group / GENERATION_FILE).write_text(str(out[group]))
        elif (root / group).is_dir():
            out[group] = live_generation(root, group) or 0
    return out


def committed_generations(root: Path) -> dict[str, int]:
    try:
        return json.loads((root / ZMETADATA).read_text()).get(GENERATIONS_KEY) or {}
    except (OSError, ValueError):
        return {}


def _apply(root: Path) -> None:
    """Carry out a commit record (idempotent: safe to repeat after a kill at any step).

    A replaced group is not deleted: it moves to ``.retained/<group>.<generation>``, where readers
    that opened the previous commit keep reading it (:class:`SnapshotStore`), and is removed
    :data:`RETAIN_SECONDS` later by a later commit.
    """
    record = json.loads((root / COMMIT_RECORD).read_text())
    for group in record["swaps"]:
        staged, live = root / PENDING / group, root / group
        if staged.exists():
            if live.exists():
                old = generation_path(root, group, live_generation(root, group) or 0)
                if old.exists():  # a generation that was never published (cannot be read)
                    _rmtree(old)
                old.parent.mkdir(exist_ok=True)
                write_point(f"rename {group} {old.relative_to(root)}")
                os.rename(live, old)
                os.utime(old)  # when it was superseded: its retention starts now
            write_point(f"rename {PENDING}/{group} {group}")
            os.rename(staged, live)
    _atomic_json(root / ZMETADATA, {"metadata": record["metadata"], "zarr_consolidated_format": 1,
                                    DIGESTS_KEY: record.get(DIGESTS_KEY, {}),
                                    GENERATIONS_KEY: record.get(GENERATIONS_KEY, {})})
    _rmtree(root / TRASH)
    _rmtree(root / PENDING)
    write_point(COMMIT_RECORD)
    (root / COMMIT_RECORD).unlink()
    _expire_retained(root)


def _expire_retained(root: Path) -> None:
    """Remove superseded generations older than :data:`RETAIN_SECONDS`."""
    folder = root / RETAINED
    if not folder.is_dir():
        return
    now = time.time()
    for old in folder.iterdir():
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > RETAIN_SECONDS:
                _rmtree(old)


def _rmtree(path: Path) -> None:
    if path.exists():
        write_point(f"delete {path.name}")
        shutil.rmtree(path)


def pending_commit(path: str | os.PathLike) -> bool:
    """True when a commit passed its commit point but was not fully applied (or is applying)."""
    return (Path(path) / COMMIT_RECORD).exists()


def recover(path: str | os.PathLike) -> list[str]:
    """Bring the store to its committed state (roll forward or back); return what was done.

    Must run under the store lock: it undoes whatever an unlocked writer has not committed.
    """
    root = Path(path)
    if pending_commit(root):
        with _metadata_lock(root):
            _apply(root)
        return ["finished an interrupted commit"]
    done = []
    for name in (PENDING, TRASH):
        if (root / name).exists():
            shutil.rmtree(root / name)
            done.append(f"removed {name}")
    meta = committed(root)
    if meta is None:  # the first commit never happened: nothing of ours may stay
        removed = [p.name for p in _owned_entries(root)]
        for p in _owned_entries(root):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return [f"removed the uncommitted {', '.join(removed)}"] if removed else []
    for p in sorted(root.rglob("*.partial")):  # zarr's temporary files of an interrupted write
        p.unlink()
    disk = on_disk_metadata(root)
    for key, value in disk.items():
        top = _top(key)
        if top not in OWNED_GROUPS and top != "":
            continue
        node = (root / key).parent
        if key not in meta:
            if key.endswith((".zarray", ".zgroup")) and node.exists():
                shutil.rmtree(node)
                done.append(f"removed uncommitted {node.relative_to(root)}")
            elif key.endswith(".zattrs") and (root / key).exists():
                (root / key).unlink()
            continue
        if value != meta[key]:
            (root / key).write_text(json.dumps(meta[key], indent=4))
            if key.endswith(".zarray"):
                removed = _drop_chunks_past(node, meta[key])
                done.append(f"truncated {node.relative_to(root)} to {meta[key]['shape'][0]} rows"
                            + (f" ({removed} chunks)" if removed else ""))
    for key, value in meta.items():  # metadata removed by an interrupted writer
        if (_top(key) in OWNED_GROUPS or _top(key) == "") and not (root / key).exists():
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_text(json.dumps(value, indent=4))
    return done


def _owned_entries(root: Path) -> list[Path]:
    names = [*OWNED_GROUPS, *META_FILES, ZMETADATA, PENDING, TRASH, RETAINED]
    return [root / n for n in names if (root / n).exists()]


def _drop_chunks_past(array_dir: Path, zarray: dict) -> int:
    """Delete chunk files wholly outside ``zarray``'s shape; return how many."""
    shape, chunks = zarray["shape"], zarray["chunks"]
    sep = zarray.get("dimension_separator") or "."
    n_chunks = [-(-s // c) for s, c in zip(shape, chunks, strict=True)]
    removed = 0
    for p in array_dir.rglob("*"):
        if not p.is_file() or p.name in META_FILES:
            continue
        parts = p.relative_to(array_dir).as_posix().split("/" if sep == "/" else ".")
        if all(x.isdigit() for x in parts) and len(parts) == len(shape) and any(
                int(x) >= n for x, n in zip(parts, n_chunks, strict=True)):
            p.unlink()
            removed += 1
    return removed


def committed_groups(path: str | os.PathLike) -> set[str]:
    """Top-level groups of the committed state."""
    return {k.split("/", 1)[0] for k in (committed(path) or {}) if k.endswith("/.zgroup")}


# ---- readers: one committed state ---------------------------------------------------------------

class SnapshotExpired(RuntimeError):
    """A reader kept a commit open past :data:`RETAIN_SECONDS` after it was superseded."""


class SnapshotStore(WrapperStore):
    """A read-only view of one commit: the ``.zmetadata`` read once at opening, whatever is
    published after, and for a local store the chunks of that commit's generation of each
    replaced group (moved to ``.retained/`` when a later commit replaces it).

    Appended rows need nothing: chunk files are replaced whole and atomically, and a reader
    never looks past its commit's shapes. A chunk of a replaced group is read from the live
    folder, then its generation is checked: the live one is still the reader's (the read was of
    its commit, since generations only move forward), or the reader's was moved to
    ``.retained/`` (read it there). Remote stores (HTTP, S3) are static copies: the metadata
    snapshot is all they need.
    """

    def __init__(self, store: Store, zmetadata: bytes, local_root: Path | None = None):
        super().__init__(store)
        self._zmetadata = zmetadata
        whole = json.loads(zmetadata)
        self._meta = {k: json.dumps(v).encode() for k, v in whole["metadata"].items()}
        self.digests: dict[str, dict[str, str]] = whole.get(DIGESTS_KEY) or {}
        self._local = local_root
        recorded = whole.get(GENERATIONS_KEY) or {}
        self.generations = {g: int(recorded.get(g, 0)) for g in OWNED_GROUPS}

    @classmethod
    def snapshot_of(cls, store: Store, local_root: Path | None = None) -> SnapshotStore:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        raw = sync(store.get(ZMETADATA, default_buffer_prototype()))
        if raw is None:
            raise FileNotFoundError(f"{local_root or store}: no {ZMETADATA}")
        return cls(store, raw.to_bytes(), local_root)

    def _with_store(self, store: Store) -> SnapshotStore:
        return type(self)(store, self._zmetadata, self._local)

    async def get(self, key, prototype=None, byte_range=None):
        from zarr.core.buffer import default_buffer_prototype

        prototype = prototype or default_buffer_prototype()
        if key == ZMETADATA:
            return prototype.buffer.from_bytes(self._zmetadata)
        if key.rsplit("/", 1)[-1] in META_FILES:  # zarr reads some (root .zattrs) past .zmetadata
            value = self._meta.get(key)
            return None if value is None else prototype.buffer.from_bytes(value)
        return await self._of_this_commit(key, lambda k: self._store.get(k, prototype, byte_range))

    async def exists(self, key: str) -> bool:
        if key == ZMETADATA:
            return True
        if key.rsplit("/", 1)[-1] in META_FILES:
            return key in self._meta
        return await self._of_this_commit(key, self._store.exists)

    async def on_disk(self, key: str) -> bool:
        """Whether this commit's file ``key`` is on disk (its metadata files included)."""
        return await self._of_this_commit(key, self._store.exists)

    async def _of_this_commit(self, key: str, op):
        """``op(key)`` on the live folder, or on the retained generation of this commit."""
        value = await op(key)
        group, _, rest = key.partition("/")
        if self._local is None or not rest or group not in self.generations:
            return value
        mine = self.generations[group]
        for _ in range(2):
            old = generation_path(self._local, group, mine)
            if old.is_dir():  # superseded since this reader opened it: read it where it went
                return await op(f"{old.relative_to(self._local).as_posix()}/{rest}")
            if live_generation(self._local, group) == mine:
                return value  # still current after the read: the read was of this commit
        raise SnapshotExpired(f"{self._local}/{group}: this reader's commit was superseded more "
                              f"than {RETAIN_SECONDS / 3600:.0f} h ago and its data removed; "
                              "open the store again")

    def folder(self, group: str) -> Path | None:
        """Where this commit's ``group`` is on disk now (local stores)."""
        if self._local is None:
            return None
        old = generation_path(self._local, group, self.generations.get(group, 0))
        return old if group in self.generations and old.is_dir() else self._local / group

    async def set(self, key, value) -> None:
        raise PermissionError(f"{key}: a snapshot is read-only")
