"""The thin trainer: a tiny NPE learns, saves, reloads and resumes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from casbi_store.compose import ComposeSpec, compose
from casbi_store.trainer import TrainConfig, load_estimator, to_theta, train

TINY = TrainConfig(epochs=3, batch_size=64, hidden_features=16, num_transforms=2,
                   embedding_dim=16, conv_channels=(4, 8), learning_rate=2e-3, patience=10)


@pytest.fixture(scope="module")
def store(tiny_store, tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "store.zarr"
    shutil.copytree(tiny_store[0], path)
    compose(path, ComposeSpec(name="t", version="v1", n_sub_min=3, n_sub_max=8, train_per_n=120,
                              test_per_n=5, seed=3), progress=False)
    return path


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
