"""``casbi-store validate``: check a store (schema, chunks, counts, members, checksums)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    v = sub.add_parser("validate", help="check a store: schema, chunks, counts, members, checksums")
    v.add_argument("store")
    v.set_defaults(func=run)


def validate(store: str) -> int:
    """Print every problem of ``store`` and a verdict; 1 if there is any problem."""
    from casbi_store.store.validate import validate_store

    problems = validate_store(store)
    for problem in problems:
        print(problem)
    print(f"{store}: {'valid' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def run(args: argparse.Namespace) -> int:
    return validate(args.store)
