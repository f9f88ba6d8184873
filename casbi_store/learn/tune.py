"""Hyper-parameter search: an optuna study over the trainer's learning rate, batch size, flow size
and embedding width (those of them the task's ``tuned`` names: the classifier has no flow),
maximising the validation log-likelihood (-min best validation loss of a
trial's ensemble members), as the seed does.

A tune folder holds::

    optuna.db      the study (SQLite): every trial's parameters, state and value
    trial-N/       trial N's model folder (``casbi_store.learn.modelfolder``), checkpoints included
    best.json      the best trial (parameters, value, model folder) and every trial as a table
    tune.lock      held (``flock``) while a tune runs, so one process at a time owns the folder

Re-running the same call resumes: only the trials still missing to reach ``n_trials`` COMPLETE
ones run. A trial interrupted by a kill (left RUNNING) or an error or Ctrl-C (FAIL) is retried
once, first, with the same parameters: its folder is renamed to the retry's ``trial-N`` so the
trainer resumes from its last checkpoint instead of starting over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from casbi_store import InputError
from casbi_store.store.atomic import atomic_write_text

from .streaming import TrainingSetStream
from .tasks import get_task
from .trainer import TrainConfig, train

log = logging.getLogger(__name__)

LEARNING_RATE = (1e-4, 3e-3)  # log-uniform
BATCH_SIZES = (32, 64, 128, 256)
HIDDEN_FEATURES = (32, 128)  # log-uniform integers
NUM_TRANSFORMS = (2, 10)
EMBEDDING_DIMS = (32, 64, 128)
SEARCHED = ("learning_rate", "batch_size", "hidden_features", "num_transforms", "embedding_dim")
UNCHECKED = ("device",)  # base options a resumed tune may change


def tuned_parameters(task: str, search: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The TrainConfig fields a tune of ``task`` samples (its task's ``tuned``, or the ``search``
    among them, the rest kept at the base config's values), in the order they are drawn."""
    tuned = get_task(task).tuned
    if search is not None:
        wrong = sorted(set(search) - set(tuned)) or ([] if search else ["(none)"])
        if wrong:
            raise InputError(f"search: {', '.join(wrong)} not tuned for task {task!r}; "
                             f"choose among {', '.join(k for k in SEARCHED if k in tuned)}")
        tuned = tuple(search)
    return tuple(k for k in SEARCHED if k in tuned)


def suggest(trial: Trial, task: str, search: tuple[str, ...] | None = None) -> dict:
    """One trial's TrainConfig changes, drawn from the search space."""
    space = {
        "learning_rate": lambda: trial.suggest_float("learning_rate", *LEARNING_RATE, log=True),
        "batch_size": lambda: trial.suggest_categorical("batch_size", BATCH_SIZES),
        "hidden_features": lambda: trial.suggest_int("hidden_features", *HIDDEN_FEATURES,
                                                     log=True),
        "num_transforms": lambda: trial.suggest_int("num_transforms", *NUM_TRANSFORMS),
        "embedding_dim": lambda: trial.suggest_categorical("embedding_dim", EMBEDDING_DIMS),
    }
    return {k: space[k]() for k in tuned_parameters(task, search)}


def study_name(name: str, version: str, task: str) -> str:
    return f"casbi-tune:{name}:{version}:{task}"


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    import fcntl

    with open(out / "tune.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{out} is in use by another tune; wait for it or choose another out"
                             ) from None
        yield


def _json_base(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def _check_study(study: optuna.Study, out: Path, base: TrainConfig, task: str,
                 search: tuple[str, ...] | None = None) -> None:
    """A maximised study, with the base config and searched options its trials were trained
    with, owning every trial folder."""
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise InputError(f"{out}/optuna.db: study {study.study_name} does not maximise")
    searched = list(tuned_parameters(task, search))
    if study.user_attrs.get("search", searched) != searched:
        raise InputError(f"{out}: its trials searched {', '.join(study.user_attrs['search'])}, "
                         f"not {', '.join(searched)}; choose another out")
    study.set_user_attr("search", searched)
    skip = set(UNCHECKED) | set(searched)
    wanted = {k: v for k, v in _json_base(base).items() if k not in skip}
    stored = study.user_attrs.get("base")
    if stored is None:
        study.set_user_attr("base", _json_base(base))
    else:
        changed = sorted(k for k, v in wanted.items() if stored.get(k) != v)
        if changed:
            raise InputError(f"{out}: its trials were trained with other base options ("
                             + ", ".join(f"{k}={stored.get(k)!r}, not {wanted[k]!r}" for k in changed)
                             + "); their values would not compare; choose another out")
    numbers = {t.number for t in study.get_trials(deepcopy=False)}
    strays = sorted(p.name for p in out.glob("trial-*")
                    if not p.name[6:].isdigit() or int(p.name[6:]) not in numbers)
    if strays:
        raise InputError(f"{out}: folder(s) {strays} belong to no trial of {study.study_name}; "
                         "choose another out")


def _retry_interrupted(study: optuna.Study, storage) -> None:
    """RUNNING trials (the lock says no process runs them) become FAIL; every FAIL trial not yet
    retried is enqueued with its parameters and ``retry_of`` = its number."""
    study_id = storage.get_study_id_from_name(study.study_name)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state == TrialState.RUNNING:
            storage.set_trial_state_values(
                storage.get_trial_id_from_study_id_trial_number(study_id, t.number), TrialState.FAIL)
        elif t.state != TrialState.FAIL:
            continue
        if t.number not in retried and t.params:
            log.info("trial %d was interrupted; retrying it with the same parameters", t.number)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _summary(study: optuna.Study, out: Path, base: TrainConfig, task: str,
             search: tuple[str, ...] | None = None) -> dict:
    columns = tuned_parameters(task, search)
    trials = study.get_trials(deepcopy=False)
    table = [{"trial": t.number, "state": t.state.name, "value": _finite(t.value),
              **{k: t.params.get(k) for k in columns},
              "seconds": t.user_attrs.get("seconds"), "retry_of": t.user_attrs.get("retry_of"),
              "folder": os.fspath(out / f"trial-{t.number}")
              if (out / f"trial-{t.number}").exists() else None}
             for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary = {"study": study.study_name, "storage": f"sqlite:///{out.resolve() / 'optuna.db'}",
               "task": task, "complete": len(complete), "best_trial": None, "value": None,
               "params": None, "model": None, "config": None, "trials": table}
    if complete:
        best = study.best_trial
        summary.update(best_trial=best.number, value=_finite(best.value), params=best.params,
                       model=os.fspath(out / f"trial-{best.number}"),
                       config=asdict(replace(base, **best.params)))
    return json.loads(json.dumps(summary))


def tune(store: str | os.PathLike, name: str, version: str, task: str, out: str | os.PathLike,
         n_trials: int, base: TrainConfig, seed: int = 0,
         storage_options: dict | None = None, search: tuple[str, ...] | None = None) -> dict:
    """Run (or resume) a study until ``n_trials`` trials are COMPLETE; write ``out/best.json``.

    Each trial trains ``out/trial-N`` with ``base`` changed by the sampled parameters (TPE,
    seeded with ``seed`` + the number of trials already in the study, so a resumed tune does not
    repeat the first trials' random draws). Trials a kill (RUNNING) or an exception (FAIL) cut
    short are retried first, once each, with their parameters, resuming their training from the
    checkpoints in their folder; a base config other than the study's is an error (the values
    would not compare). ``search`` restricts the searched options (e.g. learning rate and batch
    size at a fixed network). One process per ``out`` (a lock). Returns what ``best.json`` holds.
    """
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise InputError(f"n_trials must be an integer >= 1, not {n_trials!r}")
    spec = get_task(task)
    search = tuple(search) if search is not None else None
    tuned_parameters(task, search)  # a wrong search fails before the folder is made
    if not isinstance(base, TrainConfig):
        raise ValueError(f"base must be a TrainConfig, not {type(base).__name__}")
    spec.parameters(base.joint_n_sub)  # theta_joint without joint_n_sub fails here
    for split in ("train", "val"):  # a wrong set fails before the folder is made
        TrainingSetStream(store, name, version, split, target=spec.target,
                          storage_options=storage_options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _lock(out):
        storage = optuna.storages.RDBStorage(f"sqlite:///{out.resolve() / 'optuna.db'}")
        try:
            wanted = study_name(name, version, task)
            others = sorted(set(optuna.get_all_study_names(storage)) - {wanted})
            if others:  # trial numbers, hence folders, are per study: one study per folder
                raise InputError(f"{out} holds another tune ({', '.join(others)}); choose another "
                                 f"out for {wanted}")
            study = optuna.create_study(storage=storage, study_name=wanted, direction="maximize",
                                        load_if_exists=True)
            _check_study(study, out, base, task, search)
            missing = n_trials - len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            if missing > 0:
                _retry_interrupted(study, storage)
                study.sampler = optuna.samplers.TPESampler(
                    seed=seed + len(study.get_trials(deepcopy=False)))
                study.optimize(_objective(store, name, version, task, out, base, storage_options,
                                          search),
                               n_trials=missing, callbacks=[_log_trial(n_trials)])
            summary = _summary(study, out, base, task, search)
        finally:
            storage.engine.dispose()
    atomic_write_text(out / "best.json", json.dumps(summary, indent=2))
    if summary["best_trial"] is not None:
        log.info("best: trial %d, validation log-likelihood %.4f, %s", summary["best_trial"],
                 summary["value"] if summary["value"] is not None else -math.inf, summary["model"])
    return summary


def _objective(store, name: str, version: str, task: str, out: Path, base: TrainConfig,
               storage_options: dict | None, search: tuple[str, ...] | None = None):
    def objective(trial: Trial) -> float:
        params = suggest(trial, task, search)
        folder = out / f"trial-{trial.number}"
        retry_of = trial.user_attrs.get("retry_of")
        previous = out / f"trial-{retry_of}"
        if retry_of is not None and previous.exists() and not folder.exists():
            os.replace(previous, folder)  # the trainer resumes from its checkpoints
        start = time.perf_counter()
        result = train(store, name, version, task, folder, replace(base, **params), storage_options)
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        return -min(result["best_val_loss"])

    return objective


def _log_trial(n_trials: int):
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in trial.params.items())
        best = study.best_trial if done else None
        log.info("trial %d (%d/%d complete): %s -> %s, log-likelihood %s (%s s)%s", trial.number,
                 done, n_trials, params, trial.state.name,
                 "-" if trial.value is None else f"{trial.value:.4f}",
                 trial.user_attrs.get("seconds", "-"),
                 f"; best {best.value:.4f} (trial {best.number})" if best else "")

    return callback
