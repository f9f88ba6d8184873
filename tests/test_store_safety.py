"""A store that survives crashes and concurrent writers (issue 11, part 1), faults injected for
real: concurrent `casbi-store extract` processes, SIGKILL at the store's writes, deleted and
garbled chunk files, sidecar files written by other tools, edge-valued stars."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_same_arrays, consolidate_whole_store, copy_suite, store_arrays

from casbi_store.apply.infer import read_star_table
from casbi_store.cli import main
from casbi_store.mock import generate_suite, preset
from casbi_store.store import locks
from casbi_store.store.binning import (
    Binning,
    BinningSpec,
    bin_index,
    bin_stars,
    histogram_stack,
    resolve_binning,
)
from casbi_store.store.extraction_run import extract_suite
from casbi_store.store.snapshots import find_snapshots
from casbi_store.store.validate import validate_store

TESTS = Path(__file__).parent
CLI = [sys.executable, "-m", "casbi_store.cli"]
ENV = {**os.environ, "PYTHONPATH": str(TESTS.parent)}


def _names(store: Path) -> list[str]:
    root = zarr.open_consolidated(store, mode="r", zarr_format=2)
    return [str(v) for v in root["galaxies/name"][:]]


# ---- one writer at a time -----------------------------------------------------------------------

def test_concurrent_extracts_one_is_refused_naming_the_holder(tiny_suite, tiny_store, tmp_path):
    store = tmp_path / "both.zarr"
    cmd = [*CLI, "extract", str(tiny_suite), "--store", str(store), "--workers", "1", "-q"]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, _, err in results if rc == 2)
    assert "another writer holds this store" in refused and "pid" in refused and "host" in refused
    names = _names(store)
    assert len(names) == len(set(names)) == len(_names(tiny_store[0]))
    assert validate_store(store) == []
    assert not locks.lock_path(store, "store").exists()


def test_a_dead_writers_lock_is_broken_by_the_next_writer(tiny_store, tmp_path, caplog):
    store = tmp_path / "stale.zarr"
    shutil.copytree(tiny_store[0], store)
    # a writer that dies holding the lock (SIGKILL leaves the lock file behind)
    code = ("import os, signal, sys; from casbi_store.store.locks import acquire; "
            "acquire(sys.argv[1], 'store'); os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", code, str(store)], env=ENV, check=False)
    assert locks.list_locks(store)["store"]["stale"]
    with locks.store_lock(store, "store"):  # no unlock needed
        assert "broke the lock of a writer that is gone" in caplog.text
    assert not locks.lock_path(store, "store").exists()
    assert main(["unlock", str(store), "--name", "store"]) == 2  # nothing there: one clear error


# ---- atomic commits: SIGKILL at the store's writes ----------------------------------------------

def test_kill_at_the_writes_of_a_commit_leaves_before_or_after(tiny_suite, tmp_path):
    """tests/kill_harness.py on the tiny suite: a first commit and an incremental one (new rows,
    changed error table, rebuilt histograms), killed at every 80th write, at each of the last 8
    (publishing) writes, at every 80th write of the error table and while creating each lock; a
    compose killed while creating its locks and at its draft's creation. No unlock anywhere.
    `python tests/kill_harness.py SUITE WORK` kills at every write."""
    out = subprocess.run([sys.executable, str(TESTS / "kill_harness.py"), str(tiny_suite),
                          str(tmp_path / "work"), "--first", "2", "--stride", "80"],
                         env=ENV, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    print(f"kill points tried: {report['kill_points']} of {report['writes']} writes; "
          f"seen {report['seen']}")
    assert report["failures"] == []
    assert report["needed_unlock"] == 0  # nobody breaks a lock: re-runs cope by themselves
    assert report["kill_points"] >= 40
    assert report["kinds"]["lock creation"] >= 8 and report["kinds"]["draft creation"] == 1
    assert report["kinds"]["error table"] >= 4
    # both outcomes occur: kills before the commit point leave 'before', after it 'after'
    assert report["seen"]["before"] and report["seen"]["after"]


# ---- validate -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_store(dask_client, tmp_path_factory) -> Path:
    """A store of a suite without defects: no failed snapshots, an empty error table."""
    work = tmp_path_factory.mktemp("clean")
    generate_suite(work / "suite", preset("tiny", seed=3), workers=2, progress=False)
    store = work / "clean.zarr"
    summary = extract_suite(work / "suite", store, client=dask_client, progress=False)
    assert summary.failed == summary.excluded == 0
    return store


def test_store_without_defects_validates_with_zero_problems(clean_store, capsys):
    assert validate_store(clean_store) == []
    assert main(["validate", str(clean_store)]) == 0
    assert "valid" in capsys.readouterr().out
    root = zarr.open_consolidated(clean_store, mode="r", zarr_format=2)
    assert root["errors/path"].shape == (0,) and root["errors/path"].dtype.kind in "OT"


def test_deleted_chunk_is_an_error_not_zeros(tiny_store, tmp_path):
    store = tmp_path / "holes.zarr"
    shutil.copytree(tiny_store[0], store)
    (store / "galaxies" / "n_star_dropped" / "0").unlink()
    (store / "stars" / "feh" / "0").unlink()
    found = {p.path: p.message for p in validate_store(store)}
    assert "chunk file(s) missing" in found["galaxies/n_star_dropped"]
    assert "chunk file(s) missing" in found["stars/feh"]


def test_duplicate_names_and_unequal_table_lengths(tiny_store, tmp_path):
    store = tmp_path / "dup.zarr"
    shutil.copytree(tiny_store[0], store)
    root = zarr.open_group(store, mode="a", zarr_format=2, use_consolidated=False)
    names = root["galaxies/name"]
    names[1] = names[0]
    root["errors/kind"].resize((1,))
    consolidate_whole_store(store)
    found = {p.path: p.message for p in validate_store(store)}
    assert "stored more than once" in found["galaxies/name"]
    assert "differs from galaxies/name" in found["histograms/name"]
    assert "arrays differ in length" in found["errors"]


# ---- fingerprints ---------------------------------------------------------------------------------

def test_sidecar_files_of_other_tools_do_not_change_fingerprints(tiny_suite, tiny_store, tmp_path):
    suite = copy_suite(tiny_suite, tmp_path / "suite")
    store = tmp_path / "store.zarr"
    shutil.copytree(tiny_store[0], store)
    before = store_arrays(store)
    for ref in find_snapshots(suite):  # what tangos / pynbody(write_fpos=True) leave behind
        path = ref.path(suite)
        (path.parent / f"{path.name}.z0.000.AHF_fpos").write_text("0 0\n1 128\n")
        (path.parent / f"{path.name}.tangos_notes").write_text("unrelated\n")
    # staged_only: no cluster, and it fails if any snapshot needed extracting again
    summary = extract_suite(suite, store, staged_only=True, progress=False)
    assert summary.skipped == summary.n_snapshots and summary.source_changed == 0
    assert_same_arrays(before, store_arrays(store))
    # a file extraction reads still counts
    ref = find_snapshots(suite)[0]
    with open(ref.path(suite).parent / f"{ref.name}.OxMassFrac", "ab") as f:
        f.write(b"\0" * 8)
    summary = extract_suite(suite, store, staged_only=True, progress=False)
    assert summary.source_changed == 1


# ---- binning precision ----------------------------------------------------------------------------

def test_star_on_the_upper_edge_counts_in_every_precision(tmp_path):
    rng = np.random.default_rng(0)
    exact = rng.normal(0, 0.3, 2000)  # as pynbody computes them (float64)
    exact[0] = 5.0000001234  # the largest, between two float32 values
    stored = exact.astype(np.float32)  # as the store keeps them
    binning = resolve_binning(BinningSpec(percentiles=(0.0, 100.0)), stored, stored)
    assert binning.feh_range[1] == float(stored[0]) < exact[0]  # the edge is a stored value
    i_stored, i_exact = bin_stars(stored, binning.feh_edges), bin_stars(exact, binning.feh_edges)
    assert bin_index(exact, binning.feh_edges)[0] == -1  # compared in float64: lost
    assert np.array_equal(i_stored, i_exact) and i_exact[0] == binning.spec.n_bins - 1
    counts_stored, _ = histogram_stack(stored, stored, np.ones(2000), np.array([2000]), binning)
    counts_exact, _ = histogram_stack(exact, exact, np.ones(2000), np.array([2000]), binning)
    assert np.array_equal(counts_stored, counts_exact) and counts_exact.sum() == 2000
    table = tmp_path / "stars.csv"  # a star table given to infer, full float64 digits
    table.write_text("feh,ofe\n" + "".join(f"{float(v)!r},{float(v)!r}\n" for v in exact))
    hist, summary = read_star_table(table, binning.feh_edges, binning.ofe_edges)
    assert summary["binned"] == 2000 and np.array_equal(hist, counts_stored[0])


def test_star_binning_unchanged_for_values_exact_in_float32():
    binning = Binning(BinningSpec(method="fixed", feh_range=(-1, 1), ofe_range=(-1, 1)), (-1, 1),
                      (-1, 1))
    x = np.array([-1.0, -0.5, 0.0, 0.96875, 1.0])
    assert np.array_equal(bin_stars(x, binning.feh_edges),
                          np.searchsorted(binning.feh_edges, x, side="right").clip(max=64) - 1)


# ---- bad targets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["missing", "not_a_suite"])
def test_extract_of_a_non_suite_leaves_nothing(kind, tmp_path, capsys):
    source = tmp_path / "source"
    if kind == "not_a_suite":
        (source / "notes").mkdir(parents=True)
        (source / "readme.txt").write_text("not a simulation\n")
    store = tmp_path / "store.zarr"
    assert main(["extract", str(source), "--store", str(store), "-q"]) == 2
    err = capsys.readouterr().err
    assert str(source) in err and ("does not exist" in err or "not a simulation suite" in err)
    assert not store.exists() and not Path(f"{store}.staging").exists()


def test_extract_refuses_a_folder_that_is_not_a_store(tiny_suite, tmp_path):
    target = tmp_path / "mydata"
    target.mkdir()
    (target / "thesis.tex").write_text("precious\n")
    assert main(["extract", str(tiny_suite), "--store", str(target), "-q"]) == 2
    assert sorted(p.name for p in target.iterdir()) == ["thesis.tex"]


def test_ls_names_a_corrupt_galaxies_chunk(tiny_store, tmp_path, capsys):
    store = tmp_path / "bad.zarr"
    shutil.copytree(tiny_store[0], store)
    (store / "galaxies" / "mstar" / "0").write_bytes(b"\x00garbage" * 10)
    assert main(["ls", str(store)]) == 2
    assert "galaxies/mstar: unreadable" in capsys.readouterr().err
