"""The intake catalog of a store: its training-set registries, written as a YAML catalog.

Training sets, their layout and registry live in :mod:`casbi_store.store.trainingsets`; a version
exists for readers only once it is published there. The catalog written here has one entry per
training set (driver ``casbi_training_set``, user parameters ``version`` and ``split``) and a
``galaxies`` entry (driver ``casbi_galaxies``). The store path inside it is relative to the
catalog's folder (``{{ CATALOG_DIR }}/...``), so catalog and store can be copied or served over
HTTP together as they are.

One catalog describes one store (its ``metadata.store``). Writing a catalog that describes another
store is refused (:class:`CatalogError`, naming the option): entries of two stores cannot share a
catalog, their set names collide, and silently re-pointing the galaxies entry and every set at a new
store broke the repo's catalog each time a test composed (issue 22). A catalog whose store no longer
exists is re-pointed, with a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from casbi_store import CasbiError
from casbi_store.store import trainingsets
from casbi_store.store.atomic import atomic_write_text
from casbi_store.store.schema import SPLITS
from casbi_store.store.trainingsets import LATEST, sorted_versions, version_key

__all__ = ["LATEST", "CatalogError", "check_catalog", "read_registry", "sorted_versions",
           "update_catalog", "version_key", "write_catalog"]
log = logging.getLogger(__name__)
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
    """Write the intake catalog of one store, atomically (``store.atomic``).

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
    return atomic_write_text(catalog_path, text)


class CatalogError(CasbiError, ValueError):
    """The catalog cannot be written for this store: it describes another one, or is not ours."""


def check_catalog(catalog_path: str | os.PathLike, store_path: str | os.PathLike) -> str | None:
    """Raise :class:`CatalogError` unless ``catalog_path`` may be (re)written for ``store_path``:
    it does not exist yet, or it describes this store, or the store it describes no longer exists
    (then the warning to give is returned). Cheap: ``compose`` checks before composing."""
    catalog = Path(catalog_path)
    if not catalog.exists():
        return None
    option = ("give this store a catalog of its own (compose --catalog PATH, or the pipeline's "
              f"compose.catalog; e.g. {Path(store_path).parent / 'casbi.yaml'}), or --catalog '' "
              f"for none; or remove {catalog} to re-point it")
    try:
        described = (yaml.safe_load(catalog.read_text()) or {}).get("metadata", {}).get("store")
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise CatalogError(f"{catalog}: not a casbi catalog ({exc}); refusing to replace it: "
                           f"{option}") from exc
    if not isinstance(described, str):
        raise CatalogError(f"{catalog}: not a casbi catalog (no metadata.store); refusing to "
                           f"replace it: {option}")
    theirs = (catalog.parent / described).resolve()
    if theirs == Path(store_path).resolve():
        return None
    if not theirs.exists():
        return (f"{catalog} described the store {described}, which no longer exists: re-pointed "
                f"at {store_path}")
    raise CatalogError(f"{catalog} describes the store {theirs}, not {store_path}; one catalog "
                       f"describes one store: {option}")


def update_catalog(catalog_path: str | os.PathLike, store_path: str | os.PathLike) -> Path:
    """Rewrite the catalog from the store's current registries (see :func:`check_catalog`)."""
    if note := check_catalog(catalog_path, store_path):
        log.warning(note)
    return write_catalog(catalog_path, store_path, read_registry(store_path))
