"""The thin trainer: a tiny NPE learns, saves, reloads and resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import store_with_set

from casbi_store.trainer import TrainConfig, load_estimator, to_theta, train

TINY = TrainConfig(epochs=3, batch_size=64, hidden_features=16, num_transforms=2,
                   embedding_dim=16, conv_channels=(4, 8), learning_rate=2e-3, patience=10)


@pytest.fixture(scope="module")
def store(tiny_store, tmp_path_factory):
    return store_with_set(tiny_store[0], tmp_path_factory.mktemp("train"), name="t", n_sub_min=3,
                          n_sub_max=8, train_per_n=120, test_per_n=5, seed=3)


def test_nsub_npe_learns_saves_and_reloads(store, tmp_path):
    result = train(store, "t", "v1", "nsub", tmp_path / "m", TINY)
    losses = [h["train_loss"] for h in result["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    first, meta = load_estimator(tmp_path / "m")
    again, _ = load_estimator(tmp_path / "m")
    x = torch.rand(5, 1, 64, 64) * 20
    theta = torch.full((5, 1), 5.0)
    with torch.no_grad():
        assert torch.equal(first.log_prob(theta[None], condition=x),
                           again.log_prob(theta[None], condition=x))
    assert meta["parameters"] == ["n_sub"]


def test_resume_continues_from_the_checkpoint(store, tmp_path):
    out = tmp_path / "r"
    cfg2 = TrainConfig(**{**TINY.__dict__, "epochs": 2})
    first = train(store, "t", "v1", "nsub", out, cfg2)["history"]
    resumed = train(store, "t", "v1", "nsub", out, TINY)["history"]  # "killed" after epoch 2
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    assert resumed[:2] == first
    assert json.loads((out / "history.json").read_text()) == resumed


def test_theta_targets_are_log_masses_of_the_top_blocks():
    target = torch.tensor([[[1e6, 1e9, 3.0], [1e5, 1e8, 5.0], [1e4, 1e7, 7.0], [np.nan] * 3]])
    theta = to_theta(target, "theta")
    np.testing.assert_allclose(theta.numpy()[0], [6, 9, 3, 5, 8, 5, 4, 7, 7], rtol=1e-6)


def test_infer_returns_samples_inside_the_prior(store, tmp_path):
    import subprocess
    import sys

    import xarray as xr

    from casbi_store.infer import infer, load_posterior

    for task in ("nsub", "theta"):
        train(store, "t", "v1", task, tmp_path / task, TINY)
    x = xr.open_zarr(store, group="training_sets/t/v1/test", consolidated=True).x.values[0]
    samples = infer([tmp_path / "nsub", tmp_path / "theta"], x, n_samples=500)
    assert list(samples.data_vars)[:2] == ["n_sub", "log10_mstar_1"] and samples.sizes["sample"] == 500
    for task in ("nsub", "theta"):
        posterior, meta = load_posterior(tmp_path / task)
        low, high = posterior.prior.base_dist.low.numpy(), posterior.prior.base_dist.high.numpy()
        for k, name in enumerate(meta["parameters"]):
            assert samples[name].min() >= low[k] and samples[name].max() <= high[k]
    assert samples["log10_mstar_1"].attrs["units"] == "log10 Msol"
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-m", "casbi_store.cli", "infer", str(tmp_path / "nsub"),
                           "--histogram", str(tmp_path / "x.npy"), "--out",
                           str(tmp_path / "post.nc"), "--samples", "300"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert xr.open_dataset(tmp_path / "post.nc").sizes["sample"] == 300
    assert (tmp_path / "post.png").stat().st_size > 2_000
