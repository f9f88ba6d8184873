"""Estimator tasks are plug-ins: a task defined and registered here (outside the package) is
trained, loaded, sampled, evaluated, inferred and offered by the CLI with no other change."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import store_with_set

from casbi_store.learn.modelfolder import load_model
from casbi_store.learn.tasks import FlowTask, block_parameters, get_task, register, task_names
from casbi_store.learn.tasks import base as task_base
from casbi_store.learn.trainer import TrainConfig, train
from casbi_store.store import schema as S

TINY = TrainConfig(epochs=2, batch_size=32, hidden_features=8, num_transforms=2, embedding_dim=8,
                   conv_channels=(2, 4), learning_rate=2e-3, patience=10, seed=5)


class TopMass(FlowTask):
    """log10 M* of the most massive block, from the histogram alone."""

    name = "test_top_mass"
    help = "NPE of log10 M* of the most massive block"
    title = "top block M*"
    step = 2
    target = S.THETA.name
    preference = 9

    def parameters(self, joint_n_sub=None):
        return ["log10_mstar_1"]

    def to_training_pair(self, x, target, *, max_rank=3, joint_n_sub=None, generator=None):
        return block_parameters(target[:, 0])[:, :1], x

    def example_parameters(self, target, *, max_rank=3, joint_n_sub=None):
        t = torch.as_tensor(np.asarray(target, dtype=np.float64))
        return block_parameters(t[:, 0])[:, :1].numpy()


@pytest.fixture
def top_mass():
    register(TopMass)
    yield get_task(TopMass.name)
    task_base._REGISTRY.pop(TopMass.name)


@pytest.fixture(scope="module")
def store(tiny_store, tmp_path_factory):
    return store_with_set(tiny_store[0], tmp_path_factory.mktemp("tasks"), name="p", n_sub_min=3,
                          n_sub_max=6, train_per_n=30, test_per_n=10, seed=4)


def test_a_task_defined_outside_the_package_trains_samples_and_evaluates(store, top_mass,
                                                                          tmp_path, capsys):
    from casbi_store.apply.infer import infer
    from casbi_store.apply.posteriors import load_posterior
    from casbi_store.cli import build_parser
    from casbi_store.evaluation.evaluate import evaluate

    assert TopMass.name in task_names()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    train_help = capsys.readouterr().out
    assert TopMass.name in train_help and "most massive block" in train_help
    result = train(store, "p", "v1", TopMass.name, tmp_path / "m", TINY)
    assert len(result["members"][0]) == 2
    model = load_model(tmp_path / "m")
    assert model.task_spec is top_mass and model.parameters == ["log10_mstar_1"]
    # the prior box is the range of the training halos' top-block log10 M*
    train_split = xr.open_zarr(store, group="training_sets/p/v1/train", consolidated=True)
    top = np.log10(train_split.theta.values[:, 0, 0])
    np.testing.assert_allclose(model.stats["theta_example"][:, 0].min(), top.min(), rtol=1e-6)
    test = xr.open_zarr(store, group="training_sets/p/v1/test", consolidated=True)
    x = torch.as_tensor(test.x.values[:1], dtype=torch.float32)[:, None]
    samples = load_posterior(model).sample((50,), x=x, show_progress_bars=False)
    assert samples.shape == (50, 1) and torch.isfinite(samples).all()
    drawn = infer([tmp_path / "m"], test.x.values[0], n_samples=100)
    assert drawn["log10_mstar_1"].sizes == {"sample": 100}
    assert drawn["log10_mstar_1"].attrs["units"] == "log10 Msol"
    results = evaluate([tmp_path / "m"], split="test", max_halos=40, n_samples=20)
    metrics = results["models"][str(tmp_path / "m")]["metrics"]
    truth = np.log10(test.theta.values[:, 0, 0])
    assert metrics["rows"] == len(truth)
    assert metrics["truth_std_log10_mstar_1"] == pytest.approx(np.std(truth), rel=1e-5)


def test_registry_names_its_tasks_and_refuses_unknown_or_duplicate_ones():
    assert task_names()[:4] == ("nsub", "nsub_classifier", "theta", "theta_joint")
    with pytest.raises(ValueError, match="task must be one of"):
        get_task("thetas")
    with pytest.raises(ValueError, match="registered twice"):
        register(type(get_task("theta")))


def test_no_module_outside_tasks_branches_on_a_task_name():
    package = Path(__file__).parents[1] / "casbi_store"
    pattern = re.compile(r'task ==|task in |\.task ==|startswith\("nsub')
    hits = [f"{p.relative_to(package)}:{i}" for p in package.rglob("*.py")
            if "tasks" not in p.relative_to(package).parts
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_model_folders_written_with_the_old_n_sub_key_still_load(store, tmp_path):
    """Before the rename, TrainConfig.joint_n_sub was called n_sub in config.json."""
    from casbi_store.apply.infer import infer

    out = tmp_path / "j"
    train(store, "p", "v1", "theta_joint", out, TrainConfig(**{**TINY.__dict__, "epochs": 1,
                                                             "joint_n_sub": 4}))
    new = load_model(out)
    meta = json.loads((out / "config.json").read_text())
    meta["config"]["n_sub"] = meta["config"].pop("joint_n_sub")
    (out / "config.json").write_text(json.dumps(meta))
    (out / "manifest.json").unlink()  # a folder of that time had no manifest either
    old = load_model(out)
    assert old.joint_n_sub == 4 and old.parameters == new.parameters
    x = torch.rand(3, 1, 64, 64) * 10
    theta = torch.as_tensor(new.stats["theta_example"][:3], dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(old.members[0].loss(theta, x), new.members[0].loss(theta, x))
    test = xr.open_zarr(store, group="training_sets/p/v1/test", consolidated=True)
    assert infer([out], test.x.values[0], n_samples=50)["tau_4"].attrs["n_sub"] == 4
    # resuming the old folder with the same options is not a change of network
    history = train(store, "p", "v1", "theta_joint", out,
                    TrainConfig(**{**TINY.__dict__, "epochs": 2, "joint_n_sub": 4}))["members"][0]
    assert [h["epoch"] for h in history] == [1, 2]
    assert TrainConfig.from_dict(load_model(out).meta["config"]).joint_n_sub == 4
