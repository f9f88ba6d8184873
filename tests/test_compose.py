"""Training-set composition on a real extracted store."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import xarray as xr
import zarr

from casbi_store import open_store
from casbi_store.compose import ComposeError, ComposeSpec, compose, registry


@pytest.fixture
def store(tiny_store, tmp_path):
    path = tmp_path / "store.zarr"
    shutil.copytree(tiny_store[0], path)
    return path


def split(store, name, version, part):
    return xr.open_zarr(store, group=f"training_sets/{name}/{version}/{part}",
                        consolidated=True).load()


# 14 building blocks in the tiny store: N_sub from 3 keeps enough distinct combinations, and
# 6 x 120 training halos cross the 512-halo chunk boundary.
SMALL = dict(name="nsub_uniform", version="v1", n_sub_min=3, n_sub_max=8, train_per_n=120,
             test_per_n=20, seed=11)


def test_sums_counts_and_parameters(store):
    entry = compose(store, ComposeSpec(**SMALL))
    gal = open_store(store).load()
    assert entry["counts"] == {"train": 576, "val": 144, "test": 120}
    for part in ("train", "val", "test"):
        ds = split(store, "nsub_uniform", "v1", part)
        assert ds.sizes["halo"] == entry["counts"][part]  # rows survive chunked parallel writes
        members = ds.members.values
        direct = np.stack([gal.counts.values[r[r >= 0]].sum(axis=0) for r in members])
        assert np.array_equal(ds.x.values, direct)
        n_sub = ds.n_sub.values
        assert n_sub.min() >= 3 and n_sub.max() <= 8
        assert np.array_equal(n_sub, (members >= 0).sum(axis=1))
        for row, th, n in zip(members[:50], ds.theta.values[:50], n_sub[:50], strict=True):
            assert len(set(row[:n])) == n  # distinct blocks
            np.testing.assert_array_equal(th[:n, 0], gal.mstar.values[row[:n]])
            np.testing.assert_array_equal(th[:n, 2], gal.time.values[row[:n]])
            assert np.all(np.diff(th[:n, 0]) <= 0) and np.isnan(th[n:]).all()
    per_n = np.bincount(split(store, "nsub_uniform", "v1", "test").n_sub.values)
    assert per_n[3:].tolist() == [20] * 6


def test_combination_split_never_repeats_a_training_set(store):
    compose(store, ComposeSpec(**SMALL))
    train = split(store, "nsub_uniform", "v1", "train").members.values
    test = split(store, "nsub_uniform", "v1", "test").members.values
    seen = {tuple(sorted(r[r >= 0])) for r in train}
    assert not [r for r in test if tuple(sorted(r[r >= 0])) in seen]


@pytest.mark.parametrize("split_by", ["galaxy", "simulation"])
def test_held_out_splits_share_nothing(store, split_by):
    spec = ComposeSpec(**{**SMALL, "n_sub_min": 2, "n_sub_max": 3, "test_per_n": 5, "train_per_n": 20,
                          "split_by": split_by, "test_fraction": 0.3})
    compose(store, spec)
    gal = open_store(store).load()
    sims = np.asarray([str(s) for s in gal.simulation.values])
    def used(part):
        m = split(store, "nsub_uniform", "v1", part).members.values
        return set(m[m >= 0].tolist())
    train, val, test = used("train") | set(), used("val"), used("test")
    assert not (train | val) & test
    if split_by == "simulation":
        assert not set(sims[list(train | val)]) & set(sims[list(test)])


def test_deterministic_immutable_and_idempotent(store, tmp_path):
    other = tmp_path / "other.zarr"
    shutil.copytree(store, other)
    a = compose(store, ComposeSpec(**SMALL))
    b = compose(other, ComposeSpec(**SMALL))
    assert a["checksum"] == b["checksum"]
    for part in ("train", "val", "test"):
        assert np.array_equal(split(store, "nsub_uniform", "v1", part).x,
                              split(other, "nsub_uniform", "v1", part).x)
    assert compose(store, ComposeSpec(**{**SMALL, "description": "same set"})) == a  # no-op
    with pytest.raises(ComposeError, match="immutable"):
        compose(store, ComposeSpec(**{**SMALL, "seed": 12}))
    c = compose(store, ComposeSpec(**{**SMALL, "seed": 12, "version": "v2"}))
    assert c["checksum"] != a["checksum"] and set(registry(str(store), "nsub_uniform")) == {"v1", "v2"}


def test_a_killed_compose_is_invisible(store, monkeypatch):
    from casbi_store.compose import halos as module

    def die(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(module.trainingsets, "combine_digests", die)
    with pytest.raises(KeyboardInterrupt):
        compose(store, ComposeSpec(**SMALL))
    assert registry(str(store), "nsub_uniform") == {}
    root = zarr.open_group(store, mode="r", zarr_format=2, use_consolidated=False)
    # arrays were written to a draft, never to v1, and the interrupted draft is gone
    assert list(root["training_sets/nsub_uniform"].group_keys()) == []
    monkeypatch.undo()
    assert compose(store, ComposeSpec(**SMALL))["counts"]["train"] == 576


def test_mass_budget_scheme(store):
    spec = ComposeSpec(name="budget", version="v1", scheme="mass_budget", budget=2e8, n_train=60,
                       n_test=15, seed=4)
    entry = compose(store, spec)
    assert entry["counts"] == {"train": 48, "val": 12, "test": 15}
    ds = split(store, "budget", "v1", "train")
    total = np.nansum(ds.theta.values[..., 0], axis=1)
    assert np.all(total <= 2e8) and ds.n_sub.min() >= 1


def test_noise_rebins_stars(store):
    spec = ComposeSpec(**{**SMALL, "n_sub_max": 4, "train_per_n": 4, "test_per_n": 2,
                          "noise_feh": 0.1, "noise_ofe": 0.05})
    compose(store, spec)
    gal = open_store(store).load()
    ds = split(store, "nsub_uniform", "v1", "test")
    clean = np.stack([gal.counts.values[r[r >= 0]].sum(axis=0) for r in ds.members.values])
    assert not np.array_equal(ds.x.values, clean)
    n_star = np.array([gal.n_star.values[r[r >= 0]].sum() for r in ds.members.values])
    assert np.all(ds.x.values.sum(axis=(1, 2)) <= n_star)


def test_spec_validation():
    with pytest.raises(ComposeError, match="split_by"):
        ComposeSpec(name="a", version="v1", split_by="halo")
    with pytest.raises(ComposeError, match="version"):
        ComposeSpec(name="a", version="1")
    with pytest.raises(ComposeError, match=r"unknown key\(s\) \['nsub_max'\]"):
        ComposeSpec.from_dict({"name": "a", "version": "v1", "nsub_max": 3})
