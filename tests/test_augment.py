"""Augmentation that breaks galaxy identity (issue 23): halos re-summed every epoch from shifted
and redrawn blocks, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import SURVEY_OBSERVATION, store_with_set

from casbi_store import open_store
from casbi_store.learn.augment import Augmentation, AugmentError, BlockAugmenter, shift_planes
from casbi_store.learn.trainer import TrainConfig, train
from casbi_store.store.binning import Binning


@pytest.fixture(scope="module")
def set_store(tiny_store, tmp_path_factory):
    return store_with_set(tiny_store[0], tmp_path_factory.mktemp("aug"), name="aug", n_sub_min=2,
                          n_sub_max=4, train_per_n=10, test_per_n=2, seed=4)


def _split(store, name="aug"):
    return zarr.open_group(store, mode="r")[f"training_sets/{name}/v1/train"]


def test_whole_bin_shifts_move_the_plane_and_drop_what_leaves_it():
    plane = np.random.default_rng(0).random((1, 8, 6)).astype(np.float32)
    moved = shift_planes(plane, np.array([2.0]), np.array([-1.0]))[0]
    expected = np.zeros_like(plane[0])
    expected[2:, :5] = plane[0, :6, 1:]  # [Fe/H] up two bins, [O/Fe] down one
    np.testing.assert_array_equal(moved, expected)
    assert not shift_planes(plane, np.array([8.0]), np.array([0.0])).any()  # all out


def test_fractional_shifts_split_counts_between_neighbours():
    plane = np.zeros((1, 5, 5), np.float32)
    plane[0, 2, 2] = 10
    moved = shift_planes(plane, np.array([0.25]), np.array([-0.5]))[0]
    assert moved.sum() == pytest.approx(10)
    assert moved[2, 2] == pytest.approx(10 * 0.75 * 0.5)
    assert moved[3, 2] == pytest.approx(10 * 0.25 * 0.5)
    assert moved[2, 1] == pytest.approx(10 * 0.75 * 0.5)
    assert moved[3, 1] == pytest.approx(10 * 0.25 * 0.5)


def test_no_shift_gives_the_composed_halos(set_store):
    halos = BlockAugmenter(set_store, "aug", "v1", "train", Augmentation()).halos(3)
    np.testing.assert_array_equal(halos, _split(set_store)["x"][:].astype(np.float32))


def test_shifted_halos_sum_moved_blocks(set_store):
    """Each halo equals the sum of its blocks each moved by one of the epoch's offsets: the
    [Fe/H] marginal of a halo of one block equals its galaxy's, moved; totals are kept but for
    stars pushed out of the plane; epochs differ; the same epoch is drawn again identically."""
    aug = Augmentation(shift_feh=0.2, shift_ofe=0.05, versions=4)
    augmenter = BlockAugmenter(set_store, "aug", "v1", "train", aug, seed=1)
    first, again, other = augmenter.halos(0), augmenter.halos(0), augmenter.halos(1)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    x = _split(set_store)["x"][:].astype(np.float64)
    totals = first.sum(axis=(1, 2))
    assert np.all(totals <= x.sum(axis=(1, 2)) + 1e-3)
    assert totals.sum() > 0.9 * x.sum()
    # the mean [Fe/H] of each halo moves by about the size of the shifts, not more
    counts = open_store(set_store)["counts"].values
    edges = Binning.from_dict(open_store(set_store).attrs["binning"]).feh_edges
    centres = (edges[1:] + edges[:-1]) / 2
    mean = lambda h: (h.sum(axis=2) @ centres) / h.sum(axis=(1, 2))  # noqa: E731
    moved = mean(first) - mean(x)
    assert 0.02 < np.std(moved) < 0.3
    assert counts.shape[1:] == first.shape[1:]


def test_poisson_redraw_keeps_the_mean(set_store):
    augmenter = BlockAugmenter(set_store, "aug", "v1", "train", Augmentation(resample=True))
    x = _split(set_store)["x"][:].astype(np.float64)
    draws = np.stack([augmenter.halos(e) for e in range(20)])
    assert np.all(draws == np.round(draws))  # counts
    assert not np.array_equal(draws[0], x)
    rel = abs(draws.mean(axis=0).sum() - x.sum()) / x.sum()
    assert rel < 0.01


def test_sets_not_made_of_store_galaxies_are_refused(tiny_store, tmp_path):
    store = store_with_set(tiny_store[0], tmp_path, name="sky", n_sub_min=2, n_sub_max=3,
                           train_per_n=5, test_per_n=1, seed=2, observation=SURVEY_OBSERVATION)
    with pytest.raises(AugmentError, match="sky:v1 was composed with an observation model"):
        BlockAugmenter(store, "sky", "v1", "train", Augmentation(shift_feh=0.1))
    with pytest.raises(ValueError, match="shift_feh must be a number >= 0"):
        TrainConfig(shift_feh=-0.1)


def test_training_with_augmentation_records_it_and_resumes(set_store, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=16, hidden_features=8, num_transforms=1,
                      embedding_dim=8, conv_channels=(4,), shift_feh=0.1, shift_ofe=0.03,
                      resample_stars=True)
    result = train(set_store, "aug", "v1", "nsub_classifier", tmp_path / "m", cfg)
    assert len(result["members"][0]) == 2
    import json

    config = json.loads((tmp_path / "m" / "config.json").read_text())["config"]
    assert (config["shift_feh"], config["shift_ofe"], config["resample_stars"]) == (0.1, 0.03, True)
