"""One writer at a time: advisory lock files inside a store.

A lock is a small JSON file ``<store>/.locks/<name>.lock`` created with ``O_CREAT | O_EXCL``,
which is atomic on local filesystems and on NFSv3+/Lustre (the create is one server-side
operation). It records who holds it (host, pid, start time, command) so a refusal can name the
holder. A lock whose process is gone (same host, pid not alive) is *stale*: it is reported as
such and is broken only on request (``break_lock`` / ``casbi-store unlock``), never silently,
since on a shared filesystem a process on another host cannot be checked from here.

Lock names: ``store`` for extraction commits, ``set-<name>-<version>`` for composing a
training-set version. Object-store URLs (``s3://``...) have no exclusive create through every
backend: there the lock is skipped with a warning, and a single writer is the user's duty
(documented in the README's HPC section).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .provenance import utc_now

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"


class LockHeld(RuntimeError):
    """The lock is held by another writer (or by a dead one: ``stale``)."""

    def __init__(self, path: Path, holder: dict, stale: bool):
        self.path, self.holder, self.stale = path, holder, stale
        who = (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
               f"since {holder.get('started_utc', '?')}, command {holder.get('command', '?')!r}")
        if stale:
            msg = (f"{path}: a stale lock from a writer that is no longer running ({who}); if no "
                   f"other process writes this store, break it with `casbi-store unlock "
                   f"{_store_of(path)} --name {path.stem}` and re-run (re-running repairs)")
        else:
            msg = (f"{path}: another writer holds this store ({who}); one writer at a time: wait "
                   "for it to finish")
        super().__init__(msg)


def _store_of(lock_path: Path) -> Path:
    return lock_path.parent.parent


def is_local(store: str | os.PathLike) -> bool:
    """True for a filesystem path (or file:// URL), where exclusive create is reliable."""
    s = os.fspath(store)
    return "://" not in s or s.startswith("file://")


def lock_path(store: str | os.PathLike, name: str) -> Path:
    s = os.fspath(store)
    if s.startswith("file://"):
        s = s[len("file://"):]
    return Path(s) / LOCK_DIR / f"{name}.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(path: Path) -> dict:
    """The holder's record; an unreadable or half-written file reads as an unknown holder."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def is_stale(holder: dict) -> bool:
    """A holder on this host whose process is gone (other hosts cannot be checked)."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    return isinstance(pid, int) and not _pid_alive(pid)


@dataclass
class Lock:
    """A held lock; release it with :meth:`release` (or use :func:`store_lock`)."""

    path: Path | None
    token: str

    def release(self) -> None:
        if self.path is None:
            return
        if read_holder(self.path).get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def acquire(store: str | os.PathLike, name: str, purpose: str = "", wait: float = 0.0) -> Lock:
    """Take the lock ``name`` of ``store`` or raise :class:`LockHeld` naming the holder.

    ``wait``: seconds to keep trying while a live writer holds it (for short critical sections);
    a stale lock is reported at once.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            return _acquire_once(store, name, purpose)
        except LockHeld as held:
            if held.stale or time.monotonic() >= deadline:
                raise
        time.sleep(0.05)


def _acquire_once(store: str | os.PathLike, name: str, purpose: str) -> Lock:
    token = os.urandom(8).hex()
    if not is_local(store):
        log.warning("%s: object storage has no exclusive create; not locked (one writer at a "
                    "time is up to you)", store)
        return Lock(None, token)
    path = lock_path(store, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started_utc": utc_now(),
              "command": purpose or " ".join(sys.argv), "token": token}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        holder = read_holder(path)
        raise LockHeld(path, holder, is_stale(holder)) from None
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES):
            raise LockHeld(path, {"command": f"cannot create a lock file ({exc.strerror})"},
                           False) from exc
        raise
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    return Lock(path, token)


@contextlib.contextmanager
def store_lock(store: str | os.PathLike, name: str, purpose: str = "", wait: float = 0.0
               ) -> Iterator[Lock]:
    """``with store_lock(path, "store"):`` one writer at a time, released on exit."""
    lock = acquire(store, name, purpose, wait)
    try:
        yield lock
    finally:
        lock.release()


def list_locks(store: str | os.PathLike) -> dict[str, dict]:
    """name -> holder record (with ``stale``) of every lock file in the store."""
    folder = lock_path(store, "x").parent
    if not folder.is_dir():
        return {}
    out = {}
    for p in sorted(folder.glob("*.lock")):
        holder = read_holder(p)
        out[p.stem] = {**holder, "stale": is_stale(holder)}
    return out


def break_lock(store: str | os.PathLike, name: str, force: bool = False) -> dict:
    """Remove a stale lock (or any lock with ``force``); return the holder it had.

    Refuses a lock whose holder is alive on this host unless ``force``: breaking a live writer's
    lock lets two writers corrupt the store.
    """
    path = lock_path(store, name)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such lock")
    holder = read_holder(path)
    if not force and holder and not is_stale(holder):
        raise LockHeld(path, holder, stale=False)
    path.unlink()
    log.warning("broke lock %s held by %s", path, holder or "an unknown writer")
    return holder
