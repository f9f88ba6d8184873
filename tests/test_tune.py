"""The optuna tune: trials train real tiny models, the study resumes and retries what a kill left."""

from __future__ import annotations

import fcntl
import json
from dataclasses import replace

import optuna
import pytest
from conftest import store_with_set
from optuna.trial import TrialState

from casbi_store.learn.trainer import TrainConfig, train
from casbi_store.learn.tune import study_name, suggest, tune

TINY = TrainConfig(epochs=1, batch_size=64, hidden_features=16, num_transforms=2,
                   embedding_dim=16, conv_channels=(4, 8), learning_rate=2e-3, patience=10)


@pytest.fixture(scope="module")
def store(tiny_store, tmp_path_factory):
    return store_with_set(tiny_store[0], tmp_path_factory.mktemp("tune"), name="t", n_sub_min=3,
                          n_sub_max=8, train_per_n=20, test_per_n=2, seed=3)


def load(out, task="nsub") -> optuna.Study:
    return optuna.load_study(study_name=study_name("t", "v1", task),
                             storage=f"sqlite:///{out / 'optuna.db'}")


def folders(out) -> list[str]:
    return sorted(p.name for p in out.glob("trial-*"))


def test_tune_finds_the_best_trial_and_resumes_to_n_trials(store, tmp_path):
    out = tmp_path / "tune"
    result = tune(store, "t", "v1", "nsub", out, 2, TINY)
    assert (out / "optuna.db").is_file() and folders(out) == ["trial-0", "trial-1"]
    assert json.loads((out / "best.json").read_text()) == result
    values = {}
    for n in (0, 1):
        losses = json.loads((out / f"trial-{n}" / "ensemble.json").read_text())["best_val_loss"]
        values[n] = -min(losses)
    best = max(values, key=values.get)
    assert result["best_trial"] == best and result["value"] == values[best]
    assert result["model"] == str(out / f"trial-{best}")
    config = json.loads((out / f"trial-{best}" / "config.json").read_text())["config"]
    assert {k: config[k] for k in result["params"]} == result["params"]
    assert set(result["params"]) == {"learning_rate", "batch_size", "hidden_features",
                                     "num_transforms", "embedding_dim"}
    assert [row["value"] for row in result["trials"]] == [values[0], values[1]]

    more = tune(store, "t", "v1", "nsub", out, 3, TINY)
    assert folders(out) == ["trial-0", "trial-1", "trial-2"] and len(more["trials"]) == 3
    trials = load(out).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[2].params != trials[0].params  # the resumed sampler does not replay trial 0
    assert more["value"] == max(t.value for t in trials)

    stamp = (out / "trial-2" / "ensemble.json").stat().st_mtime_ns
    again = tune(store, "t", "v1", "nsub", out, 3, TINY)
    assert len(load(out).trials) == 3 and folders(out) == ["trial-0", "trial-1", "trial-2"]
    assert (out / "trial-2" / "ensemble.json").stat().st_mtime_ns == stamp
    assert again == more

    with pytest.raises(ValueError, match=r"other base options \(epochs=1, not 2\)"):
        tune(store, "t", "v1", "nsub", out, 4, replace(TINY, epochs=2))
    with pytest.raises(ValueError, match="holds another tune"):
        tune(store, "t", "v1", "theta", out, 1, TINY)
    with open(out / "tune.lock", "w") as handle:  # another process tuning this folder
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="in use by another tune"):
            tune(store, "t", "v1", "nsub", out, 4, TINY)
    assert len(load(out).trials) == 3


def test_a_killed_trial_resumes_its_training_from_the_checkpoint(store, tmp_path):
    out = tmp_path / "killed"
    out.mkdir()
    # what a kill in the second epoch of trial 0 leaves: a RUNNING trial, one epoch checkpointed
    study = optuna.create_study(study_name=study_name("t", "v1", "nsub"), direction="maximize",
                                storage=f"sqlite:///{out / 'optuna.db'}")
    trial = study.ask()
    params = suggest(trial, "nsub")
    first = train(store, "t", "v1", "nsub", out / "trial-0", replace(TINY, **params))
    result = tune(store, "t", "v1", "nsub", out, 1, replace(TINY, epochs=2))
    trials = load(out).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == params and trials[1].user_attrs["retry_of"] == 0
    assert folders(out) == ["trial-1"] and result["best_trial"] == 1
    history = json.loads((out / "trial-1" / "member-0" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and history[:1] == first["members"][0]
    assert [row["state"] for row in result["trials"]] == ["FAIL", "COMPLETE"]


def test_the_classifier_tunes_no_flow_and_bad_arguments_fail_early(store, tmp_path):
    result = tune(store, "t", "v1", "nsub_classifier", tmp_path / "c", 1, TINY, seed=5)
    assert set(result["params"]) == {"learning_rate", "batch_size", "embedding_dim"}
    assert result["config"]["embedding_dim"] == result["params"]["embedding_dim"]
    assert result["config"]["hidden_features"] == TINY.hidden_features
    with pytest.raises(ValueError, match="n_trials must be an integer >= 1"):
        tune(store, "t", "v1", "nsub", tmp_path / "x", 0, TINY)
    with pytest.raises(ValueError, match="task must be one of"):
        tune(store, "t", "v1", "mass", tmp_path / "x", 1, TINY)
    with pytest.raises(ValueError, match="theta_joint needs a fixed n_sub"):
        tune(store, "t", "v1", "theta_joint", tmp_path / "x", 1, TINY)
    with pytest.raises(KeyError, match="no training-set split"):
        tune(store, "t", "v9", "nsub", tmp_path / "x", 1, TINY)
    assert not (tmp_path / "x").exists()


def test_a_search_of_some_options_keeps_the_others_and_feeds_training(store, tmp_path):
    from casbi_store.cli.tune import tuned_config

    out = tmp_path / "lr"
    result = tune(store, "t", "v1", "nsub_classifier", out, 1, TINY,
                  search=("batch_size", "learning_rate"))
    assert set(result["params"]) == {"learning_rate", "batch_size"}
    assert result["config"]["embedding_dim"] == TINY.embedding_dim  # not searched
    assert tuned_config(out, TINY) == replace(TINY, **result["params"])
    with pytest.raises(ValueError, match="searched learning_rate, batch_size, not learning_rate;"):
        tune(store, "t", "v1", "nsub_classifier", out, 2, TINY, search=("learning_rate",))
    with pytest.raises(ValueError, match="hidden_features not tuned for task 'nsub_classifier'"):
        tune(store, "t", "v1", "nsub_classifier", tmp_path / "y", 1, TINY,
             search=("hidden_features",))
    assert not (tmp_path / "y").exists()
    with pytest.raises(ValueError, match=r"y/best.json: no readable tune summary"):
        tuned_config(tmp_path / "y", TINY)
