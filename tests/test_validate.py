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
