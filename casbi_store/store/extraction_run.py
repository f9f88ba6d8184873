"""Running the extraction of a whole suite on a Dask cluster into the store.

One Dask task per snapshot. Each finished task is staged on disk next to the store
(``STORE.staging/``) as it arrives, so a killed run resumes without redoing finished snapshots;
at the end all outcomes are committed in (simulation, step) order, so the store does not depend
on the number of workers or the order in which tasks finished. The commit runs while the cluster
is up: its workers write the star and histogram chunks (:mod:`casbi_store.store.chunkwrite`)
and this process publishes.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from casbi_store import InputError

from . import commit
from . import schema as S
from .abundances import SOLAR_CONSTANTS
from .atomic import atomic_path, atomic_write_text
from .binning import Binning, BinningSpec, resolve_binning
from .chunkwrite import ChunkRunner
from .cluster import ClusterSpec, cluster_client
from .extract import ErrorKind, ExtractionSettings, extract_outcome
from .io import GalaxyBatch, StoreError, StoreWriter, check_target, coverage_summary
from .locks import store_lock
from .provenance import provenance
from .snapshots import SnapshotRef, find_snapshots, fingerprint

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one extraction run did."""

    store: str
    n_snapshots: int = 0
    skipped: int = 0
    ok: int = 0
    excluded: int = 0
    failed: int = 0
    source_changed: int = 0
    n_stars: int = 0
    seconds: float = 0.0
    dashboard: str = ""
    binning_version: int | None = None
    repaired: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase
    failures: dict[str, str] = field(default_factory=dict)  # name -> kind
    coverage: list[str] = field(default_factory=list)  # stars outside the binning, warnings

    def as_text(self) -> str:
        lines = [
            f"store          {self.store}",
            f"snapshots      {self.n_snapshots} found, {self.skipped} already in the store",
            f"extracted      {self.ok} ok, {self.excluded} excluded, {self.failed} failed"
            + (f", {self.source_changed} changed since extraction" if self.source_changed else ""),
            f"stars          {self.n_stars:,} written",
            f"binning        version {self.binning_version}",
            *self.coverage,
            f"time           {self.seconds:.1f} s ("
            + ", ".join(f"{k} {v:.1f}" for k, v in self.phases.items()) + ")",
        ]
        if self.dashboard:
            lines.append(f"dashboard      {self.dashboard}")
        for name, kind in sorted(self.failures.items()):
            lines.append(f"  not used: {name:<28} {kind}")
        if outside := sum(kind == ErrorKind.OUTSIDE_BINNING for kind in self.failures.values()):
            lines.append(f"WARNING        {outside} snapshots have every star outside the fixed "
                         f"binning ranges ({ErrorKind.OUTSIDE_BINNING}): not used")
        if self.repaired:
            lines.append("repaired       " + "; ".join(self.repaired))
        return "\n".join(lines)


def _extract_task(path: str, settings: dict, staging: Staging, name: str, fp: str,
                  fixed_binning: Binning | None = None) -> dict:
    """Extract on a worker and stage the outcome there (shared file system), returning only its
    metadata; where the worker cannot write the staging folder, the arrays travel back instead."""
    outcome = extract_outcome(path, ExtractionSettings(**settings), fixed_binning)
    try:
        staging.put(name, fp, outcome)
    except OSError:
        return outcome
    finally:
        _collect_now_and_then(path)
    return {**_metadata(outcome), "staged": True}


# A pynbody snapshot holds reference cycles, which Python's collector frees only on its
# allocation counts: over a large galaxy's snapshots a worker's RSS climbed to 1.5 GB
# (bench/README "Scale"). A full collection costs ~80 ms with pynbody and Dask in the heap,
# which after every one of the demo's 785 small snapshots doubled its extraction time, so a
# worker collects once the snapshot files it has read since its last collection pass this size.
COLLECT_EVERY_BYTES = 128 * 2**20
_read_since_collect = [0]


def _collect_now_and_then(path: str) -> None:
    with contextlib.suppress(OSError):
        _read_since_collect[0] += os.path.getsize(path)
    if _read_since_collect[0] >= COLLECT_EVERY_BYTES:
        gc.collect()
        _read_since_collect[0] = 0


def _metadata(outcome: dict) -> dict:
    return {k: v for k, v in outcome.items() if not isinstance(v, np.ndarray)}


class Staging:
    """Finished outcomes on disk, keyed by snapshot name and fingerprint."""

    def __init__(self, store: str):
        self.dir = Path(f"{os.fspath(store).rstrip('/')}.staging").resolve()

    def _stem(self, name: str, fp: str) -> Path:
        return self.dir / f"{name}.{fp}"

    def get(self, name: str, fp: str, arrays: bool = True) -> dict | None:
        """The staged outcome, or None; ``arrays=False`` reads only the small metadata."""
        meta = self._stem(name, fp).with_suffix(".json")
        if not meta.exists():
            return None
        outcome = json.loads(meta.read_text())
        if arrays and outcome["status"] == "ok":
            with np.load(self._stem(name, fp).with_suffix(".npz")) as arrays:
                outcome.update({k: arrays[k] for k in arrays.files})
        return outcome

    def arrays_file(self, name: str, fp: str) -> Path:
        """The ``.npz`` of a staged galaxy's star arrays."""
        return self._stem(name, fp).with_suffix(".npz")

    def put(self, name: str, fp: str, outcome: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = self._stem(name, fp)
        arrays = {k: v for k, v in outcome.items() if isinstance(v, np.ndarray)}
        if arrays:
            with atomic_path(stem.with_suffix(".npz")) as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)
        atomic_write_text(stem.with_suffix(".json"), json.dumps(_metadata(outcome)))  # last

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def extract_suite(
    suite: str | os.PathLike,
    store: str | os.PathLike,
    *,
    settings: ExtractionSettings | None = None,
    binning: BinningSpec | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    cluster: ClusterSpec | None = None,
    client=None,
    retry_failed: bool = False,
    progress: bool = True,
    staged_only: bool = False,
) -> RunSummary:
    """Extract every new snapshot of ``suite`` into ``store`` and update the histograms.

    Snapshots already recorded with the same fingerprint (as galaxies, failures or exclusions)
    are skipped; ``retry_failed`` re-attempts recorded failures. Where it runs: an open
    ``client`` (``distributed.Client``, left open), or the ``cluster`` a ``ClusterSpec`` describes,
    started and closed here; ``scheduler`` (address of a running Dask scheduler) and ``n_workers``
    (LocalCluster processes, default one per core) are the short form of the latter.
    ``staged_only`` starts no cluster and commits outcomes a killed run has staged (every snapshot
    to extract must be staged).
    """
    if sum(x is not None for x in (client, cluster)) + bool(scheduler or n_workers) > 1:
        raise InputError("give one of client, cluster, or scheduler/n_workers")
    cluster = cluster or ClusterSpec.from_options(scheduler, n_workers)
    settings = settings or ExtractionSettings()
    binning = binning or BinningSpec()
    suite = Path(suite).resolve()
    store = os.fspath(store)
    refs = find_snapshots(suite)  # before touching the store: a bad suite leaves nothing behind
    if not refs:
        raise InputError(f"{suite}: no snapshots found (expected SUITE/<sim>/<sim>.<step>, "
                         "NIHAO layout): not a simulation suite")
    check_target(Path(store))
    existed = Path(store).exists()
    with store_lock(store, "store", purpose=f"casbi-store extract {suite} --store {store}"):
        try:
            return _extract_locked(suite, store, refs, settings, binning, cluster, client,
                                   retry_failed, progress, staged_only)
        except BaseException as exc:
            if not existed and commit.committed(store) is None:
                shutil.rmtree(store, ignore_errors=True)  # made by this run, nothing committed
            elif _no_space(exc) and Path(store).exists():
                with contextlib.suppress(OSError):  # else the next writer rolls it back
                    commit.recover(store)  # give back what the failed commit wrote
            if _no_space(exc):
                raise StoreError(_no_space_message(store, existed)) from None
            raise


def _no_space(exc: BaseException) -> bool:
    """True if ``exc`` or what it was raised from is "no space left on device" (or quota)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _no_space_message(store: str, existed: bool) -> str:
    """One line: where, how much the run needed (its staged outcomes, the stars' bulk) and had."""
    staging = Staging(store)
    needed = sum(p.stat().st_size for p in staging.dir.glob("*.npz")) if staging.dir.is_dir() else 0
    folder = Path(store) if Path(store).exists() else Path(store).parent
    free = shutil.disk_usage(folder).free
    need = f"about {needed / 2**20:.1f} MiB more were needed, " if needed else ""
    return (f"{store}: no space left on device while writing ({need}{free / 2**20:.1f} MiB free); "
            + ("nothing changed: the store is as it was before this run" if existed else
               "nothing was written") + "; free some space and re-run (finished snapshots are "
            f"kept in {staging.dir})")


def _extract_locked(suite: Path, store: str, refs: list[SnapshotRef], settings, binning,
                    cluster: ClusterSpec, client, retry_failed: bool, progress: bool,
                    staged_only: bool = False) -> RunSummary:
    start = time.perf_counter()
    extraction_attrs = {**asdict(settings), "solar": SOLAR_CONSTANTS, "halo_finder": "AHF"}
    writer = StoreWriter(store, extraction_attrs, binning)  # recovers before the cluster starts
    summary = RunSummary(store=store)
    summary.repaired = writer.repair()
    summary.n_snapshots = len(refs)
    plan = _Plan(writer.galaxy_index(), writer.error_rows(), retry_failed, summary)
    staging = Staging(store)
    clock = time.perf_counter()
    if staged_only:
        outcomes = _scan_staged(refs, suite, plan, staging)
        summary.phases["scan+extract"] = time.perf_counter() - clock
        commit_outcomes(writer, plan, outcomes, staging, suite, summary, start)
    else:
        opened = contextlib.nullcontext(client) if client is not None else cluster_client(cluster)
        with opened as client:
            summary.phases["cluster_start"] = time.perf_counter() - clock
            summary.dashboard = client.dashboard_link or ""
            log.info("Dask dashboard: %s", summary.dashboard)
            clock = time.perf_counter()
            fixed = resolve_binning(binning, [], []) if binning.method == "fixed" else None
            outcomes = _scan_and_extract(client, refs, suite, settings, plan, staging, progress,
                                         fixed)
            summary.phases["scan+extract"] = time.perf_counter() - clock
            # the workers write the commit's chunks where they share the staging folder's file
            # system (they staged their outcomes themselves); otherwise this process does
            writer.runner = ChunkRunner(None if plan.staged_here else client)
            commit_outcomes(writer, plan, outcomes, staging, suite, summary, start)
    staging.clear()
    log.info("extraction of %s done: %d ok, %d excluded, %d failed, %d skipped in %.1f s", suite,
             summary.ok, summary.excluded, summary.failed, summary.skipped, summary.seconds)
    return summary


def commit_outcomes(writer: StoreWriter, plan: _Plan, outcomes: dict[str, dict], staging: Staging,
                    suite: Path, summary: RunSummary, start: float) -> None:
    """Write the staged outcomes of ``plan.todo`` and publish them in one atomic commit."""
    errors, prints = plan.errors, plan.prints
    todo = sorted(plan.todo)  # commit order is (simulation, step), whatever finished first
    ok_refs = []
    for ref in todo:
        outcome = outcomes[ref.name]
        if outcome["status"] == "ok":
            ok_refs.append(ref)
            errors.pop(ref.relpath, None)
        else:
            errors[ref.relpath] = _error_row(ref, outcome["status"], outcome["kind"],
                                             prints[ref.name], outcome["message"])
            summary.failures[ref.name] = outcome["kind"]
            if outcome["status"] == "excluded":
                summary.excluded += 1
            else:
                summary.failed += 1
    summary.ok = len(ok_refs)
    summary.n_stars = sum(int(outcomes[r.name]["n_star"]) for r in ok_refs)

    clock = time.perf_counter()
    added = writer.append_galaxies([_batch(ok_refs, staging, prints, suite)])
    writer.write_errors(errors)
    summary.phases["commit"] = time.perf_counter() - clock
    clock = time.perf_counter()
    if added or (writer.n_galaxies() and not writer.binning_current()):
        summary.binning_version = writer.update_binning(new_rows=added)["version"]
    elif writer.n_galaxies():
        summary.binning_version = writer.binning_version()
    summary.phases["histograms"] = time.perf_counter() - clock
    summary.seconds = time.perf_counter() - start
    writer.commit(provenance(
        action="extract", suite=str(suite), ok=summary.ok, excluded=summary.excluded,
        failed=summary.failed, skipped=summary.skipped, stars=summary.n_stars,
        seconds=round(summary.seconds, 2), binning_version=summary.binning_version))
    summary.coverage = coverage_summary(writer.path, width=15)  # as readers see it now


class _Plan:
    """Decides, from a snapshot's fingerprint, whether it needs extracting."""

    def __init__(self, known: dict[str, str], errors: dict[str, dict], retry_failed: bool,
                 summary: RunSummary):
        self.known, self.errors, self.retry_failed, self.summary = known, errors, retry_failed, summary
        self.prints: dict[str, str] = {}
        self.todo: list[SnapshotRef] = []
        self.staged_here = False  # a worker could not write the staging folder

    def needs_extraction(self, ref: SnapshotRef, fp: str) -> bool:
        self.prints[ref.name] = fp
        if ref.name in self.known:
            if self.known[ref.name] == fp:
                self.summary.skipped += 1
            else:
                self.errors[ref.relpath] = _error_row(
                    ref, "failed", ErrorKind.SOURCE_CHANGED, fp,
                    f"{ref.relpath}: changed since it was extracted (fingerprint differs); "
                    "extract into a new store")
                self.summary.source_changed += 1
            return False
        previous = self.errors.get(ref.relpath)
        if previous and previous["fingerprint"] == fp and not (
                self.retry_failed and previous["status"] == "failed"):
            self.summary.skipped += 1
            return False
        self.todo.append(ref)
        return True


def _scan_and_extract(client, refs, suite: Path, settings, plan: _Plan, staging: Staging,
                      progress: bool, fixed_binning: Binning | None = None) -> dict[str, dict]:
    """Fingerprint (one task per simulation) and extract (one task per snapshot) on the cluster.

    A simulation's snapshots are submitted for extraction as soon as its fingerprints are back, so
    the scan overlaps the extraction. Outcomes are staged on disk as they arrive; the returned
    dict holds their small metadata only.
    """
    from dask.distributed import as_completed

    by_sim: dict[str, list[SnapshotRef]] = {}
    for ref in refs:
        by_sim.setdefault(ref.simulation, []).append(ref)
    scans = {client.submit(_fingerprint_task, [str(r.path(suite)) for r in group], pure=False):
             group for group in by_sim.values()}
    extractions: dict = {}
    outcomes: dict[str, dict] = {}
    bar = tqdm(total=len(refs), desc="extracting", unit="snap", disable=not progress)
    queue = as_completed(scans, loop=client.loop)  # client need not be the default one
    for fut in queue:
        if fut in scans:
            for ref, fp in zip(scans[fut], fut.result(), strict=True):
                if not plan.needs_extraction(ref, fp):
                    bar.update()
                elif (staged := staging.get(ref.name, fp, arrays=False)) is not None:
                    outcomes[ref.name] = staged  # finished by a run that was killed
                    bar.update()
                else:
                    job = client.submit(_extract_task, str(ref.path(suite)), asdict(settings),
                                        staging, ref.name, fp, fixed_binning,
                                        key=f"extract-{ref.name}-{fp[:8]}",
                                        pure=False)
                    extractions[job] = ref
                    queue.add(job)
            continue
        ref = extractions.pop(fut)
        try:
            outcome = fut.result()
        except Exception as exc:  # worker died, task lost: record, do not stop
            outcome = {"status": "failed", "kind": str(ErrorKind.UNEXPECTED),
                       "message": f"{ref.relpath}: task failed on the cluster: {exc!r}"}
        if not outcome.pop("staged", False):
            staging.put(ref.name, plan.prints[ref.name], outcome)
            plan.staged_here = True
        outcomes[ref.name] = _metadata(outcome)
        fut.release()
        bar.update()
        if outcome["status"] != "ok":
            bar.write(f"  {outcome['status']}: {ref.name} ({outcome['kind']})")
    bar.close()
    return outcomes


def _scan_staged(refs: list[SnapshotRef], suite: Path, plan: _Plan,
                 staging: Staging) -> dict[str, dict]:
    """Fingerprint here and take every outcome from the staging folder (no cluster)."""
    outcomes = {}
    for ref in refs:
        fp = fingerprint(ref.path(suite))
        if plan.needs_extraction(ref, fp):
            if (staged := staging.get(ref.name, fp, arrays=False)) is None:
                raise FileNotFoundError(f"{staging.dir}: no staged outcome of {ref.relpath}")
            outcomes[ref.name] = staged
    return outcomes


def _fingerprint_task(paths: list[str]) -> list[str]:
    return [fingerprint(Path(p)) for p in paths]


def _error_row(ref: SnapshotRef, status: str, kind: str, fp: str, message: str) -> dict:
    return {S.ERR_PATH.name: ref.relpath, S.ERR_NAME.name: ref.name,
            S.ERR_SIMULATION.name: ref.simulation, S.ERR_STATUS.name: status,
            S.ERR_KIND.name: str(kind), S.ERR_MESSAGE.name: message,
            S.ERR_FINGERPRINT.name: fp}


def _batch(refs: list[SnapshotRef], staging: Staging, prints: dict, suite: Path) -> GalaxyBatch:
    """The galaxy rows of ``refs`` from their staged metadata; the stars stay in the staged
    files, which the chunk tasks read."""
    rows = [staging.get(r.name, prints[r.name], arrays=False) for r in refs]
    columns = {
        S.NAME.name: [r.name for r in refs],
        S.SIMULATION.name: [r.simulation for r in refs],
        S.SNAPSHOT.name: [r.step for r in refs],
        S.SOURCE_PATH.name: [r.relpath for r in refs],
        S.SUITE_ROOT.name: [str(suite)] * len(refs),
        S.FINGERPRINT.name: [prints[r.name] for r in refs],
    }
    for f in (S.TIME, S.REDSHIFT, S.MSTAR, S.MDM, S.N_STAR, S.N_STAR_DROPPED, S.HALO_NUMBER):
        columns[f.name] = [row[f.name] for row in rows]
    return GalaxyBatch(columns=columns,
                       star_files=[os.fspath(staging.arrays_file(r.name, prints[r.name]))
                                   for r in refs])
