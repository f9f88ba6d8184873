"""Writing a file atomically: a reader (or a process killed mid-write) sees the old file or the
new one, never a part of it. Every small file the package writes in place (JSON records, model
checkpoints, observations, catalogs, tables) goes through ``atomic_path``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path in ``path``'s folder to write the new file to (by any library: torch,
    numpy, netCDF, astropy); on leaving the block it is flushed to disk (fsync) and renamed
    onto ``path`` (``os.replace``); on an exception it is removed and ``path`` left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
