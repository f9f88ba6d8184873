"""What produced a piece of data: package versions, command line, host time."""

from __future__ import annotations

import datetime as dt
import hashlib
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("casbi_store", "numpy", "pynbody", "zarr", "xarray", "dask", "distributed")


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def provenance(**extra) -> dict:
    """A provenance record for store attributes (JSON-serialisable)."""
    return {"time_utc": utc_now(), "command": " ".join(sys.argv), "host": platform.node(),
            "versions": package_versions(), **extra}


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (survey tables, model-folder manifests)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
