"""Finding the snapshots of a suite and fingerprinting them.

A suite is a folder of simulation folders (NIHAO layout): ``SUITE/g1.05e10/g1.05e10.00512``.
A snapshot is a file named ``<simulation>.<step>`` with 4-6 digits; its side files (aux arrays,
halo catalogues) share its name as prefix. Only the files extraction reads are fingerprinted.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from casbi_store import MissingInput

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
        raise MissingInput(f"suite folder {root} does not exist")
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


# What extraction reads besides the snapshot: the star arrays it asks pynbody for, the AHF
# catalogue pynbody's AHFCatalogue opens, and the run's parameter file (units). Anything else
# sharing the name (pynbody's .AHF_fpos caches, other codes' outputs) is not read, so not hashed.
READ_ARRAYS = ("FeMassFrac", "OxMassFrac", "metals")
AHF_SUFFIXES = (".AHF_halos", ".AHF_particles", ".AHF_substructure")
PARAM_SUFFIX = ".param"


def side_files(snapshot: Path) -> list[Path]:
    """The files extraction reads besides ``snapshot``: its star arrays, AHF catalogue and the
    simulation's ``.param`` file (same folder)."""
    prefix = snapshot.name + "."
    arrays = {prefix + name for name in READ_ARRAYS}
    return sorted(p for p in snapshot.parent.iterdir() if p.is_file() and (
        p.name in arrays
        or (p.name.startswith(prefix) and p.name.endswith(AHF_SUFFIXES))
        or p.name.endswith(PARAM_SUFFIX)))


def fingerprint(snapshot: Path) -> str:
    """Content fingerprint of a snapshot and the side files extraction reads (:func:`side_files`).

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
