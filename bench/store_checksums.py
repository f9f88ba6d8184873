"""Checksums of a store's bits, to compare stores made by two versions of the code.

Every file of the extraction's groups (chunk files, ``.zarray``, ``.zattrs``, ``.zgroup``) is
hashed as it is on disk; the root ``.zattrs`` and ``.zmetadata`` are hashed without what differs
between identical runs (the provenance records: times, host, seconds). The chunk digests
recorded in ``.zmetadata`` (``casbi_digests``) are part of it. Prints one JSON object: a SHA-256
per group, one over everything, and the number of files; ``--files`` lists each file's.

    python bench/store_checksums.py STORE [--files]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

GROUPS = ("galaxies", "stars", "histograms", "errors")


def _without_provenance(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k != "provenance"}


def file_digests(store: Path) -> dict[str, str]:
    out = {}
    for group in GROUPS:
        for path in sorted((store / group).rglob("*")):
            if path.is_file():
                out[path.relative_to(store).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    root = json.loads((store / ".zattrs").read_text())
    out[".zattrs"] = _digest_json(_without_provenance(root))
    zmeta = json.loads((store / ".zmetadata").read_text())
    zmeta["metadata"][".zattrs"] = _without_provenance(zmeta["metadata"][".zattrs"])
    zmeta["metadata"] = {k: v for k, v in zmeta["metadata"].items()
                         if k.split("/")[0] in (*GROUPS, ".zattrs", ".zgroup")}
    out[".zmetadata"] = _digest_json(zmeta)
    return out


def _digest_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def summary(store: Path) -> dict:
    files = file_digests(store)
    by_group = {}
    for group in (*GROUPS, ".zattrs", ".zmetadata"):
        keys = sorted(k for k in files if k == group or k.startswith(f"{group}/"))
        by_group[group] = hashlib.sha256("".join(f"{k}={files[k]}\n" for k in keys).encode()
                                         ).hexdigest()[:16]
    everything = hashlib.sha256("".join(f"{k}={v}\n" for k, v in sorted(files.items())).encode())
    return {"all": everything.hexdigest()[:16], "files": len(files), **by_group}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store", type=Path)
    p.add_argument("--files", action="store_true", help="also list every file's SHA-256")
    args = p.parse_args()
    out = summary(args.store)
    if args.files:
        out["per_file"] = file_digests(args.store)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
