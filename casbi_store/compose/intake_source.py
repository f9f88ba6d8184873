"""intake (2.0.x legacy API) drivers for a casbi store.

``casbi_training_set`` opens one split of one published training-set version as an
``xarray.Dataset``; ``casbi_galaxies`` opens the galaxies table with their histograms
(:func:`casbi_store.store.io.open_store`). Both are registered as ``intake.drivers`` entry points.

The training-set driver checks ``version`` and ``split`` against the store's registry itself, so
a wrong value fails even from a catalog entry without ``allowed:`` lists.
"""

from __future__ import annotations

import os
import warnings

import xarray as xr
from intake.source.base import DataSource, NoEntry, Schema

from casbi_store import InputError
from casbi_store.store import trainingsets
from casbi_store.store.io import open_store
from casbi_store.store.schema import SPLITS
from casbi_store.store.trainingsets import LATEST

# intake 2.0.9 warns "Shell command not executed" for every string parameter value, shell() or
# not (intake.catalog.utils.expand_defaults), on every entry call. Catalogs import this module
# when they open (our drivers are entry points), so this one message of that one intake module
# is silenced here; no other warning is touched.
warnings.filterwarnings("ignore", message="Shell command not executed due to getshell=False",
                        category=UserWarning, module=r"intake\.catalog\.utils")


def _schema(ds: xr.Dataset) -> Schema:
    """Dims, and dims/shape/dtype of every data variable, as intake schema metadata."""
    data_vars = {name: {"dims": list(var.dims), "shape": list(var.shape), "dtype": str(var.dtype)}
                 for name, var in ds.data_vars.items()}
    return Schema(datashape=None, dtype={k: v["dtype"] for k, v in data_vars.items()},
                  shape={k: tuple(v["shape"]) for k, v in data_vars.items()}, npartitions=1,
                  extra_metadata={"dims": dict(ds.sizes), "data_vars": data_vars,
                                  "coords": list(ds.coords)})


class _XarraySource(DataSource):
    """Shared parts: one lazily opened dataset, loaded by ``read``."""

    container = "xarray"
    version = "0.1.0"
    partition_access = False
    _ds: xr.Dataset | None = None

    def _open(self) -> xr.Dataset:
        raise NotImplementedError

    def to_dask(self) -> xr.Dataset:
        """The dataset, lazily (dask-chunked)."""
        if self._ds is None:
            self._ds = self._open()
        return self._ds

    def read(self) -> xr.Dataset:
        """The dataset, loaded into memory."""
        return self.to_dask().compute()

    def _get_schema(self) -> Schema:
        return _schema(self.to_dask())

    def _get_partition(self, i: int) -> xr.Dataset:
        return self.read()

    def _close(self) -> None:
        self._ds = None

    def describe(self) -> dict:
        """The catalog entry's description, or this source's arguments when made directly."""
        try:
            return super().describe()
        except NoEntry:
            return {"name": self.name, "container": self.container, **self._yaml()["sources"][self.name]}


class TrainingSetSource(_XarraySource):
    """One split of one published version of a training set.

    Parameters
    ----------
    store : str
        Local path or fsspec URL (``http://``, ``s3://``) of the store.
    name : str
        Training-set name (group ``training_sets/<name>``).
    version : str
        A published version (``"v1"``...) or ``"latest"``, the highest in natural order.
    split : str
        ``"train"``, ``"val"`` or ``"test"``.
    storage_options : dict, optional
        Passed to fsspec for URLs.
    metadata : dict, optional
        Extra metadata (from the catalog entry).

    Raises
    ------
    ValueError
        If the set is not in the store, or ``version`` or ``split`` is not an allowed value.
    """

    name = "casbi_training_set"

    def __init__(self, store: str, name: str, version: str = LATEST, split: str = "train",
                 storage_options: dict | None = None, metadata: dict | None = None):
        super().__init__(storage_options=storage_options, metadata=dict(metadata or {}))
        self.store = os.fspath(store)
        registry = trainingsets.read_registry(self.store, self.storage_options)
        if name not in registry:
            raise InputError(f"{self.store}: no published training set {name!r} "
                             f"(published: {', '.join(registry) or 'none'})")
        versions = list(registry[name])  # natural order
        allowed = [LATEST, *versions]
        if version not in allowed:
            raise InputError(f"{self.store}: training set {name!r} has no published version "
                             f"{version!r} (allowed: {', '.join(allowed)})")
        if split not in SPLITS:
            raise InputError(f"{self.store}: training set {name!r}: split {split!r} is not one of "
                             f"{', '.join(SPLITS)}")
        self.set_name = name
        self.set_version = versions[-1] if version == LATEST else version
        self.split = split
        self.group = trainingsets.set_path(name, self.set_version, split)
        self.metadata.update(registry[name][self.set_version])
        self.metadata.update(name=name, version=self.set_version, split=split, store=self.store)

    def _open(self) -> xr.Dataset:
        return trainingsets.open_split(self.store, self.set_name, self.set_version, self.split,
                                       self.storage_options)


class GalaxiesSource(_XarraySource):
    """The galaxies table joined with their histograms (:func:`casbi_store.store.io.open_store`).

    Parameters
    ----------
    store : str
        Local path or fsspec URL of the store.
    storage_options : dict, optional
        Passed to fsspec for URLs.
    metadata : dict, optional
        Extra metadata (from the catalog entry).
    """

    name = "casbi_galaxies"

    def __init__(self, store: str, storage_options: dict | None = None, metadata: dict | None = None):
        super().__init__(storage_options=storage_options, metadata=dict(metadata or {}))
        self.store = os.fspath(store)

    def _open(self) -> xr.Dataset:
        return open_store(self.store, self.storage_options or None)
