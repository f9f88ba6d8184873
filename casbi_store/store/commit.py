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

import json
import os
import shutil
import signal
from pathlib import Path

from zarr.abc.store import Store
from zarr.storage import LocalStore, WrapperStore

from . import schema as S

ZMETADATA = ".zmetadata"
COMMIT_RECORD = ".commit.json"
PENDING = ".pending"
TRASH = ".trash"
META_FILES = (".zgroup", ".zarray", ".zattrs")
# Top-level entries recovery may remove or rewrite: the extraction's groups and bookkeeping only.
OWNED_GROUPS = (S.GALAXIES, S.STARS, S.HISTOGRAMS, S.ERRORS)
METADATA_LOCK = "metadata"
METADATA_WAIT = 120.0  # seconds a writer waits for another's .zmetadata update (milliseconds long)
KILL_ENV = "CASBI_STORE_KILL_AT_WRITE"
COUNT_ENV = "CASBI_STORE_COUNT_WRITES"

_writes = 0


class RecoveryError(RuntimeError):
    """The store's committed metadata cannot be read, so recovery cannot decide what to keep."""


def write_point() -> None:
    """Count one write; the test hook kills the process at the chosen one."""
    global _writes
    _writes += 1
    if (count_file := os.environ.get(COUNT_ENV)):
        Path(count_file).write_text(str(_writes))
    if os.environ.get(KILL_ENV) == str(_writes):
        os.kill(os.getpid(), signal.SIGKILL)


class CountedStore(WrapperStore):
    """A store whose every write and delete is a :func:`write_point`."""

    async def set(self, key, value) -> None:
        write_point()
        await super().set(key, value)

    async def set_if_not_exists(self, key, value) -> None:
        write_point()
        await super().set_if_not_exists(key, value)

    async def delete(self, key) -> None:
        if await self.exists(key):  # deleting nothing is not a write
            write_point()
        await super().delete(key)

    async def delete_dir(self, prefix) -> None:
        if not await self.is_empty(prefix):
            write_point()
        await super().delete_dir(prefix)


def local_store(path: str | os.PathLike) -> Store:
    """A writable zarr store of the folder ``path`` whose writes are counted write points."""
    return CountedStore(LocalStore(os.fspath(path)))


def _atomic_json(path: Path, obj: dict) -> None:
    write_point()
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True))
    os.replace(tmp, path)


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


def _metadata_lock(root: Path):
    """The short lock every writer of ``.zmetadata`` holds for its read-modify-write: the
    extraction's commit and a compose publishing a training-set version (which holds no store
    lock) must not interleave, or one would drop the other's entries. A holder that died inside
    it is broken by the next writer (:mod:`casbi_store.store.locks`)."""
    from .locks import store_lock

    return store_lock(root, METADATA_LOCK, purpose="updating .zmetadata", wait=METADATA_WAIT)


def publish(path: str | os.PathLike, swaps: list[str] = ()) -> None:
    """Make everything written since the last commit visible to readers, atomically."""
    root = Path(path)
    with _metadata_lock(root):
        meta = _new_metadata(root, list(swaps))
        if swaps:
            _atomic_json(root / COMMIT_RECORD, {"metadata": meta, "swaps": list(swaps)})  # commit point
            _apply(root)
        else:
            _atomic_json(root / ZMETADATA, {"metadata": meta, "zarr_consolidated_format": 1})


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
        _atomic_json(root / ZMETADATA, {"metadata": meta, "zarr_consolidated_format": 1})


def _apply(root: Path) -> None:
    """Carry out a commit record (idempotent: safe to repeat after a kill at any step)."""
    record = json.loads((root / COMMIT_RECORD).read_text())
    for group in record["swaps"]:
        staged, live, old = root / PENDING / group, root / group, root / TRASH / group
        if staged.exists():
            if live.exists():
                if old.exists():
                    _rmtree(old)
                old.parent.mkdir(exist_ok=True)
                write_point()
                os.rename(live, old)
            write_point()
            os.rename(staged, live)
    _atomic_json(root / ZMETADATA, {"metadata": record["metadata"], "zarr_consolidated_format": 1})
    _rmtree(root / TRASH)
    _rmtree(root / PENDING)
    write_point()
    (root / COMMIT_RECORD).unlink()


def _rmtree(path: Path) -> None:
    if path.exists():
        write_point()
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
    names = [*OWNED_GROUPS, *META_FILES, ZMETADATA, PENDING, TRASH]
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
