"""Training sets' one home: self-described binning (also over HTTP), one writer per version, and
composes killed at every step of publishing, re-run to the clean checksum."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from conftest import consolidate_whole_store, serve_http, store_with_set

from casbi_store import open_store
from casbi_store.compose import ComposeError, ComposeSpec, compose
from casbi_store.store import trainingsets
from casbi_store.store.io import StoreError
from casbi_store.store.locks import list_locks
from casbi_store.store.schema import TRAINING_FIELDS
from casbi_store.store.validate import validate_store

SPEC = dict(name="nsub_uniform", version="v1", n_sub_min=2, n_sub_max=6, train_per_n=150,
            test_per_n=10, seed=3)
CLI = [sys.executable, "-m", "casbi_store.cli"]  # run with cwd=tmp_path: compose's default
# catalog is catalogs/casbi.yaml of the working directory, which must not be the repo's (issue 22)
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


@pytest.fixture
def store(tiny_store, tmp_path):
    path = tmp_path / "store.zarr"
    shutil.copytree(tiny_store[0], path)
    return path


@pytest.fixture(scope="module")
def clean(tiny_store, tmp_path_factory) -> dict[int, str]:
    """Checksums of clean, uninterrupted composes of SPEC with seeds 3, 4 and 5."""
    out = {}
    for seed in (3, 4, 5):
        path = tmp_path_factory.mktemp(f"clean{seed}") / "store.zarr"
        shutil.copytree(tiny_store[0], path)
        out[seed] = compose(path, ComposeSpec(**{**SPEC, "seed": seed}), progress=False)["checksum"]
    return out


def _spec_file(folder: Path, **changes) -> Path:
    path = folder / f"spec-{changes.get('seed', SPEC['seed'])}.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **changes}))
    return path


def _draft_and_version_dirs(store: Path) -> list[str]:
    folder = store / "training_sets" / SPEC["name"]
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


# ---- a set describes itself ---------------------------------------------------------------------

def test_set_stores_its_binning_and_is_read_over_http_without_the_galaxies(tiny_store, tmp_path):
    store = store_with_set(tiny_store[0], tmp_path, **{k: v for k, v in SPEC.items() if k != "version"})
    gal = open_store(store)
    binning = trainingsets.binning(store, SPEC["name"], "v1")
    np.testing.assert_array_equal(binning.feh_edges, gal.feh_edges.values)
    np.testing.assert_array_equal(binning.ofe_edges, gal.ofe_edges.values)
    entry = trainingsets.versions(store, SPEC["name"])["v1"]
    store_record = zarr.open_consolidated(store, mode="r", zarr_format=2).attrs["binning"]
    assert entry["binning"] == store_record and entry["binning_version"] == store_record["version"]
    for split in ("train", "val", "test"):
        ds = trainingsets.open_split(store, SPEC["name"], "v1", split)
        assert ds.feh_edges.dims == ("feh_edge",) and ds.ofe_edges.dims == ("ofe_edge",)
        np.testing.assert_array_equal(ds.feh_edges.values, gal.feh_edges.values)
        np.testing.assert_array_equal(ds.ofe_edges.values, gal.ofe_edges.values)

    # Serve only the training sets: galaxies, stars, histograms and errors are gone.
    served = tmp_path / "served" / "sets.zarr"
    shutil.copytree(store, served)
    for group in ("galaxies", "stars", "histograms", "errors"):
        shutil.rmtree(served / group)
    shutil.rmtree(served / ".locks", ignore_errors=True)
    consolidate_whole_store(str(served))  # a full rebuild: what is left on disk
    with pytest.raises(StoreError):
        open_store(served)  # nothing to learn the binning from there
    with serve_http(served.parent) as base:
        url = f"{base}/sets.zarr"
        remote = trainingsets.binning(url, SPEC["name"], "latest")
        test = trainingsets.open_split(url, SPEC["name"], "v1", "test").load()
        rows = trainingsets.read_rows(url, SPEC["name"], "v1", "test", [0, 5])
    np.testing.assert_array_equal(remote.feh_edges, gal.feh_edges.values)
    np.testing.assert_array_equal(remote.ofe_edges, gal.ofe_edges.values)
    np.testing.assert_array_equal(test.feh_edges.values, gal.feh_edges.values)
    local = xr.open_zarr(store, group="training_sets/nsub_uniform/v1/test", consolidated=True)
    np.testing.assert_array_equal(test.x.values, local.x.values)
    np.testing.assert_array_equal(rows["x"], local.x.values[[0, 5]])


def test_legacy_entry_without_binning_falls_back_to_the_store_record(tiny_store, tmp_path):
    store = store_with_set(tiny_store[0], tmp_path, **{k: v for k, v in SPEC.items() if k != "version"})
    group = zarr.open_group(store, path="training_sets/nsub_uniform/v1", mode="a", zarr_format=2,
                            use_consolidated=False)
    entry = dict(group.attrs["training_set"])
    del entry["binning"]
    group.attrs["training_set"] = entry
    trainingsets.consolidate(store)
    edges = trainingsets.binning(store, SPEC["name"], "v1").feh_edges
    np.testing.assert_array_equal(edges, open_store(store).feh_edges.values)
    entry["binning_version"] = 99
    group.attrs["training_set"] = entry
    trainingsets.consolidate(store)
    with pytest.raises(trainingsets.TrainingSetError, match="binning v99"):
        trainingsets.binning(store, SPEC["name"], "v1")


def test_edges_that_disagree_with_the_entry_are_reported(tiny_store, tmp_path):
    store = store_with_set(tiny_store[0], tmp_path, **{k: v for k, v in SPEC.items() if k != "version"})
    root = zarr.open_group(store, mode="a", zarr_format=2, use_consolidated=False)
    root["training_sets/nsub_uniform/v1/val/ofe_edges"][3] += 0.01
    messages = [str(p) for p in validate_store(store)]
    assert "training_sets/nsub_uniform/v1/val/ofe_edges: differs from the binning in the registry " \
           "entry" in messages
    assert "training_sets/nsub_uniform/v1: checksum differs from the published one" in messages


def test_unpublished_or_missing_versions_are_not_readable(store):
    compose(store, ComposeSpec(**SPEC), progress=False)
    with pytest.raises(trainingsets.SplitNotFound, match="published versions of 'nsub_uniform': v1"):
        trainingsets.open_split_group(store, SPEC["name"], "v2", "train")
    with pytest.raises(trainingsets.TrainingSetError, match="split must be one of"):
        trainingsets.open_split(store, SPEC["name"], "v1", "training")
    with pytest.raises(trainingsets.TrainingSetError, match="no published version 'v7'"):
        trainingsets.binning(store, SPEC["name"], "v7")


# ---- bad spec files -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("", "empty spec file"),
    ("- a\n- b\n", "a spec is a mapping"),
    ("name: a\nversion: v1\nnoise_feh: .nan\n", "noise_feh must be a finite number, not nan"),
    ("name: a\nversion: v1\nnoise_ofe: .inf\n", "noise_ofe must be a finite number, not inf"),
    ("name: a\nversion: v1\nnoise_feh: -0.1\n", "noise_feh must be >= 0 dex"),
    ("name: a\nversion: v1\nbudget: .nan\n", "budget must be a finite number"),
    ("version: v1\n", "missing required key.s. name"),
    ("name: [a\n", "not valid YAML"),
])
def test_bad_spec_files_name_the_file_and_key(tmp_path, store, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(ComposeError, match=f"^{path}: .*{message}"):
        ComposeSpec.from_yaml(path)
    if message not in ("empty spec file", "noise_feh must be a finite number, not nan"):
        return  # the command line runs for the two of issue 11
    run = subprocess.run([*CLI, "compose", str(store), "--spec", str(path)], capture_output=True,
                         text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert str(path) in run.stderr and message.replace(".s.", "(s)") in run.stderr


# ---- one writer per version ---------------------------------------------------------------------

HOLDER = """
import sys
from casbi_store.store.locks import store_lock
with store_lock(sys.argv[1], "set-nsub_uniform-v1", purpose="holder test"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_second_compose_is_refused_naming_the_holder(store, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        run = subprocess.run([*CLI, "compose", str(store), "--spec", str(_spec_file(tmp_path))],
                             capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
        assert run.returncode == 2 and "Traceback" not in run.stderr
        assert "nsub_uniform:v1 is being composed by another process" in run.stderr
        assert f"pid {holder.pid}" in run.stderr and "holder test" in run.stderr
        assert trainingsets.versions(store, SPEC["name"], consolidated=False) == {}
    finally:
        holder.communicate("\n", timeout=30)
    run = subprocess.run([*CLI, "compose", str(store), "--spec", str(_spec_file(tmp_path))],
                         capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr


def test_concurrent_composes_of_one_version_publish_exactly_one(store, tmp_path, clean):
    procs = {seed: subprocess.Popen(
        [*CLI, "compose", str(store), "--spec", str(_spec_file(tmp_path, seed=seed))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
        for seed in (4, 5)}
    results = {seed: (p.wait(timeout=300), *p.communicate()) for seed, p in procs.items()}
    winners = [seed for seed, (rc, _, _) in results.items() if rc == 0]
    assert len(winners) == 1, results
    (loser,) = set(results) - set(winners)
    rc, _, err = results[loser]
    assert rc == 2 and "Traceback" not in err
    assert "being composed by another process" in err or "immutable" in err
    published = trainingsets.versions(store, SPEC["name"])
    assert list(published) == ["v1"]
    assert published["v1"]["seed"] == winners[0]
    assert published["v1"]["checksum"] == clean[winners[0]]
    assert published["v1"]["checksum"][:12] in results[winners[0]][1]
    # the loser, re-run now, is refused as immutable; the winner's spec is a no-op
    again = subprocess.run([*CLI, "compose", str(store), "--spec", str(_spec_file(tmp_path, seed=loser))],
                           capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert again.returncode == 2 and "published versions are immutable" in again.stderr
    assert validate_store(store) == [] and _draft_and_version_dirs(store) == ["v1"]
    assert list_locks(store) == {}


# ---- killed composes ----------------------------------------------------------------------------

KILLER = """
import os, signal, sys
from casbi_store.store import trainingsets
from casbi_store.compose import ComposeSpec, compose

point = sys.argv[3]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if point == "after-first-split":
    calls = []
    add = trainingsets.Draft.add_digests
    def add_then_die(self, *args):
        add(self, *args)
        calls.append(1)
        if len(calls) == 1:
            die()
    trainingsets.Draft.add_digests = add_then_die
elif point == "before-rename":
    trainingsets.os.rename = die
elif point == "after-rename":
    trainingsets.consolidate = die
compose(sys.argv[1], ComposeSpec.from_yaml(sys.argv[2]), progress=False)
"""


@pytest.mark.parametrize("point", ["after-first-split", "before-rename", "after-rename",
                                   "while-writing"])
def test_a_sigkilled_compose_leaves_nothing_visible_and_a_rerun_completes_it(store, tmp_path, clean,
                                                                            point):
    spec = _spec_file(tmp_path)
    if point == "while-writing":  # the real CLI, killed as soon as the draft holds a chunk
        proc = subprocess.Popen([*CLI, "compose", str(store), "--spec", str(spec)], env=ENV,
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        folder = store / "training_sets" / SPEC["name"]
        deadline = time.time() + 120
        while not list(folder.glob("_draft_v1_*/*/x/0.*")) and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.returncode != -signal.SIGKILL:
            pytest.skip("the compose finished before it could be killed")
    else:
        proc = subprocess.run([sys.executable, "-c", KILLER, str(store), str(spec), point], env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr

    # Readers see no version (the consolidated metadata is the readers' view).
    assert trainingsets.read_registry(store) == {}
    on_disk = _draft_and_version_dirs(store)
    if point == "after-rename":
        assert on_disk == ["v1"]  # committed, not yet consolidated
    else:
        assert "v1" not in on_disk and len(on_disk) == 1 and on_disk[0].startswith("_draft_v1_")
    assert validate_store(store) == []

    # The dead writer's lock is listed as stale, and the re-run breaks it itself and completes.
    assert list_locks(store)["set-nsub_uniform-v1"]["stale"]
    entry = compose(store, ComposeSpec(**SPEC), progress=False)
    assert entry["checksum"] == clean[SPEC["seed"]]
    assert trainingsets.versions(store, SPEC["name"])["v1"]["checksum"] == clean[SPEC["seed"]]
    assert _draft_and_version_dirs(store) == ["v1"] and validate_store(store) == []
    meta = json.loads((store / ".zmetadata").read_text())["metadata"]
    assert not [k for k in meta if "_draft_" in k]


def test_a_draft_without_every_split_cannot_be_published(store):
    record = zarr.open_consolidated(store, mode="r", zarr_format=2).attrs["binning"]
    identity = {"spec": {"seed": 1}, "binning_version": record["version"]}
    with pytest.raises(trainingsets.TrainingSetError, match="without val/x, val/n_sub"):
        with trainingsets.begin(store, "partial", "v1", identity, record) as draft:
            draft.add_digests("train", {f.name: [] for f in TRAINING_FIELDS})
            draft.publish({"counts": {}})
    assert trainingsets.read_registry(store, consolidated=False) == {}
    assert list_locks(store) == {}


def test_compose_beside_an_uncommitted_extraction_publishes_only_the_set(tiny_store, tmp_path):
    """An extraction writes rows past the committed length before its commit point; a compose
    finishing meanwhile must publish its version and nothing of those rows."""
    path = tmp_path / "store.zarr"
    shutil.copytree(tiny_store[0], path)
    n = open_store(path).sizes["galaxy"]
    disk = zarr.open_group(path, mode="a", zarr_format=2, use_consolidated=False)
    disk["galaxies/mstar"].resize((n + 5,))  # what a running extraction has written, uncommitted
    compose(path, ComposeSpec(name="beside", version="v1", n_sub_min=2, n_sub_max=3, train_per_n=10,
                              test_per_n=2, seed=1), progress=False)
    meta = json.loads((path / ".zmetadata").read_text())["metadata"]
    assert meta["galaxies/mstar/.zarray"]["shape"] == [n]
    assert "v1" in trainingsets.versions(str(path), "beside")
    assert open_store(path).sizes["galaxy"] == n
