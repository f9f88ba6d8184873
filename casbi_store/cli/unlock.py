"""``casbi-store unlock``: break a stale lock left by a killed writer."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    un = sub.add_parser("unlock", help="break a stale lock left by a killed writer")
    un.add_argument("store")
    un.add_argument("--name", default="store",
                    help="lock name: store (extraction) or set-NAME-VERSION (compose)")
    un.add_argument("--force", action="store_true",
                    help="break it even if its holder still runs on this host (dangerous)")
    un.set_defaults(func=run)


def unlock(store: str, name: str = "store", *, force: bool = False) -> int:
    """Break the lock ``name`` of ``store`` and say whose it was."""
    from casbi_store.store.locks import break_lock

    holder = break_lock(store, name, force=force)
    print(f"{store}: broke lock {name!r} held by host {holder.get('host', '?')}, "
          f"pid {holder.get('pid', '?')} since {holder.get('started_utc', '?')}")
    return 0


def run(args: argparse.Namespace) -> int:
    return unlock(args.store, args.name, force=args.force)
