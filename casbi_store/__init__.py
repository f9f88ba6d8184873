"""casbi_store: the CASBI data product and its two-step inference.

NIHAO (or mock) snapshots -> a Zarr store of 64x64 chemical-plane histograms, per-star
abundances and galaxy metadata -> versioned training sets -> sbi posteriors of a halo's
building blocks. The package reads in the order the data flows: ``mock/`` (a NIHAO-like
suite) -> ``store/`` (extraction, the store, training-set versions) -> ``surrogate/`` ->
``compose/`` -> ``learn/`` -> ``apply/`` (observe, infer, survey) -> ``evaluation/``;
``plots/`` and ``cli/`` at the edges. The few functions a user needs are here, imported
lazily (``import casbi_store`` does not load torch)::

    import casbi_store
    ds = casbi_store.open_store("demo/store.zarr")
    post = casbi_store.infer(["demo/models/nsub_classifier", "demo/models/theta"], "obs.nc")
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("casbi_store")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

# public name -> (module, attribute)
_API = {
    "open_store": ("casbi_store.store.io", "open_store"),
    "open_stars": ("casbi_store.store.io", "open_stars"),
    "open_errors": ("casbi_store.store.io", "open_errors"),
    "galaxy_stars": ("casbi_store.store.io", "galaxy_stars"),
    "describe_store": ("casbi_store.store.io", "describe_store"),
    "ComposeSpec": ("casbi_store.compose.spec", "ComposeSpec"),
    # not "compose": that name is the stage's subpackage (casbi_store.compose.compose is this one)
    "compose_set": ("casbi_store.compose.halos", "compose"),
    "train": ("casbi_store.cli.train", "train_model"),
    "load_model": ("casbi_store.learn.modelfolder", "load_model"),
    "observe": ("casbi_store.cli.observe", "observe"),
    "infer": ("casbi_store.apply.infer", "infer"),
    "evaluate": ("casbi_store.cli.evaluate", "evaluate_models"),
}

__all__ = ["CasbiError", "InputError", "MissingInput", "__version__", *sorted(_API)]


class CasbiError(Exception):
    """Bad input: a file, an option, a store, a model folder. The command line prints it as one
    line (``casbi-store: error: ...``) and exits with 2; any other exception is a bug and shows
    its traceback. Every exception class of the package derives from it."""

    __str__ = Exception.__str__  # the message as given (KeyError's quoting skipped)


class InputError(CasbiError, ValueError):
    """A value that cannot be used: an option out of range, a file's content, a name unknown."""


class MissingInput(CasbiError, FileNotFoundError):
    """A file, folder or store that is not there."""


def __getattr__(name: str):
    if name in _API:
        module, attribute = _API[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
