"""``casbi-store validate``: check a store (schema, chunks, counts, members, checksums, digests)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    v = sub.add_parser("validate", help="check a store: schema, chunks, counts, members, "
                                        "checksums and every chunk's digest")
    v.add_argument("store")
    v.add_argument("--quick", action="store_true",
                   help="skip comparing chunks with their recorded digests (structure, counts "
                        "and training-set checksums only)")
    v.set_defaults(func=run)


def validate(store: str, quick: bool = False) -> int:
    """Print every problem of ``store`` and a verdict; 1 if there is any problem. A store that
    is not there is bad input (``MissingInput``: one line, rc 2), not a damaged store."""
    import os

    from casbi_store import MissingInput
    from casbi_store.store.validate import validate_store

    if "://" not in str(store) and not os.path.exists(store):
        raise MissingInput(f"{store}: no store there (the path does not exist)")

    report: dict = {}
    problems = validate_store(store, quick=quick, report=report)
    for problem in problems:
        print(problem)
    if quick:
        digests = "digests not checked (--quick)"
    elif report.get("digests"):
        digests = f"{report['digests']} chunk digests verified"
    else:
        digests = "no digests recorded (a store written before they were): structure checked"
    print(f"{store}: {'valid' if not problems else f'{len(problems)} problem(s)'}; {digests}")
    return 1 if problems else 0


def run(args: argparse.Namespace) -> int:
    return validate(args.store, args.quick)
