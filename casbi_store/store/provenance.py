"""What produced a piece of data: package versions, command line, host time."""

from __future__ import annotations

import datetime as dt
import platform
import sys
from importlib import metadata

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
