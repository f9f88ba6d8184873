"""`validate` passes a good store and names the path of every planted problem."""

from __future__ import annotations

import shutil

import pytest
import zarr

from casbi_store.compose import ComposeSpec, compose
from casbi_store.store.validate import validate_store


@pytest.fixture
def store(tiny_store, tmp_path):
    path = tmp_path / "store.zarr"
    shutil.copytree(tiny_store[0], path)
    compose(path, ComposeSpec(name="sets", version="v1", n_sub_min=2, n_sub_max=4,
                              train_per_n=10, test_per_n=3), progress=False)
    return path


def test_good_store_is_valid(store):
    assert validate_store(store) == []


def test_corrupted_chunk_is_reported_with_its_path(store):
    chunk = store / "histograms" / "counts" / "0.0.0"
    chunk.write_bytes(b"\x00garbage" * 10)
    assert [str(p) for p in validate_store(store) if p.path == "histograms/counts"]


def test_missing_array(store):
    # (a deleted chunk file: tests/test_store_safety.py)
    shutil.rmtree(store / "stars" / "ofe")
    found = {p.path: p.message for p in validate_store(store)}
    assert found["stars/ofe"] == "missing array"


def test_tampered_training_set_fails_its_checksum(store):
    root = zarr.open_group(store, mode="a", zarr_format=2, use_consolidated=False)
    x = root["training_sets/sets/v1/test/x"]
    x[0, 0, 0] = x[0, 0, 0] + 1
    messages = [str(p) for p in validate_store(store)]
    assert "training_sets/sets/v1: checksum differs from the published one" in messages


def test_bad_members_and_negative_counts(store):
    root = zarr.open_group(store, mode="a", zarr_format=2, use_consolidated=False)
    root["training_sets/sets/v1/train/members"][0, 0] = 10_000
    root["histograms/counts"][0, 0, 0] = -5
    paths = {p.path for p in validate_store(store)}
    assert {"training_sets/sets/v1/train/members", "histograms/counts"} <= paths


def test_values_changed_in_a_way_that_still_decodes_are_named_by_chunk(store, capsys):
    """Every chunk of the extraction's arrays has a digest; an edit behind the commit's back that
    decodes fine (16 stars moved by 0.5 dex, one galaxy's M*) is found, naming array and chunk."""
    from casbi_store.cli import main

    assert main(["validate", str(store)]) == 0
    assert "chunk digests verified" in capsys.readouterr().out
    root = zarr.open_group(store, mode="a", zarr_format=2, use_consolidated=False)
    root["stars/feh"][100:116] = root["stars/feh"][100:116] + 0.5
    root["galaxies/mstar"][3] = root["galaxies/mstar"][3] * 1.03
    found = {p.path: p.message for p in validate_store(store)}
    assert found["stars/feh"].startswith("chunk 0 changed since committed")
    assert found["galaxies/mstar"].startswith("chunk 0 changed since committed")
    assert validate_store(store, quick=True) == []  # --quick: structure only, as fast as before
    assert main(["validate", str(store)]) == 1


def test_a_store_without_digests_still_validates(store, capsys):
    import json

    from casbi_store.cli import main

    zmeta = store / ".zmetadata"
    whole = json.loads(zmeta.read_text())
    whole.pop("casbi_digests")
    zmeta.write_text(json.dumps(whole))  # as a store written before digests were recorded
    assert validate_store(store) == []
    assert main(["validate", str(store)]) == 0
    assert "no digests recorded" in capsys.readouterr().out
