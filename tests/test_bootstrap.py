"""Ensemble members on bootstrap draws of the training simulations (issue 23), checked against
the training set's own member table and the galaxies table read independently."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import zarr
from conftest import store_with_set

from casbi_store.learn.bootstrap import simulation_bag, top_block_simulations
from casbi_store.learn.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def set_store(tiny_store, tmp_path_factory):
    return store_with_set(tiny_store[0], tmp_path_factory.mktemp("boot"), name="boot",
                          n_sub_min=2, n_sub_max=4, train_per_n=12, test_per_n=2, seed=6)


def test_top_block_simulations_are_the_galaxies_of_rank_one(set_store):
    root = zarr.open_group(set_store, mode="r")
    members = root["training_sets/boot/v1/train/members"][:]
    names = [str(s) for s in root["galaxies/simulation"][:]]
    mstar = root["galaxies/mstar"][:]
    top = top_block_simulations(set_store, "boot", "v1")
    assert len(top) == len(members)
    # rank 1 is the most massive block of each halo
    for row, sim in zip(members, top, strict=True):
        blocks = row[row >= 0]
        assert sim == names[blocks[np.argmax(mstar[blocks])]]


def test_a_bag_repeats_each_halo_as_often_as_its_simulation_was_drawn(set_store):
    top = top_block_simulations(set_store, "boot", "v1")
    bag = simulation_bag(top, seed=3)
    assert sum(bag.simulations.values()) == len(np.unique(top))  # as many draws as simulations
    counts = Counter(bag.rows.tolist())
    for i, sim in enumerate(top):
        assert counts.get(i, 0) == bag.simulations.get(sim, 0)
    again, other = simulation_bag(top, seed=3), simulation_bag(top, seed=4)
    np.testing.assert_array_equal(bag.rows, again.rows)  # deterministic given the seed
    assert bag.simulations != other.simulations or len(bag.simulations) == len(np.unique(top))
    assert bag.in_bag_fraction == len(counts) / len(top)


def test_many_bags_leave_out_a_third_of_the_simulations():
    """With n simulations, each is out of a bag with probability (1 - 1/n)^n (0.366 at n=40)."""
    top = np.repeat([f"g{i}" for i in range(40)], 3)
    out = [1 - len(simulation_bag(top, seed=s).simulations) / 40 for s in range(300)]
    assert np.mean(out) == pytest.approx((1 - 1 / 40) ** 40, abs=0.01)


def test_training_members_on_bags_records_it(set_store, tmp_path, caplog):
    cfg = TrainConfig(epochs=1, batch_size=16, hidden_features=8, num_transforms=1,
                      embedding_dim=8, conv_channels=(4,), ensemble=2, bootstrap_simulations=True)
    with caplog.at_level("INFO", logger="casbi_store.learn.trainer"):
        result = train(set_store, "boot", "v1", "theta", tmp_path / "m", cfg)
    assert len(result["members"]) == 2
    config = json.loads((tmp_path / "m" / "config.json").read_text())["config"]
    assert config["bootstrap_simulations"] is True
    bags = [r.getMessage() for r in caplog.records if "simulations drawn" in r.getMessage()]
    assert len(bags) == 2 and all("of the training halos in its bag" in m for m in bags)
