"""``casbi-store compose``: a versioned training set into the store, registered in a catalog."""

from __future__ import annotations

import argparse
import os


def add_parser(sub) -> None:
    c = sub.add_parser("compose", help="compose a versioned training set into the store")
    c.add_argument("store")
    c.add_argument("--spec", required=True, help="YAML spec (see pipelines/specs/)")
    c.add_argument("--version", help="override the spec's version (v1, v2, ...)")
    c.add_argument("--catalog", default="catalogs/casbi.yaml",
                   help="intake catalog to register the set in, relative to the working directory "
                        "(default %(default)s; '' for none). One catalog describes one store: a "
                        "catalog that describes another store is refused before composing (give "
                        "this store its own --catalog), one whose store no longer exists is "
                        "re-pointed")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=run)


def compose_and_register(store: str | os.PathLike, spec, catalog: str | None, *,
                         progress: bool = True) -> dict:
    """Compose ``spec`` (a ``compose.ComposeSpec``) into ``store`` on the active Dask scheduler
    (a distributed client where one is open), register it in ``catalog`` (if any) and say so."""
    from casbi_store.compose import compose
    from casbi_store.compose.catalog import check_catalog, update_catalog

    if catalog:
        check_catalog(catalog, store)  # refuse before composing, not after
    entry = compose(store, spec, progress=progress)
    counts = ", ".join(f"{k} {v}" for k, v in entry["counts"].items())
    print(f"training set {spec.name}:{spec.version}: {counts} halos, checksum {entry['checksum'][:12]}")
    if catalog:
        path = os.path.normpath(update_catalog(catalog, store))
        print(f"  catalog    {path}")
        print(f'  load it    intake.open_catalog("{path}").{spec.name}'
              f'(version="{spec.version}", split="test").to_dask()')
    return entry


def run(args: argparse.Namespace) -> int:
    from casbi_store.compose import ComposeSpec

    spec = ComposeSpec.from_yaml(args.spec)
    if args.version:
        spec = ComposeSpec.from_dict({**spec.__dict__, "version": args.version}, where=args.spec)
    compose_and_register(args.store, spec, args.catalog, progress=not args.quiet)
    return 0
