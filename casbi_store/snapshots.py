"""Finding the snapshots of a suite and fingerprinting them.

A suite is a folder of simulation folders (NIHAO layout): ``SUITE/g1.05e10/g1.05e10.00512``.
A snapshot is a file named ``<simulation>.<step>`` with 4-6 digits; its side files (aux arrays,
halo catalogues) share its name as prefix.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

SNAPSHOT_PATTERN = re.compile(r"^(?P<sim>.+)\.(?P<step>\d{4,6})$")
FINGERPRINT_BLOCK = 65_536


@dataclass(frozen=True, order=True)
class SnapshotRef:
    """Where a snapshot is, and who it is. Sorting orders by simulation, then step."""

    simulation: str
    step: int
    name: str  # file name, e.g. g1.05e10.00512 (the seed's Galaxy_name)
    relpath: str  # relative to the suite root

    def path(self, root: str | os.PathLike) -> Path:
        return Path(root) / self.relpath


def find_snapshots(root: str | os.PathLike) -> list[SnapshotRef]:
    """All snapshots of a suite (or of one simulation folder), sorted by simulation and step."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"suite folder {root} does not exist")
    folders = [root, *sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))]
    refs = []
    for folder in folders:
        for entry in os.scandir(folder):
            m = SNAPSHOT_PATTERN.match(entry.name)
            if m and entry.is_file():
                refs.append(SnapshotRef(
                    simulation=m["sim"], step=int(m["step"]), name=entry.name,
                    relpath=str(Path(entry.path).relative_to(root)),
                ))
    return sorted(refs)


def side_files(snapshot: Path) -> list[Path]:
    """The snapshot's aux arrays and halo-catalogue files (same name, longer suffix)."""
    prefix = snapshot.name + "."
    return sorted(p for p in snapshot.parent.iterdir() if p.name.startswith(prefix))


def fingerprint(snapshot: Path) -> str:
    """Content fingerprint of a snapshot and its side files.

    Hashes each file's name, size, first and last 64 KiB: cheap on multi-GB NIHAO files, stable
    under copying (no mtimes), and it changes when a file is truncated, replaced or added.
    """
    h = hashlib.blake2b(digest_size=16)
    for path in [snapshot, *side_files(snapshot)]:
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            h.update(f.read(FINGERPRINT_BLOCK))
            if size > FINGERPRINT_BLOCK:
                f.seek(max(FINGERPRINT_BLOCK, size - FINGERPRINT_BLOCK))
                h.update(f.read())
    return h.hexdigest()
