"""Disk full during extraction (issue 19, item 4), on a real 3 MiB tmpfs: one line saying how
much was needed and that nothing changed; the store reads as before, validates, and a re-run
with space completes it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import assert_same_arrays, store_arrays
from kill_harness import stage_everything

from casbi_store.store.extract import ExtractionSettings
from casbi_store.store.extraction_run import extract_suite
from casbi_store.store.io import StoreError
from casbi_store.store.validate import validate_store


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _suite(tiny_suite: Path, folder: Path, n: int | None) -> Path:
    folder.mkdir()
    for sim in sorted(p for p in tiny_suite.iterdir() if p.is_dir())[:n]:
        (folder / sim.name).symlink_to(sim.resolve())
    return folder


def test_disk_full_during_extraction_is_one_line_and_changes_nothing(tiny_suite, small_disk,
                                                                    tmp_path):
    store = small_disk / "store.zarr"
    staged = tmp_path / "all.staging"
    stage_everything(tiny_suite, staged, ExtractionSettings())
    first, everything = _suite(tiny_suite, tmp_path / "first", 2), _suite(tiny_suite, tmp_path / "all", None)
    shutil.copytree(staged, f"{store}.staging")
    extract_suite(first, store, staged_only=True, progress=False)
    before = store_arrays(store)
    shutil.copytree(staged, f"{store}.staging", dirs_exist_ok=True)
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    with open(filler, "wb") as f:  # leave 64 KiB: the incremental commit needs more
        f.write(b"\0" * (free - 64 * 1024))
    with pytest.raises(StoreError) as full:
        extract_suite(everything, store, staged_only=True, progress=False)
    message = str(full.value)
    print(message)
    assert "\n" not in message and full.value.__cause__ is None and full.value.__suppress_context__
    assert "no space left on device" in message and "MiB more were needed" in message
    assert "nothing changed" in message
    assert_same_arrays(before, store_arrays(store))
    assert validate_store(store) == []
    os.unlink(filler)  # space again: the re-run completes it, no unlock, nothing to repair by hand
    summary = extract_suite(everything, store, staged_only=True, progress=False)
    assert summary.ok > 0 and validate_store(store) == []
