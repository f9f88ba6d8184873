"""The thin trainer: tiny estimators of every task learn, save, reload, resume and sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import store_with_set

from casbi_store import open_store
from casbi_store.learn import modelfolder as F
from casbi_store.learn import tasks as T
from casbi_store.learn.estimators import NsubClassifier
from casbi_store.learn.modelfolder import load_model
from casbi_store.learn.streaming import TrainingSetStream
from casbi_store.learn.trainer import TrainConfig, _steps_per_epoch, scheduled_lr, train

TINY = TrainConfig(epochs=3, batch_size=64, hidden_features=16, num_transforms=2,
                   embedding_dim=16, conv_channels=(4, 8), learning_rate=2e-3, patience=10)


def tiny(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY.__dict__, **changes})


@pytest.fixture(scope="module")
def store(tiny_store, tmp_path_factory):
    return store_with_set(tiny_store[0], tmp_path_factory.mktemp("train"), name="t", n_sub_min=3,
                          n_sub_max=8, train_per_n=120, test_per_n=5, seed=3)


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """Models trained with TINY, each on first use: trained(task) is (folder, train's result),
    shared by the tests that only read them (tests that train more train their own). The
    classifier gets 4 epochs: test_classifier_learns_on_the_training_set asserts over them."""
    out, done = tmp_path_factory.mktemp("trained"), {}

    def get(task: str):
        if task not in done:
            config = tiny(epochs=4) if task == "nsub_classifier" else TINY
            done[task] = out / task, train(store, "t", "v1", task, out / task, config)
        return done[task]
    return get


def test_nsub_npe_learns_saves_and_reloads(store, trained):
    folder, result = trained("nsub")
    losses = [h["train_loss"] for h in result["members"][0]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    first, again = load_model(folder), load_model(folder)
    x = torch.rand(5, 1, 64, 64) * 20
    theta = torch.full((5, 1), 5.0)
    with torch.no_grad():
        assert torch.equal(first.members[0].log_prob(theta[None], condition=x),
                           again.members[0].log_prob(theta[None], condition=x))
    assert first.parameters == ["n_sub"] and first.meta["n_sub_range"] == [3, 8]
    assert "sbi" in first.meta["versions"] and first.stats["feh_edges"].shape == (65,)
    gal = open_store(store)  # the set's own edges (trainingsets.binning) are the store's
    assert np.array_equal(first.stats["feh_edges"], gal.feh_edges.values)
    assert np.array_equal(first.stats["ofe_edges"], gal.ofe_edges.values)


def test_resume_continues_from_the_checkpoint(store, tmp_path):
    out = tmp_path / "r"
    first = train(store, "t", "v1", "nsub", out, tiny(epochs=2))["members"][0]
    resumed = train(store, "t", "v1", "nsub", out, TINY)["members"][0]  # "killed" after epoch 2
    assert [h["epoch"] for h in resumed] == [1, 2, 3]
    assert resumed[:2] == first
    assert json.loads((out / "member-0" / "history.json").read_text()) == resumed
    with pytest.raises(ValueError, match="holds a nsub model"):
        train(store, "t", "v1", "theta", out, TINY)
    with pytest.raises(ValueError, match="trained with other hidden_features"):
        train(store, "t", "v1", "nsub", out, tiny(hidden_features=32))


def test_classifier_probabilities_sum_to_one_over_2_to_100():
    net = NsubClassifier(np.zeros((64, 64)), np.ones((64, 64)), 2, 100, channels=(4, 8), width=16)
    p = net.probs(torch.rand(7, 1, 64, 64) * 30)
    assert p.shape == (7, 99) and torch.allclose(p.sum(dim=1), torch.ones(7))
    assert net.values[0] == 2 and net.values[-1] == 100
    theta = torch.tensor([[2.0], [100.0], [37.0]])
    x = torch.rand(3, 1, 64, 64)
    np.testing.assert_allclose(net.log_prob(theta, x).exp().detach().numpy(),
                               net.probs(x).detach().numpy()[[0, 1, 2], [0, 98, 35]], rtol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        net.loss(torch.tensor([[101.0]]), x[:1])


def test_classifier_learns_on_the_training_set(trained):
    folder, result = trained("nsub_classifier")
    losses = [h["train_loss"] for h in result["members"][0]]
    assert losses[-1] < losses[0]
    model = load_model(folder)
    assert model.members[0].values.tolist() == list(range(3, 9))


def test_per_rank_pairs_pick_the_block_of_the_drawn_rank():
    mstar = torch.tensor([[1e8, 1e7, 1e6, np.nan], [1e9, 1e5, np.nan, np.nan]])
    target = torch.stack([mstar, mstar * 30, torch.arange(8.0).reshape(2, 4)], dim=-1)
    x = torch.rand(2, 1, 64, 64)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        theta, cond = T.get_task("theta").to_training_pair(x, target, max_rank=3, generator=gen)
        n_sub, rank = cond[:, -2].long(), cond[:, -1].long()
        assert n_sub.tolist() == [3, 2] and torch.equal(cond[:, :-2], x.reshape(2, -1))
        for row in range(2):
            r = int(rank[row])
            assert 1 <= r <= n_sub[row]
            np.testing.assert_allclose(theta[row].numpy(),
                                       [np.log10(float(mstar[row, r - 1])),
                                        np.log10(30 * float(mstar[row, r - 1])),
                                        float(target[row, r - 1, 2])], rtol=1e-6)
            seen.add((row, r))
    assert seen == {(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)}
    theta, cond = T.get_task("theta_joint").to_training_pair(x, target, joint_n_sub=2)
    assert theta.shape == (1, 6) and torch.equal(cond, x[1:])


def test_ensemble_members_are_weighted_by_validation_likelihood(store, tmp_path):
    from sbi.inference import EnsemblePosterior

    from casbi_store.apply.posteriors import load_posterior

    result = train(store, "t", "v1", "theta", tmp_path / "e", tiny(epochs=2, ensemble=2))
    best = np.asarray(result["best_val_loss"])
    expected = np.exp(-best) / np.exp(-best).sum()
    np.testing.assert_allclose(result["weights"], expected, rtol=1e-6)
    model = load_model(tmp_path / "e")
    assert len(model.members) == 2 and model.parameters == ["log10_mstar", "log10_mdm", "tau"]
    posterior = load_posterior(model)
    assert isinstance(posterior, EnsemblePosterior)
    import xarray as xr

    x = xr.open_zarr(store, group="training_sets/t/v1/test", consolidated=True).x.values[:1]
    cond = T.ranked_condition(torch.as_tensor(x, dtype=torch.float32), torch.tensor([5.0]),
                              torch.tensor([1.0]))
    samples = posterior.sample((200,), x=cond, show_progress_bars=False)
    assert samples.shape == (200, 3) and torch.isfinite(samples).all()


def test_two_step_inference_returns_samples_inside_the_prior(store, trained, tmp_path):
    import subprocess
    import sys

    import xarray as xr

    from casbi_store.apply.infer import infer, read_star_table
    from casbi_store.apply.posteriors import load_posterior

    models = {task: trained(task)[0] for task in ("nsub_classifier", "nsub", "theta")}
    test = xr.open_zarr(store, group="training_sets/t/v1/test", consolidated=True)
    x = test.x.values[0]
    torch.manual_seed(2024)
    state = torch.get_rng_state()
    samples = infer([models["nsub_classifier"], models["nsub"], models["theta"]], x,
                    n_samples=400)
    assert torch.equal(torch.get_rng_state(), state)  # the user's global generator untouched
    torch.manual_seed(7)  # and none of the samples come from it
    again = infer([models["nsub_classifier"], models["nsub"], models["theta"]], x, n_samples=400)
    xr.testing.assert_identical(again, samples)
    assert samples.sizes == {"sample": 400, "rank": 3}
    assert set(np.unique(samples.n_sub)) <= set(range(3, 9))
    assert set(np.unique(samples.n_sub_npe)) <= set(range(3, 9))
    low = load_posterior(models["theta"]).prior.base_dist.low.numpy()
    high = load_posterior(models["theta"]).prior.base_dist.high.numpy()
    for k, name in enumerate(T.BLOCK_PARAMETERS):
        v = samples[name].values
        assert np.isfinite(v[:, 0]).all()  # rank 1 exists for every N_sub >= 3
        assert np.nanmin(v) >= low[k] and np.nanmax(v) <= high[k]
    assert samples["log10_mstar"].attrs["units"] == "log10 Msol"
    # the CLI, from a star table: stars at the bin centres of a test halo, plus 5 outside
    model = load_model(models["theta"])
    fe, of = model.stats["feh_edges"], model.stats["ofe_edges"]
    i, j = np.nonzero(x)
    counts = x[i, j].astype(int)
    stars = np.column_stack([np.repeat((fe[i] + fe[i + 1]) / 2, counts),
                             np.repeat((of[j] + of[j + 1]) / 2, counts)])
    stars = np.vstack([stars, np.column_stack([np.full(5, fe[-1] + 1), np.zeros(5)])])
    np.savetxt(tmp_path / "stars.csv", stars, delimiter=",", header="[Fe/H],[O/Fe]", comments="")
    binned, summary = read_star_table(tmp_path / "stars.csv", fe, of)
    assert np.array_equal(binned, x) and summary["outside"] == 5
    proc = subprocess.run([sys.executable, "-m", "casbi_store.cli", "infer",
                           str(models["nsub_classifier"]), str(models["theta"]),
                           "--stars", str(tmp_path / "stars.csv"), "--out",
                           str(tmp_path / "post.nc"), "--samples", "300"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"{counts.sum()} of {counts.sum() + 5} stars binned" in proc.stdout
    assert xr.open_dataset(tmp_path / "post.nc").sizes["sample"] == 300
    assert (tmp_path / "post.png").stat().st_size > 2_000


def test_star_table_errors_name_the_file(tmp_path):
    from casbi_store.apply.infer import read_star_table

    edges = np.linspace(-3, 0, 65)
    bad = tmp_path / "bad.csv"
    bad.write_text("feh,mass\n-1,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv: no column named any of"):
        read_star_table(bad, edges, edges)
    hist, summary = read_star_table(_write(tmp_path / "s.csv", "ofe,feh\n0.1,-1\n-5,-1\n"),
                                    edges, np.linspace(-0.5, 0.5, 65))
    assert summary == {"stars": 2, "binned": 1, "outside": 1} and hist.sum() == 1
    assert hist[np.searchsorted(edges, -1, side="right") - 1, 38] == 1


def _write(path, text):
    path.write_text(text)
    return path


def test_flow_standardisation_spans_the_whole_parameter_range():
    """Example parameters arrive sorted by N_sub; the flow must still learn at N_sub = 100."""
    from casbi_store.learn.estimators import build_npe

    theta = np.repeat(np.arange(2.0, 101.0), 40)[:, None]  # 3,960 rows, sorted
    net = build_npe(np.zeros((64, 64)), np.ones((64, 64)), theta, (1, 64, 64), hidden_features=8,
                    num_transforms=2, embedding_dim=8, conv_channels=(2,), seed=0)
    loss = net.loss(torch.tensor([[95.0]]), torch.rand(1, 1, 64, 64)).sum()
    assert loss.requires_grad
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_joint_mode_learns_all_blocks_of_one_n_sub(store, tmp_path):
    import xarray as xr

    from casbi_store.apply.infer import infer

    with pytest.raises(ValueError, match="theta_joint needs a fixed n_sub"):
        train(store, "t", "v1", "theta_joint", tmp_path / "j0", TINY)
    train(store, "t", "v1", "theta_joint", tmp_path / "j", tiny(joint_n_sub=4))
    model = load_model(tmp_path / "j")
    assert model.parameters[:4] == ["log10_mstar_1", "log10_mdm_1", "tau_1", "log10_mstar_2"]
    assert len(model.parameters) == 12
    train_split = xr.open_zarr(store, group="training_sets/t/v1/train", consolidated=True)
    n4 = train_split.theta.values[train_split.n_sub.values == 4]
    # the prior box spans exactly the N_sub = 4 halos' parameters
    np.testing.assert_allclose(model.stats["theta_example"][:, 0].max(),
                               np.log10(n4[:, 0, 0]).max(), rtol=1e-6)
    x = xr.open_zarr(store, group="training_sets/t/v1/test", consolidated=True).x.values[0]
    samples = infer([tmp_path / "j"], x, n_samples=200)
    assert samples["log10_mstar_4"].sizes == {"sample": 200}
    assert samples["tau_4"].attrs["units"] == "Gyr" and samples["tau_4"].attrs["n_sub"] == 4


def test_config_is_validated_before_any_work():
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="must be positive"):
        tiny(ensemble=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            tiny(device="cuda")
    assert TrainConfig.from_dict({**TINY.__dict__, "conv_channels": [4, 8]}) == TINY


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_lr_schedules_follow_torchs_schedulers(schedule):
    cfg, total = tiny(lr_schedule=schedule, learning_rate=3e-3), 40
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    torch_schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
                      if schedule == "cosine" else
                      torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.learning_rate,
                                                          total_steps=total))
    for step in range(total):
        assert scheduled_lr(cfg, step, total) == pytest.approx(optimizer.param_groups[0]["lr"])
        optimizer.step()
        torch_schedule.step()
    assert scheduled_lr(tiny(), 17, total) == TINY.learning_rate  # constant
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine, onecycle"):
        tiny(lr_schedule="linear")


def test_training_steps_the_learning_rate_by_the_schedule(store, tmp_path):
    cfg = tiny(epochs=2, lr_schedule="onecycle")
    train(store, "t", "v1", "nsub", tmp_path / "s", cfg)
    saved = torch.load(F.member_dir(tmp_path / "s", 0) / F.CHECKPOINT, weights_only=True)
    per_epoch = _steps_per_epoch(TrainingSetStream(store, "t", "v1", "train", target="n_sub"),
                                 cfg.batch_size)
    total = cfg.epochs * per_epoch
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        scheduled_lr(cfg, total - 1, total))


def test_point_estimate_head_is_learnt_and_conditions_the_flow(store, trained, tmp_path):
    """``point_estimate_weight``: an MLP estimate of theta trained by MSE beside the NLL and
    appended to the flow's condition; batched sampling's factored contexts carry it too."""
    from casbi_store.apply.posteriors import BatchedFlowSampler
    from casbi_store.learn.estimators import PointEstimate, point_estimate_head

    # the classifier's head: its N_sub estimate joins the pooled features before the softmax
    history = train(store, "t", "v1", "nsub_classifier", tmp_path / "c",
                    tiny(point_estimate_weight=1.0))["members"][0]
    assert history[-1]["train_estimate_mse"] < history[0]["train_estimate_mse"]
    classifier = load_model(tmp_path / "c")
    assert isinstance(classifier.members[0].estimate, PointEstimate)
    probs = T.get_task("nsub_classifier").posterior(classifier).probs(torch.rand(5, 1, 64, 64))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    for bad in (-1.0, "high", float("nan")):
        with pytest.raises(ValueError, match="point_estimate_weight must be a number >= 0"):
            tiny(point_estimate_weight=bad)
    folder = tmp_path / "pe"
    history = train(store, "t", "v1", "theta", folder, tiny(point_estimate_weight=1.0))["members"][0]
    mse = [h["train_estimate_mse"] for h in history]
    assert mse[-1] < mse[0] < 2.0  # standardised theta: ~1 for a constant guess
    assert all("train_estimate_mse" not in h for h in json.loads(
        (F.member_dir(trained("theta")[0], 0) / "history.json").read_text()))
    with pytest.raises(ValueError, match="other point_estimate_weight"):
        train(store, "t", "v1", "theta", folder, tiny(point_estimate_weight=0.5))

    model = load_model(folder)
    flow = model.members[0].net
    head = flow._embedding_net.estimate
    assert isinstance(head, PointEstimate) and not head.training
    with pytest.raises(ValueError, match="no point-estimate head"):
        point_estimate_head(load_model(trained("theta")[0]).members[0])

    import xarray as xr

    split = xr.open_zarr(store, group="training_sets/t/v1/test", consolidated=True)
    x = torch.as_tensor(split.x.values[:4], dtype=torch.float32)[:, None]
    n_sub = torch.tensor([3.0, 5.0, 8.0, 4.0])
    rank = torch.tensor([1.0, 2.0, 3.0, 1.0])
    cond = model.task_spec.condition(x, n_sub, rank)
    sampler = BatchedFlowSampler(model.task_spec.posterior(model))
    full = sampler.contexts(cond)[0]
    factored = sampler.ranked_contexts(x, np.arange(4), n_sub, rank)[0]
    torch.testing.assert_close(factored.full(), full, rtol=1e-5, atol=1e-5)
    # the last 3 context columns are the head's estimate, and the flow depends on them
    with torch.no_grad():
        features = flow._embedding_net.image_net(x)
        ranks = torch.stack([n_sub.log10(), rank.log10(), rank / n_sub], dim=1)
        torch.testing.assert_close(full[:, -3:], head(torch.cat([features, ranks], dim=1)))
        theta = torch.zeros(4, 3) + head.theta_mean
        shifted = full.clone()
        shifted[:, -3:] += 3.0
        assert not torch.allclose(flow._transform(theta, context=full)[0],
                                  flow._transform(theta, context=shifted)[0])
