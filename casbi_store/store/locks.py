"""One writer at a time: advisory lock files inside a store, that never need a person after a crash.

A lock is a small JSON file ``<store>/.locks/<name>.lock`` recording who holds it (host, pid, the
process's start time, command, a random token) so a refusal can name the holder. It is created
*whole*: the record is written and fsynced to a private temporary file, which is then hard-linked
to the lock's name (``link`` fails if the name exists: atomic on local filesystems and on
NFSv3+/Lustre). A kill at any instant leaves either no lock or a complete one, never an empty file.

A lock whose holder is gone is broken by the next writer, with a log line:

- a holder on this host whose pid no longer runs (or runs a different process: the start time
  recorded differs from the pid's, so a recycled pid is not mistaken for the holder);
- a lock file that is empty or unreadable (left by versions before whole-file creation).

Breaking is a compare-and-delete under an ``flock`` on ``.locks/<name>.guard`` (released by the
kernel when its holder dies, so the guard itself can never wedge): the lock file is re-read under
the guard and removed only if it still holds the dead record, so two writers breaking the same
stale lock cannot remove each other's fresh one. A lock held from *another host* (a shared
filesystem) cannot be checked from here: it is never broken silently; the refusal names host and
pid, and ``casbi-store unlock STORE --force`` breaks it once the user knows that writer is gone.

Lock names: ``store`` for extraction commits, ``metadata`` for the few-millisecond update of
``.zmetadata``, ``set-<name>-<version>`` for composing a training-set version. Object-store URLs
(``s3://``...) have no exclusive create through every backend: there the lock is skipped with a
warning, and a single writer is the user's duty (documented in the README's HPC section).
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

from casbi_store import CasbiError, MissingInput

from .provenance import utc_now

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"
KILL_ENV = "CASBI_STORE_KILL_AT_LOCK"  # test hook: SIGKILL while creating the N-th lock ("N:step")


class LockHeld(CasbiError, RuntimeError):
    """The lock is held by another writer; ``stale``: by one on another host that may be gone."""

    def __init__(self, path: Path, holder: dict, stale: bool = False):
        self.path, self.holder, self.stale = path, holder, stale
        who = (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
               f"since {holder.get('started_utc', '?')}, command {holder.get('command', '?')!r}")
        if holder.get("host") not in (None, socket.gethostname()):
            msg = (f"{path}: another writer holds this store ({who}); it runs on another host, "
                   "so this one cannot tell whether it is still alive: wait for it, or, once you "
                   f"know it is gone, `casbi-store unlock {_store_of(path)} --force`")
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


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or None
    where there is no /proc: with the pid it names one process, whatever recycles the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(path: Path) -> dict:
    """The holder's record; an unreadable or half-written file reads as an unknown holder ``{}``."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def is_stale(holder: dict) -> bool:
    """True if the holder is certainly gone: an empty/unreadable record, or one on this host
    whose process no longer runs. Holders on other hosts cannot be checked: never stale."""
    if not holder:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return True
    started = holder.get("proc_start")
    return started is not None and _proc_start(pid) not in (None, started)


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

    A lock left by a dead writer is broken on the way (logged). ``wait``: seconds to keep trying
    while a live writer holds it (for short critical sections).
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            return _acquire_once(store, name, purpose)
        except LockHeld:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.05)


_created = 0


def _kill_point(step: str) -> None:
    """Test hook: ``CASBI_STORE_KILL_AT_LOCK=N:step`` SIGKILLs this process at ``step`` of its
    N-th lock creation (steps: ``temp`` after the temporary file is written, ``link`` after it
    is linked)."""
    target = os.environ.get(KILL_ENV)
    if target and target == f"{_created}:{step}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _acquire_once(store: str | os.PathLike, name: str, purpose: str) -> Lock:
    global _created
    token = os.urandom(8).hex()
    if not is_local(store):
        log.warning("%s: object storage has no exclusive create; not locked (one writer at a "
                    "time is up to you)", store)
        return Lock(None, token)
    path = lock_path(store, name)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": _proc_start(os.getpid()),
              "started_utc": utc_now(), "command": purpose or " ".join(sys.argv), "token": token}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{token}.tmp")
        _created += 1
        with open(tmp, "x") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        _kill_point("temp")
        try:
            os.link(tmp, path)  # the lock exists, whole, from here
            _kill_point("link")
        finally:
            tmp.unlink()
    except FileExistsError:
        holder = read_holder(path)
        if is_stale(holder) and _break_if_unchanged(path, holder):
            return _acquire_once(store, name, purpose)
        raise LockHeld(path, holder) from None
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise LockHeld(path, {"command": f"cannot create a lock file ({exc.strerror})"}) from exc
        raise
    _sweep_temporaries(path.parent)
    return Lock(path, token)


def _sweep_temporaries(folder: Path, age: float = 60.0) -> None:
    """Remove temporary lock files of writers killed before linking them (older than ``age``)."""
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > age:
                tmp.unlink()


@contextlib.contextmanager
def _guard(path: Path) -> Iterator[None]:
    """An ``flock`` serialising the breaking of one lock (the kernel drops it if we die)."""
    import fcntl

    fd = os.open(path.with_suffix(".guard"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        with contextlib.suppress(OSError):  # no flock on this filesystem: break unguarded
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _break_if_unchanged(path: Path, holder: dict) -> bool:
    """Remove ``path`` if it still holds ``holder``'s record (compare-and-delete); True if it
    is gone (removed here or by someone else), so the caller may try to take it."""
    with _guard(path):
        try:
            now = read_holder(path)
        except FileNotFoundError:
            return True
        if not path.exists():
            return True
        if now != holder:
            return False  # a new holder took it meanwhile
        path.unlink()
    who = (f"host {holder.get('host')}, pid {holder.get('pid')} (no longer running), since "
           f"{holder.get('started_utc')}, command {holder.get('command')!r}" if holder
           else "an empty or unreadable lock file")
    log.warning("%s: broke the lock of a writer that is gone: %s", path, who)
    return True


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

    Refuses a lock whose holder may be alive (on this host, or on another) unless ``force``:
    breaking a live writer's lock lets two writers corrupt the store.
    """
    path = lock_path(store, name)
    if not path.exists():
        raise MissingInput(f"{path}: no such lock")
    holder = read_holder(path)
    if not force and not is_stale(holder):
        raise LockHeld(path, holder)
    with _guard(path):
        if read_holder(path) == holder:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    log.warning("broke lock %s held by %s", path, holder or "an unknown writer")
    return holder
