"""The intake catalog of a store: its training-set registries, written as a YAML catalog.

Training sets, their layout and registry live in :mod:`casbi_store.store.trainingsets`; a version
exists for readers only once it is published there. The catalog written here has one entry per
training set (driver ``casbi_training_set``, user parameters ``version`` and ``split``) and a
``galaxies`` entry (driver ``casbi_galaxies``). The store path inside it is relative to the
catalog's folder (``{{ CATALOG_DIR }}/...``), so catalog and store can be copied or served over
HTTP together as they are.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from casbi_store.store import trainingsets
from casbi_store.store.schema import SPLITS
from casbi_store.store.trainingsets import LATEST, sorted_versions, version_key

__all__ = ["LATEST", "read_registry", "sorted_versions", "update_catalog", "version_key",
           "write_catalog"]
TRAINING_SET_DRIVER = "casbi_training_set"
GALAXIES_DRIVER = "casbi_galaxies"


def read_registry(store: str | os.PathLike, storage_options: dict | None = None) -> dict[str, dict]:
    """Every published training set of a store: ``{name: {version: meta}}`` (natural order),
    through the consolidated metadata (local path or ``http://``/``s3://`` URL)."""
    return trainingsets.read_registry(store, storage_options)


def _entry(store_url: str, name: str, versions: dict[str, dict]) -> dict:
    names = sorted_versions(versions)
    latest = versions[names[-1]]
    description = f"Training set {name} (versions {', '.join(names)}; latest {names[-1]})"
    if latest.get("description"):
        description += f": {latest['description']}"
    return {
        "driver": TRAINING_SET_DRIVER,
        "description": description,
        "args": {"store": store_url, "name": name, "version": "{{ version }}", "split": "{{ split }}"},
        "parameters": {
            "version": {"description": f"published version, or '{LATEST}' ({names[-1]})",
                        "type": "str", "default": LATEST, "allowed": [LATEST, *names]},
            "split": {"description": "data split", "type": "str", "default": SPLITS[0],
                      "allowed": list(SPLITS)},
        },
        "metadata": {
            "latest": names[-1],
            "versions": names,
            "parameters": latest.get("parameters", []),
            "counts": latest.get("counts", {}),
            "seed": latest.get("seed"),
            "spec": latest.get("spec", {}),
        },
    }


def write_catalog(catalog_path: str | os.PathLike, store_path: str | os.PathLike,
                  sets: dict[str, dict]) -> Path:
    """Write the intake catalog of one store, atomically (temp file + ``os.replace``).

    Parameters
    ----------
    catalog_path : str or os.PathLike
        The YAML file to write (replaced if it exists).
    store_path : str or os.PathLike
        Local path of the store; written relative to the catalog's folder.
    sets : dict
        ``{name: {version: meta}}``, as returned by :func:`read_registry`.

    Returns
    -------
    Path
        The catalog path.
    """
    catalog_path = Path(catalog_path)
    folder = catalog_path.parent.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    relative = Path(os.path.relpath(Path(store_path).resolve(), folder)).as_posix()
    store_url = "{{ CATALOG_DIR }}/" + relative
    sources = {"galaxies": {
        "driver": GALAXIES_DRIVER,
        "description": "Galaxies table joined with their chemical-plane histograms",
        "args": {"store": store_url},
    }}
    for name in sorted(sets):
        if sets[name]:
            sources[name] = _entry(store_url, name, sets[name])
    text = yaml.safe_dump({"metadata": {"version": 1, "store": relative}, "sources": sources},
                          sort_keys=False, default_flow_style=False, width=100)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{catalog_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, catalog_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return catalog_path


def update_catalog(catalog_path: str | os.PathLike, store_path: str | os.PathLike) -> Path:
    """Rewrite the catalog from the store's current registries."""
    return write_catalog(catalog_path, store_path, read_registry(store_path))
