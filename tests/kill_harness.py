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
that a re-run converges to the clean run's arrays. Besides every N-th write, each commit is killed
at every write of its error table and while creating each of its locks (the temporary file
written; linked), and a compose of a training set on the finished store is killed while creating
its locks and as soon as its draft folder appears. Nobody breaks a lock: a re-run refused by a
lock counts as a run that needed ``casbi-store unlock`` (there must be none). Prints one JSON
object: kill points tried, outcomes, failures, runs that needed unlock.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import dask.array  # noqa: F401  (imported once here, not in every forked child)
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from conftest import store_arrays  # noqa: E402

from casbi_store.store import commit, locks, trainingsets  # noqa: E402
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
            locks._created = 0
            os.environ.update(env)
            extract_suite(suite, store, staged_only=True, progress=False)
        except locks.LockHeld:
            traceback.print_exc()
            code = 4
        except BaseException:
            traceback.print_exc()
            code = 3
        os._exit(code)
    return os.waitpid(pid, 0)[1]


NEEDS_UNLOCK = 4 << 8  # wait status of a child refused by a lock


COMPOSE = """
import sys
from casbi_store.compose import ComposeSpec, compose
from casbi_store.store.locks import LockHeld
try:
    compose(sys.argv[1], ComposeSpec(**{**eval(sys.argv[2]), "version": sys.argv[3]}),
            progress=False)
except LockHeld as exc:
    print(exc, file=sys.stderr)
    sys.exit(4)
"""


def _child_compose(store: Path, version: str, kill_lock: str = "", kill_at_draft: bool = False
                   ) -> int:
    """Compose ``sets:<version>`` in a child process (a fork would inherit the zarr and dask
    threads mid-flight), SIGKILLed while creating lock ``kill_lock`` or as soon as its draft
    folder appears; return its status as ``os.waitpid`` gives it."""
    env = {**os.environ, **({locks.KILL_ENV: kill_lock} if kill_lock else {})}
    proc = subprocess.Popen([sys.executable, "-c", COMPOSE, str(store), repr(SET_SPEC), version],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_at_draft:
        folder = store / "training_sets" / SET_SPEC["name"]
        while not list(folder.glob("_draft_*")) and proc.poll() is None:
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
    proc.communicate()
    rc = proc.returncode
    return -rc if rc < 0 else rc << 8  # the wait-status encoding _child_commit returns


SET_SPEC = {"name": "sets", "version": "v1", "n_sub_min": 2, "n_sub_max": 4, "train_per_n": 10,
            "test_per_n": 3}


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
        written = self.work / f"{self.name}.log"
        status = _child_commit(self.suite, self.clean, {commit.COUNT_ENV: str(counter),
                                                        commit.LOG_ENV: str(written)})
        assert status == 0, f"clean commit failed (status {status})"
        self.after = store_arrays(self.clean)
        self.error_writes = [int(line.split()[0]) for line in written.read_text().splitlines()
                             if "errors/" in line]
        return int(counter.read_text())

    def kill_at(self, n: int | str) -> dict:
        """Kill at write ``n``, or while creating a lock (``n`` = "K:step", see ``locks``)."""
        store = self.work / f"{self.name}-kill.zarr"
        self._fresh(store)
        env = {locks.KILL_ENV: n} if isinstance(n, str) else {commit.KILL_ENV: str(n)}
        status = _child_commit(self.suite, store, env)
        result = {"phase": self.name, "write": n, "killed": os.WIFSIGNALED(status)}
        if isinstance(n, str) and not result["killed"]:
            result["killed"] = None  # fewer locks than K: nothing to kill (not a kill point)
        try:
            state = _state(store)  # no unlock: readers and the re-run cope by themselves
            result["seen"] = ("before" if _same(state, self.before) else
                              "after" if _same(state, self.after) else "neither")
            problems = [] if state is None else validate_store(store)
            result["problems"] = [str(p) for p in problems]
            status = _child_commit(self.suite, store, {})  # the re-run
            result["needed_unlock"] = status == NEEDS_UNLOCK
            result["rerun_ok"] = status == 0 and _same(store_arrays(store), self.after)
            result["rerun_valid"] = validate_store(store) == []
        except Exception as exc:  # a finding, not a harness crash
            result["error"] = f"{type(exc).__name__}: {exc}"
        return result


class ComposePhase:
    """Composing a training set on the finished store, killed at its locks and its draft."""

    def __init__(self, store: Path, work: Path):
        self.base, self.work = store, work
        clean = work / "compose-clean.zarr"
        shutil.copytree(store, clean)
        assert _child_compose(clean, "v1") == 0, "clean compose failed"
        self.checksum = trainingsets.versions(clean, "sets")["v1"]["checksum"]

    def kill_at(self, point: str) -> dict:
        store = self.work / "compose-kill.zarr"
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(self.base, store)
        status = _child_compose(store, "v1", kill_lock="" if point == "draft" else point,
                                kill_at_draft=point == "draft")
        result = {"phase": "compose", "write": point, "killed": os.WIFSIGNALED(status) or None}
        try:
            seen = trainingsets.versions(store, "sets").get("v1")
            result["seen"] = ("before" if seen is None else
                              "after" if seen["checksum"] == self.checksum else "neither")
            result["problems"] = [str(p) for p in validate_store(store)]
            statuses = []
            if point == "draft":  # the next compose, of another version, sweeps the dead draft
                statuses.append(_child_compose(store, "v2"))
                result["swept"] = not list((store / "training_sets/sets").glob("_draft_v1_*"))
            statuses.append(_child_compose(store, "v1"))
            statuses.append(_child_commit(self.base.parent / "suite-incremental", store, {}))
            result["needed_unlock"] = NEEDS_UNLOCK in statuses
            published = trainingsets.versions(store, "sets")
            result["rerun_ok"] = (set(statuses) == {0} and result.get("swept", True)
                                  and published["v1"]["checksum"] == self.checksum
                                  and not list((store / "training_sets/sets").glob("_draft_*")))
            result["rerun_valid"] = validate_store(store) == []
        except Exception as exc:
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
    lock_points = [f"{k}:{step}" for k in (1, 2, 3) for step in ("temp", "link")]
    results = []
    for phase in (first_phase, second):
        if phase.name in phases:
            errors = phase.error_writes[::stride] + phase.error_writes[-1:]
            points = sorted({*kill_points(writes[phase.name], stride), *errors})
            results += [phase.kill_at(n) for n in [*points, *lock_points]]
    if "compose" in phases:
        composing = ComposePhase(second.clean, work)
        results += [composing.kill_at(p) for p in ["draft", *lock_points[:4]]]
    results = [r for r in results if r["killed"] is not None]
    bad = [r for r in results if not r["killed"] or r["seen"] == "neither" or r["problems"]
           or not r["rerun_ok"] or not r["rerun_valid"] or r["needed_unlock"] or "error" in r]
    kinds = {"lock creation": sum(isinstance(r["write"], str) and ":" in r["write"]
                                  for r in results),
             "draft creation": sum(r["write"] == "draft" for r in results),
             "error table": sum(r["write"] in phase.error_writes for phase in (first_phase, second)
                                for r in results if r["phase"] == phase.name)}
    return {"writes": writes, "kill_points": len(results), "kinds": kinds,
            "seen": {s: sum(r.get("seen") == s for r in results) for s in ("before", "after")},
            "needed_unlock": sum(bool(r.get("needed_unlock")) for r in results),
            "failures": bad}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", type=Path)
    p.add_argument("work", type=Path, help="empty folder for stores and staging")
    p.add_argument("--first", type=int, default=2, help="simulations in the first commit")
    p.add_argument("--phases", nargs="+", default=["first", "incremental", "compose"],
                   choices=["first", "incremental", "compose"], help="commits to kill")
    p.add_argument("--stride", type=int, default=1,
                   help="kill at every STRIDE-th write (and the last 8); 1: at every write")
    args = p.parse_args()
    print(json.dumps(run(args.suite, args.work, args.first, tuple(args.phases), args.stride)))


if __name__ == "__main__":
    main()
