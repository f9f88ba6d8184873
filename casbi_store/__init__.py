"""casbi_store: the CASBI data product.

NIHAO (or mock) snapshots -> Zarr store of 64x64 chemical-plane histograms, per-star abundances
and galaxy metadata. Start with :func:`open_store`.
"""

from importlib.metadata import PackageNotFoundError, version

from .store import describe_store, galaxy_stars, open_errors, open_stars, open_store

try:
    __version__ = version("casbi_store")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["__version__", "describe_store", "galaxy_stars", "open_errors", "open_stars",
           "open_store"]
