"""Kill-at-every-write harness: SIGKILL an extraction commit at each of its writes in turn.

Run as a script (``python tests/kill_harness.py SUITE WORK --first K``; the test suite runs it on
the tiny suite). Every snapshot's outcome is extracted once and staged; each trial then commits
the staged outcomes (``extract_suite(staged_only=True)``, no cluster) in a forked child whose
N-th write (chunk, metadata file, rename, delete) SIGKILLs it, for every N of a clean commit
(``--stride`` thins them for the test suite's time budget). Two commits are tried: the first
one into a new store (the first K simulations) and an incremental one adding the rest (new rows,
a changed error table, a binning rebuild). After each kill the harness breaks the dead writer's
stale lock (as ``casbi-store unlock`` would) and checks that the store reads as exactly the
state before or after the commit (every array equal), that ``validate`` finds no problem, and
that a re-run converges to the clean run's arrays. Prints one JSON object: kill points tried,
outcomes, failures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

import dask.array  # noqa: F401  (imported once here, not in every forked child)
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from conftest import store_arrays  # noqa: E402

from casbi_store.store import commit, locks  # noqa: E402
from casbi_store.store.extract import ExtractionSettings, extract_outcome  # noqa: E402
from casbi_store.store.extraction_run import Staging, extract_suite  # noqa: E402
from casbi_store.store.io import StoreError, open_store  # noqa: E402
from casbi_store.store.snapshots import find_snapshots, fingerprint  # noqa: E402
from casbi_store.store.validate import validate_store  # noqa: E402


def _child_commit(suite: Path, store: Path, env: dict[str, str]) -> int:
    """Commit the staged outcomes in a forked child; return its wait status."""
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            # the parent's own writes (rolling a killed store forward when it reads it) are
            # counted too; the child's count must start at 0 for "kill at N" to mean write N
            commit._writes = 0
            os.environ.update(env)
            extract_suite(suite, store, staged_only=True, progress=False)
        except BaseException:
            traceback.print_exc()
            code = 3
        os._exit(code)
    return os.waitpid(pid, 0)[1]


def _same(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return a is b
    return sorted(a) == sorted(b) and all(
        a[k].shape == b[k].shape and np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f")
        for k in a)


def _state(store: Path) -> dict | None:
    """The arrays a reader sees, or None for a store that does not exist (yet)."""
    try:
        open_store(store)
    except StoreError as exc:
        if commit.committed(store) is None:
            return None
        raise AssertionError(f"committed store does not open: {exc}") from exc
    return store_arrays(store)


class Phase:
    """One commit, tried with a kill at each of its writes."""

    def __init__(self, name: str, suite: Path, base: Path | None, staging: Path, work: Path):
        self.name, self.suite, self.base, self.staging, self.work = name, suite, base, staging, work

    def _fresh(self, store: Path) -> None:
        for p in (store, Path(f"{store}.staging")):
            shutil.rmtree(p, ignore_errors=True)
        if self.base is not None:
            shutil.copytree(self.base, store)
        shutil.copytree(self.staging, f"{store}.staging", copy_function=os.link)

    def clean_run(self) -> int:
        """Commit without a kill; remember before/after arrays; return the number of writes."""
        self.clean = self.work / f"{self.name}-clean.zarr"
        self._fresh(self.clean)
        self.before = None if self.base is None else store_arrays(self.base)
        counter = self.work / f"{self.name}.writes"
        status = _child_commit(self.suite, self.clean, {commit.COUNT_ENV: str(counter)})
        assert status == 0, f"clean commit failed (status {status})"
        self.after = store_arrays(self.clean)
        return int(counter.read_text())

    def kill_at(self, n: int) -> dict:
        store = self.work / f"{self.name}-kill.zarr"
        self._fresh(store)
        status = _child_commit(self.suite, store, {commit.KILL_ENV: str(n)})
        result = {"phase": self.name, "write": n, "killed": os.WIFSIGNALED(status)}
        try:
            if locks.lock_path(store, "store").exists():
                locks.break_lock(store, "store")  # what `casbi-store unlock` does
            state = _state(store)
            result["seen"] = ("before" if _same(state, self.before) else
                              "after" if _same(state, self.after) else "neither")
            problems = [] if state is None else validate_store(store)
            result["problems"] = [str(p) for p in problems]
            status = _child_commit(self.suite, store, {})  # the re-run
            result["rerun_ok"] = status == 0 and _same(store_arrays(store), self.after)
            result["rerun_valid"] = validate_store(store) == []
        except Exception as exc:  # a finding, not a harness crash
            result["error"] = f"{type(exc).__name__}: {exc}"
        return result


def stage_everything(suite: Path, staging_dir: Path, settings: ExtractionSettings) -> None:
    staging = Staging(str(staging_dir).removesuffix(".staging"))
    for ref in find_snapshots(suite):
        path = ref.path(suite)
        staging.put(ref.name, fingerprint(path), extract_outcome(str(path), settings))


def kill_points(writes: int, stride: int, tail: int = 8) -> list[int]:
    """Every ``stride``-th write, and each of the last ``tail`` (publishing) writes."""
    return sorted({*range(1, writes + 1, stride), *range(max(1, writes - tail + 1), writes + 1)})


def run(suite: Path, work: Path, first: int, phases: tuple[str, ...], stride: int = 1) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    sims = sorted(p for p in suite.iterdir() if p.is_dir())
    suites = {}
    for name, chosen in (("first", sims[:first]), ("incremental", sims)):
        folder = work / f"suite-{name}"
        folder.mkdir()
        for sim in chosen:
            (folder / sim.name).symlink_to(sim.resolve())
        suites[name] = folder
    staging = work / "all.staging"
    stage_everything(suite, staging, ExtractionSettings())
    first_phase = Phase("first", suites["first"], None, staging, work)
    writes = {"first": first_phase.clean_run()}
    second = Phase("incremental", suites["incremental"], first_phase.clean, staging, work)
    writes["incremental"] = second.clean_run()
    results = [phase.kill_at(n) for phase in (first_phase, second) if phase.name in phases
               for n in kill_points(writes[phase.name], stride)]
    bad = [r for r in results if not r["killed"] or r["seen"] == "neither" or r["problems"]
           or not r["rerun_ok"] or not r["rerun_valid"] or "error" in r]
    return {"writes": writes, "kill_points": len(results),
            "seen": {s: sum(r.get("seen") == s for r in results) for s in ("before", "after")},
            "failures": bad}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", type=Path)
    p.add_argument("work", type=Path, help="empty folder for stores and staging")
    p.add_argument("--first", type=int, default=2, help="simulations in the first commit")
    p.add_argument("--phases", nargs="+", default=["first", "incremental"],
                   choices=["first", "incremental"], help="commits to kill at every write")
    p.add_argument("--stride", type=int, default=1,
                   help="kill at every STRIDE-th write (and the last 8); 1: at every write")
    args = p.parse_args()
    print(json.dumps(run(args.suite, args.work, args.first, tuple(args.phases), args.stride)))


if __name__ == "__main__":
    main()
