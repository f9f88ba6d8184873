"""Streaming a training-set split into torch: coverage, order, buffer, transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import serve_http, store_with_set

from casbi_store.learn.estimators import Log1pStandardize
from casbi_store.learn.streaming import TrainingSetStream, streamed_moments


@pytest.fixture(scope="module")
def store(tiny_store, tmp_path_factory):
    # 6 x 400 halos: 1920 training rows in 4 chunks of 512
    return store_with_set(tiny_store[0], tmp_path_factory.mktemp("stream"), name="s", n_sub_min=3,
                          n_sub_max=8, train_per_n=400, test_per_n=5, seed=2)


def indices(stream, workers=0, epoch=0):
    stream.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(stream, batch_size=64, num_workers=workers)
    return torch.cat([batch[2] for batch in loader]).numpy()


def test_every_row_once_per_epoch_across_workers(store):
    stream = TrainingSetStream(store, "s", "v1", "train", return_index=True, seed=1)
    assert len(stream) == 1920
    for epoch in (0, 1):
        seen = indices(stream, workers=2, epoch=epoch)
        assert np.array_equal(np.sort(seen), np.arange(1920))
    assert not np.array_equal(indices(stream, epoch=0), indices(stream, epoch=1))


def test_rows_and_targets_match_the_store(store):
    ref = xr.open_zarr(store, group="training_sets/s/v1/train", consolidated=True).load()
    stream = TrainingSetStream(store, "s", "v1", "train", return_index=True, shuffle=False)
    for x, n_sub, i in list(stream)[:50]:
        assert x.shape == (1, 64, 64) and np.array_equal(x[0].numpy(), ref.x.values[i])
        assert n_sub.item() == ref.n_sub.values[i]
    theta = TrainingSetStream(store, "s", "v1", "train", target="theta", shuffle=False)
    _, t = next(iter(theta))
    np.testing.assert_array_equal(t.numpy(), ref.theta.values[0].astype(np.float32))


def test_buffer_bounds_what_is_held(store):
    stream = TrainingSetStream(store, "s", "v1", "train", return_index=True, buffer_chunks=1)
    seen = indices(stream)
    chunks = seen // 512
    # with a one-chunk buffer, each chunk's rows come out together, in shuffled order
    assert len(np.flatnonzero(np.diff(chunks))) == 3
    assert not np.array_equal(seen, np.sort(seen))


def test_log1p_standardize_from_a_streamed_pass(store):
    stream = TrainingSetStream(store, "s", "v1", "train")
    mean, std = streamed_moments(stream)
    x = xr.open_zarr(store, group="training_sets/s/v1/train", consolidated=True).x.values
    np.testing.assert_allclose(mean, np.log1p(x.astype(float)).mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(std, np.log1p(x.astype(float)).std(axis=0), rtol=1e-6, atol=1e-9)
    transform = Log1pStandardize(mean, std)
    out = transform(torch.from_numpy(x[:8, None].astype(np.float32)))
    assert out.shape == (8, 1, 64, 64) and torch.isfinite(out).all()
    assert set(transform.state_dict()) == {"mean", "std"}  # saved with the model


def test_bad_arguments(store):
    with pytest.raises(ValueError, match="split"):
        TrainingSetStream(store, "s", "v1", "training")
    with pytest.raises(KeyError, match="no training-set split"):
        TrainingSetStream(store, "s", "v9", "train")


def test_stream_from_the_intake_catalog_over_http_with_forked_workers(store):
    """Opened inside each worker: an fsspec HTTP array opened in the parent fails in a fork."""
    import intake

    from casbi_store.compose.catalog import update_catalog

    update_catalog(store.parent / "casbi.yaml", store)
    with serve_http(store.parent) as base:
        entry = intake.open_catalog(f"{base}/casbi.yaml").s(split="train")
        stream = TrainingSetStream.from_source(entry, return_index=True)
        assert stream.store == f"{base}/store.zarr" and len(stream) == 1920
        loader = torch.utils.data.DataLoader(stream, batch_size=64, num_workers=2,
                                             multiprocessing_context="fork")
        rows = torch.cat([batch[2] for batch in loader]).numpy()
        x_remote = next(iter(torch.utils.data.DataLoader(
            TrainingSetStream.from_source(entry, shuffle=False), batch_size=8)))[0]
    assert np.array_equal(np.sort(rows), np.arange(1920))
    local = xr.open_zarr(store, group="training_sets/s/v1/train", consolidated=True)
    assert np.array_equal(x_remote[:, 0].numpy(), local.x.values[:8])
