"""Inference inputs that cannot mislead: a model folder is complete or refused, an observation
without information is an error, numeric options are checked, observation files carry their
provenance into the samples, an ensemble's samples mix its members by weight, and the public
Python calls are as quiet as the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import store_with_set

from casbi_store.apply.infer import infer, read_input
from casbi_store.apply.observe import ColumnNames, ObservationError, observe_table, write_observation
from casbi_store.cli import main
from casbi_store.learn.modelfolder import ModelFolderError, load_model
from casbi_store.learn.trainer import TrainConfig, train

TINY = TrainConfig(epochs=1, batch_size=64, hidden_features=16, num_transforms=2,
                   embedding_dim=16, conv_channels=(4, 8), learning_rate=2e-3, patience=10)
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def trained(tiny_store, tmp_path_factory) -> dict:
    """A store with a small set, a test histogram and tiny trained step-1 and step-2 folders."""
    folder = tmp_path_factory.mktemp("infer_inputs")
    store = store_with_set(tiny_store[0], folder, name="t", n_sub_min=3, n_sub_max=6,
                           train_per_n=40, test_per_n=5, seed=5)
    for task in ("nsub_classifier", "theta"):
        train(store, "t", "v1", task, folder / task, TINY)
    x = xr.open_zarr(store, group="training_sets/t/v1/test", consolidated=True).x.values[0]
    np.save(folder / "halo.npy", x)
    return {"store": store, "folder": folder, "x": x, "step1": folder / "nsub_classifier",
            "theta": folder / "theta"}


def _edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def _set_config(key, value):
    return lambda d: _edit_json(d / "config.json", lambda m: m["config"].__setitem__(key, value))


def _truncate(path_in_folder: str):
    def damage(d: Path) -> None:
        path = d / path_in_folder
        path.write_bytes(path.read_bytes()[:300])
    return damage


# (damage done to a copy of a complete theta folder, the file named, what the message says)
FOLDER_FAULTS = {
    "no_ensemble_json": (lambda d: (d / "ensemble.json").unlink(), "", "still training or interrupted"),
    "member_weights_missing": (lambda d: (d / "member-0" / "model.pt").unlink(),
                               "member-0/model.pt", "missing although ensemble.json lists"),
    "listed_member_absent": (lambda d: _edit_json(d / "ensemble.json", lambda e: e.update(
        members=["member-0", "member-1"], weights=[0.5, 0.5], best_val_loss=[1.0, 1.0])),
        "member-1/model.pt", "missing although ensemble.json lists"),
    "corrupt_model_pt": (_truncate("member-0/model.pt"), "member-0/model.pt",
                         "not readable as torch weights"),
    "model_pt_not_torch": (lambda d: (d / "member-0" / "model.pt").write_text("hello"),
                           "member-0/model.pt", "not readable as torch weights"),
    "hidden_features_edited": (_set_config("hidden_features", 32), "member-0/model.pt",
                               "hidden_features=32"),
    "embedding_dim_edited": (_set_config("embedding_dim", 8), "member-0/model.pt",
                             "embedding_dim=8"),
    "num_transforms_edited": (_set_config("num_transforms", 3), "member-0/model.pt",
                              "num_transforms=3"),
    "conv_channels_edited": (_set_config("conv_channels", [4, 8, 16]), "member-0/model.pt",
                             "conv_channels=[4, 8, 16]"),
    "hidden_features_not_a_number": (_set_config("hidden_features", "big"), "config.json",
                                     "hidden_features='big' is not a positive integer"),
    "config_bad_json": (lambda d: (d / "config.json").write_text('{"task": "theta",'),
                        "config.json", "not readable as JSON"),
    "config_missing_key": (lambda d: _edit_json(d / "config.json", lambda m: m.pop("config")),
                           "config.json", "missing key(s) ['config']"),
    "config_unknown_task": (lambda d: _edit_json(d / "config.json", lambda m: m.update(
        task="thetas")), "config.json", "task must be one of"),
    "ensemble_bad_json": (lambda d: (d / "ensemble.json").write_text("[1,"), "ensemble.json",
                          "not readable as JSON"),
    "ensemble_no_weights": (lambda d: _edit_json(d / "ensemble.json", lambda e: e.pop("weights")),
                            "ensemble.json", "no 'weights'"),
    "weights_not_summing_to_1": (lambda d: _edit_json(d / "ensemble.json", lambda e: e.update(
        weights=[0.5])), "ensemble.json", "summing to 1"),
    "weights_wrong_count": (lambda d: _edit_json(d / "ensemble.json", lambda e: e.update(
        weights=[0.5, 0.5])), "ensemble.json", "2 weight(s) for 1 member(s)"),
    "transform_corrupt": (_truncate("transform.npz"), "transform.npz", "not readable"),
}


@pytest.mark.parametrize("fault", sorted(FOLDER_FAULTS))
def test_a_damaged_or_incomplete_model_folder_is_refused_naming_the_file(trained, tmp_path,
                                                                          fault, capsys):
    damage, file, says = FOLDER_FAULTS[fault]
    folder = tmp_path / "theta"
    shutil.copytree(trained["theta"], folder)
    damage(folder)
    with pytest.raises(ModelFolderError) as info:
        load_model(folder)
    assert str(folder / file).rstrip("/") in str(info.value) and says in str(info.value)
    # the CLI: the same message, rc 2, no traceback (main() is the console script)
    rc = main(["infer", str(trained["step1"]), str(folder), "--histogram",
               str(trained["folder"] / "halo.npy"), "--out", str(tmp_path / "p.nc"),
               "--samples", "50"])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and str(folder) in err and "Traceback" not in err
    assert not (tmp_path / "p.nc").exists()


def test_a_folder_killed_while_training_more_is_refused_until_train_finishes(trained, tmp_path):
    """Before: infer used whatever model.pt files a running or killed train had left (its
    answer moved with every epoch)."""
    folder = tmp_path / "theta"
    shutil.copytree(trained["theta"], folder)
    checkpoint = folder / "member-0" / "checkpoint.pt"
    before = checkpoint.stat().st_mtime_ns
    script = (f"from casbi_store.learn.trainer import TrainConfig, train\n"
              f"train({str(trained['store'])!r}, 't', 'v1', 'theta', {str(folder)!r}, "
              f"TrainConfig(**{{**{TINY.__dict__!r}, 'ensemble': 2, 'epochs': 200, "
              f"'patience': 200}}))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while (folder / "ensemble.json").exists() or checkpoint.stat().st_mtime_ns == before:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(ModelFolderError, match="still training or interrupted: re-run train"):
        load_model(folder)
    train(trained["store"], "t", "v1", "theta", folder, TrainConfig(**{**TINY.__dict__,
                                                                      "ensemble": 2}))
    model = load_model(folder)
    assert len(model.members) == 2
    assert json.loads((folder / "ensemble.json").read_text())["members"] == ["member-0",
                                                                             "member-1"]


def _histogram(tmp_path: Path, name: str, values) -> Path:
    path = tmp_path / name
    np.save(path, np.asarray(values, dtype=np.float32))
    return path


def _obs_faults(x: np.ndarray):
    negative, nan = x.astype(np.float32), x.astype(np.float32)
    negative[3, 3] = -1
    nan[3, 3] = np.nan
    return {"all_zero": (np.zeros((64, 64)), "all zeros"),
            "negative": (negative, "1 negative counts"),
            "not_finite": (nan, "1 non-finite counts"),
            "wrong_shape": (np.ones((32, 32)), "shape (32, 32)")}


@pytest.mark.parametrize("fault", ["all_zero", "negative", "not_finite", "wrong_shape"])
def test_a_histogram_without_information_is_refused(trained, tmp_path, fault, capsys):
    values, says = _obs_faults(trained["x"])[fault]
    path = _histogram(tmp_path, f"{fault}.npy", values)
    models = [trained["step1"], trained["theta"]]
    with pytest.raises(ObservationError, match=re.escape(says)):
        infer(models, path, n_samples=50)
    with pytest.raises(ObservationError, match=f"the histogram given to infer: .*{re.escape(says)}"):
        infer(models, values, n_samples=50)  # an array from Python: checked the same way
    rc = main(["infer", *map(str, models), "--histogram", str(path), "--out",
               str(tmp_path / "p.nc"), "--samples", "50"])
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err and says in err and "Traceback" not in err


def test_a_star_table_of_which_no_star_is_binned_is_refused(trained, tmp_path, capsys):
    table = tmp_path / "far.csv"
    table.write_text("[Fe/H],[O/Fe]\n-1.0,1.9\n-1.2,1.8\nnan,0.1\n")  # [O/Fe] beyond the edges
    with pytest.raises(ObservationError, match=r"far\.csv: none of the 2 stars left after the "
                                               r"cuts lies inside the binning ranges"):
        read_input(table, trained["theta"])
    rc = main(["infer", str(trained["step1"]), str(trained["theta"]), "--stars", str(table),
               "--out", str(tmp_path / "p.nc")])
    err = capsys.readouterr().err
    assert rc == 2 and "far.csv: " in err and "binning" in err and "Traceback" not in err


@pytest.mark.parametrize("option, value, says", [
    ("n_samples", 0, "n_samples must be an integer >= 1"),
    ("n_samples", 2.5, "n_samples must be an integer >= 1"),
    ("ranks", 0, "ranks must be an integer >= 1"),
    ("seed", -1, "seed must be an integer >= 0"),
    ("nsub_draw", "median", "nsub_draw must be one of"),
])
def test_numeric_options_are_checked_before_any_work(trained, option, value, says):
    with pytest.raises(ValueError, match=says):
        infer([trained["step1"], trained["theta"]], trained["x"], **{option: value})


@pytest.mark.parametrize("flag, value", [("--samples", "0"), ("--samples", "-5"),
                                         ("--ranks", "0")])
def test_cli_numeric_options_give_an_error_not_a_traceback(trained, tmp_path, flag, value,
                                                           capsys):
    rc = main(["infer", str(trained["step1"]), str(trained["theta"]), "--histogram",
               str(trained["folder"] / "halo.npy"), "--out", str(tmp_path / "p.nc"), flag, value])
    err = capsys.readouterr().err
    assert rc == 2 and "must be an integer >= 1" in err and "Traceback" not in err


def test_the_console_script_reports_bad_files_without_a_traceback(trained, tmp_path):
    """The installed entry point, as a user runs it (the cases above run its main())."""
    folder = tmp_path / "theta"
    shutil.copytree(trained["theta"], folder)
    (folder / "ensemble.json").unlink()
    zero = _histogram(tmp_path, "zero.npy", np.zeros((64, 64)))
    for models, histogram, says in (([folder], trained["folder"] / "halo.npy",
                                     "still training or interrupted"),
                                    ([trained["step1"], trained["theta"]], zero, "all zeros")):
        proc = subprocess.run([sys.executable, "-m", "casbi_store.cli", "infer", *map(str, models),
                               "--histogram", str(histogram), "--out", str(tmp_path / "p.nc"),
                               "--samples", "50"], capture_output=True, text=True, timeout=300,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def _star_table(x: np.ndarray, model, path: Path, ofe_column: str = "[O/Fe]") -> Path:
    """Stars at the bin centres of histogram ``x`` (it bins back to ``x``), plus 3 far away."""
    fe, of = model.stats["feh_edges"], model.stats["ofe_edges"]
    i, j = np.nonzero(x)
    counts = x[i, j].astype(int)
    feh = np.concatenate([np.repeat((fe[i] + fe[i + 1]) / 2, counts), [fe[-1] + 1] * 3])
    ofe = np.concatenate([np.repeat((of[j] + of[j + 1]) / 2, counts), [0.0] * 3])
    rows = "\n".join(f"{float(a)!r},{float(b)!r}" for a, b in zip(feh, ofe, strict=True))
    path.write_text(f"[Fe/H],{ofe_column}\n{rows}\n")
    return path


def test_an_observation_file_carries_its_provenance_into_the_samples(trained, tmp_path):
    model = load_model(trained["theta"])
    x = trained["x"]
    table = _star_table(x, model, tmp_path / "survey.csv", ofe_column="MG_FE")
    obs = observe_table(table, trained["theta"], ColumnNames(ofe="MG_FE"), min_stars=1)
    path = write_observation(obs, tmp_path / "survey.nc")
    samples = infer([trained["step1"], trained["theta"]], path, n_samples=100)
    assert samples.attrs["n_obs"] == int(x.sum()) == obs.n_obs
    assert json.loads(samples.attrs["dropped"])["outside_range"] == 3
    assert samples.attrs["table_sha256"] == obs.table_sha256 and len(obs.table_sha256) == 64
    assert samples.attrs["ofe_mapping"].startswith("[Mg/Fe] (column MG_FE) stands in for [O/Fe]")
    assert "trained on [O/Fe]" in samples.attrs["ofe_caveat"]
    # the same counts as an array give the same samples (the file adds provenance, not change)
    again = infer([trained["step1"], trained["theta"]], x, n_samples=100)
    np.testing.assert_array_equal(again["log10_mstar"].values, samples["log10_mstar"].values)
    summary = read_input(path, model).summary
    assert f"survey.nc: {int(x.sum())} of {int(x.sum()) + 3} stars binned" in summary
    assert obs.table_sha256 in summary
    assert "caveat: The model was trained on [O/Fe]" in summary
    # a star table given to infer is observed exactly as `casbi-store observe` does
    plain = read_input(_star_table(x, model, tmp_path / "plain.csv"), trained["theta"])
    np.testing.assert_array_equal(plain.counts, x)
    assert plain.attrs["n_obs"] == int(x.sum()) and plain.attrs["ofe_caveat"] == ""
    assert json.loads(plain.attrs["dropped"])["outside_range"] == 3
    assert f"plain.csv: {int(x.sum())} of {int(x.sum()) + 3} stars binned" in plain.summary
    # another binning is refused, naming the file
    with xr.open_dataset(path) as ds:
        shifted = ds.load().assign(feh_edges=ds.feh_edges + 0.1)
    shifted.to_netcdf(tmp_path / "other.nc")
    with pytest.raises(ObservationError, match=r"other\.nc: binned with other feh_edges"):
        infer([trained["step1"], trained["theta"]], tmp_path / "other.nc", n_samples=100)


def test_seed_changes_the_samples_and_repeats_them(trained):
    """Before, loading the folders reseeded torch after ``seed`` was set: every seed was one."""
    models = [load_model(trained["step1"]), load_model(trained["theta"])]
    a, b = (infer(models, trained["x"], n_samples=200, seed=s) for s in (1, 2))
    again = infer([trained["step1"], trained["theta"]], trained["x"], n_samples=200, seed=1)
    assert not np.array_equal(a["log10_mstar"].values, b["log10_mstar"].values, equal_nan=True)
    np.testing.assert_array_equal(a["log10_mstar"].values, again["log10_mstar"].values)


def test_an_ensemble_s_samples_mix_its_members_by_weight(trained, tmp_path):
    """Every sample's member is drawn from the weights, in infer's per-rank mixture and in
    ``sample_in_prior`` (infer's path for a joint-mode model and the N_sub NPE). Before, sbi
    returned an ensemble's samples member by member and the first draws kept were member 0's."""
    import torch

    from casbi_store.apply.posteriors import (
        box_bounds,
        load_posterior,
        sample_in_prior,
        seeded_generator,
    )
    from casbi_store.learn.modelfolder import write_ensemble

    folder = tmp_path / "theta2"
    shutil.copytree(trained["theta"], folder)
    shutil.copytree(folder / "member-0", folder / "member-1")
    model = load_model(trained["theta"])
    low, high = (torch.as_tensor(b) for b in box_bounds(model))
    spikes = [low + 0.25 * (high - low), low + 0.75 * (high - low)]  # inside the prior box
    for k, at in enumerate(spikes):  # member k: a spike at spikes[k]
        weights = torch.load(folder / f"member-{k}" / "model.pt", weights_only=True)
        affine = "net._transform._transforms.0."  # sbi's z-score of theta: x = (y - shift) / scale
        weights[affine + "_scale"] = weights[affine + "_scale"] * 1e4
        weights[affine + "_shift"] = -at * weights[affine + "_scale"]
        torch.save(weights, folder / f"member-{k}" / "model.pt")
    write_ensemble(folder, {"best_val_loss": [1.0, 1.0], "weights": [0.25, 0.75]})
    ensemble = load_model(folder)

    def member(s: np.ndarray) -> np.ndarray:
        near = [(np.abs(s - at.numpy()) < 1e-2 * (high - low).numpy()).all(axis=-1) for at in spikes]
        assert (near[0] ^ near[1]).all()  # every sample is one member's
        return near[1].astype(int)

    x = torch.as_tensor(trained["x"])[None, None]
    cond = model.task_spec.condition(x.reshape(1, -1), torch.tensor([4.0]), torch.tensor([1.0]))
    second = member(sample_in_prior(load_posterior(ensemble), ensemble, 500, cond,
                                    seeded_generator(0, 2)))
    assert abs(second.mean() - 0.75) < 0.08, second.mean()  # sd 0.02
    assert 0 < second[:40].sum() < 40  # the first draws mix members

    samples = infer([trained["step1"], folder], trained["x"], n_samples=500, seed=0)
    second = member(np.stack([samples[p].values[:, 0] for p in ensemble.parameters], axis=-1))
    assert abs(second.mean() - 0.75) < 0.08, second.mean()
    assert 0 < second[:40].sum() < 40


QUIET = """
import sys
import warnings
import intake
from casbi_store.apply.infer import corner_plot, infer
from casbi_store.apply.support import ThinSupportWarning
# our own signal (a 2-epoch model's top block is often untrustworthy; tests/test_unseen_galaxies):
# what this test forbids is third-party noise
warnings.filterwarnings("ignore", category=ThinSupportWarning)
cat = intake.open_catalog(sys.argv[1])
ds = cat.t(version="v1", split="test").to_dask()
cat.galaxies.to_dask()
x = ds.x.values[0]
samples = infer([sys.argv[2], sys.argv[3]], x, n_samples=300, nsub_draw="mixture")
infer([sys.argv[2], sys.argv[3]], x, n_samples=300, nsub_draw="mode")
corner_plot(samples, sys.argv[4])
print("samples", samples.sizes["sample"])
"""


def test_the_python_api_is_as_quiet_as_the_cli(trained, tmp_path):
    from casbi_store.compose.catalog import update_catalog

    catalog = update_catalog(trained["folder"] / "casbi.yaml", trained["store"])
    proc = subprocess.run([sys.executable, "-W", "default", "-c", QUIET, str(catalog),
                           str(trained["step1"]), str(trained["theta"]), str(tmp_path / "c.png")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "samples 300"
    assert "Warning" not in proc.stderr and proc.stderr.strip() == "", proc.stderr


def test_the_classifier_temperature_is_fitted_stored_and_applied_by_infer(trained, tmp_path):
    """Training stores a temperature fitted on the validation split (its NLL no worse than at
    T = 1); infer's N_sub draws follow softmax(logits / T) of the stored T: near uniform when
    hot, the mode when cold; a damaged temperature is refused naming the file."""
    import torch

    fitted = json.loads((trained["step1"] / "calibration.json").read_text())
    assert fitted["temperature"] > 0 and fitted["rows"] > 0
    assert fitted["nll_after"] <= fitted["nll_before"] + 1e-9
    folder = tmp_path / "classifier"
    shutil.copytree(trained["step1"], folder)
    (folder / "manifest.json").unlink()  # edited by hand below, as a folder without a manifest
    net = load_model(folder).members[0]
    with torch.no_grad():
        logits = net.logits(torch.as_tensor(trained["x"], dtype=torch.float32)[None, None])[0]
    for temperature in (1e4, 1e-4):
        (folder / "calibration.json").write_text(json.dumps({"temperature": temperature}))
        n_sub = infer([folder], trained["x"], n_samples=4000, seed=2).n_sub.values
        if temperature > 1:  # 4 values (3..6), each ~1/4 of the draws
            assert np.allclose(np.bincount(n_sub - 3, minlength=4) / 4000, 0.25, atol=0.04)
        else:
            assert (n_sub == 3 + int(logits.argmax())).all()
    (folder / "calibration.json").write_text(json.dumps({"temperature": -1}))
    with pytest.raises(ModelFolderError, match="calibration.json.*temperature"):
        load_model(folder)


def test_a_model_folder_edited_consistently_is_refused_by_its_manifest(trained, tmp_path):
    """manifest.json (written last) holds the SHA-256 of every file a posterior depends on: an
    ensemble.json edited into another valid one is refused in one line; a folder without a
    manifest (written before them) still loads."""
    from casbi_store.learn.modelfolder import MANIFEST

    folder = tmp_path / "theta"
    shutil.copytree(trained["theta"], folder)
    assert (folder / MANIFEST).exists()
    load_model(folder)
    _edit_json(folder / "ensemble.json",
               lambda e: e.update(best_val_loss=[v - 1.0 for v in e["best_val_loss"]]))
    with pytest.raises(ModelFolderError, match=r"ensemble.json: changed after training \(its "
                                               r"SHA-256 differs from manifest.json\)"):
        load_model(folder)
    (folder / MANIFEST).unlink()  # a folder from before manifests: loads as it always did
    load_model(folder)
