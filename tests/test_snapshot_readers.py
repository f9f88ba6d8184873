"""Readers see one committed state while the store grows (issue 19, item 1): a reader process
opens the store in a loop and checks it is consistent while another process extracts
incrementally (new galaxies, a new binning and rebuilt histograms, a changed error table) and
composes a training-set version per cycle. Real processes on a real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kill_harness import stage_everything

from casbi_store.store.extract import ExtractionSettings

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": f"{TESTS.parent}{os.pathsep}{TESTS}"}

WRITER = """
import os, shutil, sys, time
from pathlib import Path
from casbi_store.compose import ComposeSpec, compose
from casbi_store.store.extraction_run import extract_suite
suite, store, staged, first = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
for i, sim in enumerate(sys.argv[5:], start=first):
    (suite / Path(sim).name).symlink_to(sim)
    # every outcome extracted beforehand (a run clears its staging folder when done)
    shutil.copytree(staged, f"{store}.staging", copy_function=os.link, dirs_exist_ok=True)
    extract_suite(suite, store, staged_only=True, progress=False)
    compose(store, ComposeSpec(name="sets", version=f"v{i + 1}", n_sub_min=2, n_sub_max=3,
                               train_per_n=4, test_per_n=2, seed=i), progress=False)
    print("cycle", i + 1, flush=True)
    # with a reader running (CASBI_TEST_READS: its read count), give it 4 reads per cycle, so the
    # reads it checks fall among the writes however the cores are shared (make test runs 3 jobs)
    count = os.environ.get("CASBI_TEST_READS")
    deadline = time.time() + 60
    while count and time.time() < deadline and int(Path(count).read_text() or 0) < 4 * (i + 1 - first):
        time.sleep(0.05)
"""

READER = """
import json, sys, time
import numpy as np
from pathlib import Path
from casbi_store.store import schema as S, trainingsets
from casbi_store.store.binning import Binning
from casbi_store.store.io import open_errors, open_store, open_snapshot, store_attrs
import zarr

store, done = sys.argv[1], Path(sys.argv[2])
reads, errors, mixed, states = 0, [], [], set()
while True:
    finished = done.exists()
    try:
        if not Path(store, ".zmetadata").exists():
            time.sleep(0.01)
            continue
        ds = open_store(store)  # refuses galaxies and histograms of different lengths itself
        binning, version = Binning.from_dict(ds.attrs["binning"]), ds.attrs["binning"]["version"]
        ds = ds.load()  # every chunk, after the open: later commits must not show through
        n = ds.sizes["galaxy"]
        if not (np.array_equal(ds["feh_edges"].values, binning.feh_edges)
                and np.array_equal(ds["ofe_edges"].values, binning.ofe_edges)):
            mixed.append(f"edges differ from the binning attribute v{version}")
        counts = ds["counts"].values.sum(axis=(1, 2))
        if (counts > ds["n_star"].values).any() or counts.sum() == 0:
            mixed.append("histogram counts do not fit their galaxies")
        root = zarr.open_consolidated(open_snapshot(store), mode="r", zarr_format=2)
        if root["histograms"].attrs["binning_version"] != root.attrs["binning"]["version"]:
            mixed.append("histograms of another binning version")
        err = open_errors(store)
        for name, published in trainingsets.read_registry(store).items():
            for version in published:
                x = trainingsets.open_split(store, name, version, "test")["x"].values
                if x.shape[0] != published[version]["counts"]["test"]:
                    mixed.append(f"{name}:{version} has {x.shape[0]} test halos")
        states.add((n, version, err.sizes["error"]))
        reads += 1
        Path(str(done) + ".reads").write_text(str(reads))
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    if finished:
        break
print(json.dumps({"reads": reads, "errors": errors[:5], "n_errors": len(errors),
                  "mixed": mixed[:5], "n_mixed": len(mixed), "states": sorted(states)}))
"""


def test_a_reader_sees_one_committed_state_while_extract_and_compose_run(tiny_suite, tmp_path):
    sims = sorted(str(p.resolve()) for p in tiny_suite.iterdir() if p.is_dir())
    suite, store = tmp_path / "suite", tmp_path / "store.zarr"
    suite.mkdir()
    staged = tmp_path / "all.staging"
    stage_everything(tiny_suite, staged, ExtractionSettings())
    (suite / Path(sims[0]).name).symlink_to(sims[0])  # the first commit, before the reader starts
    subprocess.run([sys.executable, "-c", WRITER, str(suite), str(store), str(staged), "0",
                    sims[1]], env=ENV, check=True, capture_output=True)
    done = tmp_path / "done"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(store), str(done)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (tmp_path / "done.reads").write_text("0")
    writer = subprocess.run([sys.executable, "-c", WRITER, str(suite), str(store), str(staged),
                             "1", *sims[2:]], env={**ENV, "CASBI_TEST_READS": str(tmp_path / "done.reads")},
                            capture_output=True, text=True, timeout=300)
    done.touch()
    out, err = reader.communicate(timeout=120)
    assert writer.returncode == 0, writer.stderr[-3000:]
    report = json.loads(out)
    print(f"reads {report['reads']}, errors {report['n_errors']}, mixed {report['n_mixed']}, "
          f"states (galaxies, binning version, error rows) {report['states']}")
    assert report["n_errors"] == 0, report["errors"]
    assert report["n_mixed"] == 0, report["mixed"]
    # the reader saw the store grow, and a rebinning, while it read
    assert len(report["states"]) >= 3 and len({s[1] for s in report["states"]}) >= 2
    assert report["reads"] >= 10
