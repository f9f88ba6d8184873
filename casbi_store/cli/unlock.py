"""``casbi-store unlock``: list a store's locks and clear those whose writer is gone."""

from __future__ import annotations

import argparse

from casbi_store import MissingInput


def add_parser(sub) -> None:
    un = sub.add_parser(
        "unlock", help="list every lock of a store and clear those whose writer is gone",
        description="List every lock of STORE (store: extraction; metadata: the update of "
                    ".zmetadata; set-NAME-VERSION: composing a training set) with its holder, and "
                    "clear each one whose writer is gone (a dead process on this host, or an "
                    "empty/unreadable lock file). Writers already do this by themselves: unlock is "
                    "never needed to re-run after a crash. A lock held from another host (a "
                    "shared filesystem) cannot be checked from here: it is listed and kept unless "
                    "--force.")
    un.add_argument("store")
    un.add_argument("--name", default=None,
                    help="only this lock (store, metadata or set-NAME-VERSION); default: every lock")
    un.add_argument("--force", action="store_true",
                    help="clear locks whose holder may still run (on another host, or alive on "
                         "this one): only once you know that writer is gone")
    un.set_defaults(func=run)


def unlock(store: str, name: str | None = None, *, force: bool = False) -> int:
    """List the locks of ``store`` (or only ``name``) and clear the stale ones (all with
    ``force``); 0 if none is left held, 2 if a live or unverifiable holder keeps one."""
    from casbi_store.store.locks import LockHeld, break_lock, list_locks, lock_path

    held = list_locks(store)
    if name is not None:
        if name not in held:
            raise MissingInput(f"{lock_path(store, name)}: no such lock")
        held = {name: held[name]}
    if not held:
        print(f"{store}: no locks")
        return 0
    kept = 0
    for lock, holder in held.items():
        who = (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')} since "
               f"{holder.get('started_utc', '?')}, command {holder.get('command', '?')!r}"
               if holder.get("host") else "an empty or unreadable lock file")
        try:
            break_lock(store, lock, force=force)
        except LockHeld:
            print(f"{store}: kept lock {lock!r} held by {who} (may still run; --force clears it)")
            kept += 1
        except FileNotFoundError:
            print(f"{store}: lock {lock!r} was released meanwhile")
        else:
            print(f"{store}: cleared lock {lock!r} "
                  f"({'stale' if holder['stale'] else 'forced'}): {who}")
    return 2 if kept else 0


def run(args: argparse.Namespace) -> int:
    return unlock(args.store, args.name, force=args.force)
