"""The model-folder format: the trainer writes it through here, everyone else reads it here.

A model folder holds::

    config.json        task, parameters, training set, TrainConfig (its ``representation``, e.g.
                       log1p counts, or normalised with log10 N_obs as a separate condition), N_sub range,
                       the training halos' N_obs range (``n_obs_range``, normalised models),
                       package versions
    transform.npz      input-transform statistics, example parameters (prior box), bin edges
    member-K/          model.pt (best validation loss), checkpoint.pt, history.json
    calibration.json   what the task fitted after training (the classifier's temperature), if any
    ensemble.json      the members, each one's best validation loss and its weight

``ensemble.json`` is written once every member is trained (the trainer removes it when it starts):
a folder without it is still being trained or was interrupted, and is refused. Last of all,
``manifest.json`` records the SHA-256 of every file a posterior depends on (config, transform,
calibration, ensemble, each listed member's ``model.pt``): ``load_model`` refuses a folder whose
files differ from it (an edited ``ensemble.json``, a dropped member) in one line. Folders written
before manifests load as before.
``load_model`` loads a folder whole or not at all: a missing member, an unreadable or edited
``config.json``/``ensemble.json``/``transform.npz``/``model.pt``, or weights of another network
shape than the config's raise ``ModelFolderError`` naming the file and the problem.

Weights are plain ``state_dict``s, loaded with ``torch.load(weights_only=True)``: no pickles.
A member's network is rebuilt from ``config.json`` and ``transform.npz`` by its task
(``casbi_store.learn.tasks``). Folders written before ``TrainConfig.n_sub`` was renamed
``joint_n_sub`` still load (the old key is mapped when read).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from casbi_store import CasbiError, MissingInput
from casbi_store.store.atomic import atomic_path, atomic_write_text
from casbi_store.store.provenance import sha256_file

from .representations import (
    DEFAULT_REPRESENTATION,
    N_OBS_REPRESENTATION,
    REPRESENTATIONS,
)
from .tasks import Task, get_task

CONFIG, TRANSFORM, ENSEMBLE = "config.json", "transform.npz", "ensemble.json"
CALIBRATION = "calibration.json"
MANIFEST = "manifest.json"
MODEL, CHECKPOINT, HISTORY = "model.pt", "checkpoint.pt", "history.json"
N_OBS_RANGE = "n_obs_range"  # config.json: [min, max] N_obs of the training halos and set
RENAMED = {"n_sub": "joint_n_sub"}  # old TrainConfig keys of config.json -> their names now
META_KEYS = ("task", "parameters", "config", "n_sub_range")
STATS_KEYS = ("mean", "std", "theta_example", "feh_edges", "ofe_edges")
NETWORK_OPTIONS = ("hidden_features", "num_transforms", "embedding_dim", "conv_channels")
STILL_TRAINING = "still training or interrupted: re-run train to finish"


class ModelFolderError(CasbiError, ValueError):
    """A model folder that cannot be used as it is; the message names the file and the problem."""


def member_dir(out: Path, k: int) -> Path:
    return Path(out) / f"member-{k}"


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` atomically (``store.atomic``): a kill leaves the old file or the new."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_json_atomic(path: Path, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2))


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path}: not readable as JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ModelFolderError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def read_meta(out: Path) -> dict:
    """``config.json``, with old TrainConfig keys renamed; refused if unreadable or edited into
    something that is not a model's config (missing keys, unknown task, bad network options)."""
    path = Path(out) / CONFIG
    meta = _read_json(path)
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ModelFolderError(f"{path}: missing key(s) {missing}; not a config.json written by "
                               "train (re-train the model)")
    config = meta["config"]
    if not isinstance(config, dict):
        raise ModelFolderError(f"{path}: 'config' is not an object of training options")
    for old, new in RENAMED.items():
        if old in config and new not in config:
            config[new] = config.pop(old)
    try:
        task = get_task(meta["task"])
    except ValueError as exc:
        raise ModelFolderError(f"{path}: {exc}") from None
    for key in ("seed", *NETWORK_OPTIONS):
        value = config.get(key)
        values = value if key == "conv_channels" and isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and
                                 (v >= 1 or key == "seed") for v in values):
            raise ModelFolderError(f"{path}: config option {key}={value!r} is not "
                                   + ("a list of positive integers" if key == "conv_channels"
                                      else "an integer" if key == "seed" else "a positive integer"))
    if config.get("representation", DEFAULT_REPRESENTATION) not in REPRESENTATIONS:
        raise ModelFolderError(f"{path}: config option representation="
                               f"{config['representation']!r} is not one of "
                               f"{sorted(REPRESENTATIONS)}")
    n_range = meta["n_sub_range"]
    if not (isinstance(n_range, list) and len(n_range) == 2
            and all(isinstance(n, int) for n in n_range) and 1 <= n_range[0] <= n_range[1]):
        raise ModelFolderError(f"{path}: n_sub_range {n_range!r} is not [n_min, n_max]")
    try:
        parameters = task.parameters(config.get("joint_n_sub"))
    except ValueError as exc:
        raise ModelFolderError(f"{path}: {exc}") from None
    if meta["parameters"] != parameters:
        raise ModelFolderError(f"{path}: parameters {meta['parameters']} are not those of task "
                               f"{meta['task']} ({parameters})")
    return meta


def write_meta(out: Path, meta: dict) -> None:
    _write_json_atomic(Path(out) / CONFIG, meta)


def read_transform(out: Path) -> dict:
    """``transform.npz``; refused if unreadable or without the statistics a model needs."""
    path = Path(out) / TRANSFORM
    try:
        with np.load(path, allow_pickle=False) as f:
            stats = dict(f)
    except FileNotFoundError:
        raise ModelFolderError(f"{path}: missing; {STILL_TRAINING}") from None
    except Exception as exc:  # zipfile, pickle and value errors of a damaged file
        raise ModelFolderError(f"{path}: not readable ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in STATS_KEYS if k not in stats]
    if missing:
        raise ModelFolderError(f"{path}: missing array(s) {missing}")
    return stats


def write_transform(out: Path, stats: dict) -> None:
    np.savez(Path(out) / TRANSFORM, **stats)


def write_history(member: Path, history: list[dict]) -> None:
    (member / HISTORY).write_text(json.dumps(history, indent=2))


def write_calibration(out: Path, calibration: dict | None) -> None:
    """``calibration.json`` (removed when the task fits none)."""
    path = Path(out) / CALIBRATION
    if calibration is None:
        path.unlink(missing_ok=True)
    else:
        _write_json_atomic(path, calibration)


def read_calibration(out: Path) -> dict:
    """``calibration.json``, ``{}`` if absent (T = 1); refused if its temperature is not a
    positive finite number."""
    path = Path(out) / CALIBRATION
    if not path.exists():
        return {}
    calibration = _read_json(path)
    t = calibration.get("temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < t < float("inf")):
        raise ModelFolderError(f"{path}: temperature {t!r} is not a positive number")
    return calibration


def start_training(out: Path) -> None:
    """Mark a folder as being trained: ``ensemble.json`` (and the manifest) go until every
    member is done."""
    (Path(out) / MANIFEST).unlink(missing_ok=True)
    (Path(out) / ENSEMBLE).unlink(missing_ok=True)


def write_ensemble(out: Path, ensemble: dict) -> None:
    """``ensemble.json``, atomically, with the member folders' names, then the manifest of
    file digests: the folder's last writes."""
    n = len(ensemble["weights"])
    members = [member_dir(out, k).name for k in range(n)]
    _write_json_atomic(Path(out) / ENSEMBLE, {"members": members, **ensemble})
    files = [CONFIG, TRANSFORM, ENSEMBLE, *(f"{m}/{MODEL}" for m in members)]
    if (Path(out) / CALIBRATION).exists():
        files.append(CALIBRATION)
    _write_json_atomic(Path(out) / MANIFEST,
                       {"sha256": {f: sha256_file(Path(out) / f) for f in sorted(files)}})


def check_manifest(out: Path) -> bool:
    """Refuse a folder whose files differ from its manifest (``ModelFolderError``, one line);
    False for folders written before manifests (nothing to check)."""
    path = Path(out) / MANIFEST
    if not path.exists():
        return False
    recorded = _read_json(path).get("sha256")
    if not isinstance(recorded, dict) or not recorded:
        raise ModelFolderError(f"{path}: no file digests")
    if (Path(out) / CALIBRATION).exists() and CALIBRATION not in recorded:
        raise ModelFolderError(f"{Path(out) / CALIBRATION}: added after training (not in "
                               f"{MANIFEST}); a model folder is not edited: retrain")
    for name, digest in recorded.items():
        file = Path(out) / name
        if not file.exists():
            raise ModelFolderError(f"{file}: missing (listed in {MANIFEST}); restore it or retrain")
        if sha256_file(file) != digest:
            raise ModelFolderError(f"{file}: changed after training (its SHA-256 differs from "
                                   f"{MANIFEST}); a model folder is not edited: retrain")
    return True


def read_ensemble(out: Path) -> tuple[list[str], np.ndarray]:
    """The member folders and weights of ``ensemble.json`` (refused if absent or inconsistent).
    Folders written before it listed the members are member-0 .. member-(N-1)."""
    path = Path(out) / ENSEMBLE
    if not path.exists():
        raise ModelFolderError(f"{out}: no {ENSEMBLE}: {STILL_TRAINING}")
    ensemble = _read_json(path)
    if "weights" not in ensemble:
        raise ModelFolderError(f"{path}: no 'weights'")
    try:
        weights = np.asarray(ensemble["weights"], dtype=float)
    except (TypeError, ValueError):
        raise ModelFolderError(f"{path}: weights {ensemble['weights']!r} are not numbers") from None
    members = ensemble.get("members", [member_dir(out, k).name for k in range(weights.size)])
    if (weights.ndim != 1 or weights.size == 0 or not isinstance(members, list)
            or len(members) != weights.size):
        raise ModelFolderError(f"{path}: {weights.size} weight(s) for "
                               f"{len(members) if isinstance(members, list) else '?'} member(s)")
    if not (np.isfinite(weights).all() and (weights >= 0).all()
            and abs(weights.sum() - 1) < 1e-6):
        raise ModelFolderError(f"{path}: weights {weights.tolist()} are not non-negative numbers "
                               "summing to 1")
    for name in members:
        if not (isinstance(name, str) and re.fullmatch(r"member-\d+", name)):
            raise ModelFolderError(f"{path}: {name!r} is not a member folder name (member-K)")
    return members, weights


def build_member(meta: dict, stats: dict, seed: int) -> torch.nn.Module:
    """The untrained network of a model folder's ``config.json`` and ``transform.npz``. The
    builders seed torch (weights initialised from ``seed``); the caller's global random state
    is restored after, so loading a model in a user's session moves none of their draws."""
    with torch.random.fork_rng(devices=[]):
        return get_task(meta["task"]).build(stats, meta["config"], tuple(meta["n_sub_range"]),
                                            seed)


def _shape_mismatch(path: Path, meta: dict, net: torch.nn.Module, saved: dict) -> str:
    """Why the weights in ``path`` do not fit the network ``config.json`` describes."""
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in saved.items() if hasattr(v, "shape")}
    missing, extra = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    other = sorted(k for k in set(own) & set(theirs) if own[k] != theirs[k])
    config = meta["config"]
    # the options whose value shapes the tensors that differ (counts: missing or extra tensors)
    suspects = [o for o in ("hidden_features", "embedding_dim")
                if any(config[o] in own[k] and config[o] not in theirs[k] for k in other)]
    if missing or extra:
        suspects += ["num_transforms", "conv_channels"]
    if other and not suspects:
        suspects = [o for o in NETWORK_OPTIONS]
    parts = [f"{len(other)} tensor(s) of other shapes (e.g. {other[0]}: {theirs[other[0]]} in "
             f"the file, {own[other[0]]} from {CONFIG})"] if other else []
    parts += [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
    parts += [f"{len(extra)} unexpected (e.g. {extra[0]})"] if extra else []
    options = ", ".join(f"{o}={config[o]}" for o in suspects)
    return (f"{path}: weights of another network shape than {CONFIG} describes: "
            f"{'; '.join(parts)}. Check {options} in {Path(path).parents[1] / CONFIG} "
            "(edited after training?) or re-train")


def load_member(path: Path, meta: dict, stats: dict, seed: int, device: str = "cpu"
                ) -> torch.nn.Module:
    """One member's ``model.pt`` into the network its config describes (refused if absent,
    unreadable or of another shape)."""
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing although {ENSEMBLE} lists the member; "
                               "the folder is incomplete (re-run train to finish it)")
    try:
        saved = torch.load(path, weights_only=True, map_location=device)
    except Exception as exc:  # truncated zip, not a torch file, pickles refused
        raise ModelFolderError(f"{path}: not readable as torch weights "
                               f"({type(exc).__name__}: {str(exc).split('. ')[0]})") from exc
    if not isinstance(saved, dict):
        raise ModelFolderError(f"{path}: holds a {type(saved).__name__}, not a state_dict")
    net = build_member(meta, stats, seed)
    try:
        net.load_state_dict(saved)
    except RuntimeError as exc:
        raise ModelFolderError(_shape_mismatch(path, meta, net, saved)) from exc
    return net.to(device).eval()


@dataclass
class TrainedModel:
    """A model folder loaded: its metadata, statistics, members and ensemble weights."""

    path: Path
    meta: dict
    stats: dict
    members: list[torch.nn.Module]
    weights: np.ndarray
    histories: list[list[dict]]
    calibration: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def task_spec(self) -> Task:
        """The registered task (``casbi_store.learn.tasks``) this model was trained for."""
        return get_task(self.meta["task"])

    @property
    def parameters(self) -> list[str]:
        return self.meta["parameters"]

    @property
    def joint_n_sub(self) -> int | None:
        return self.meta["config"].get("joint_n_sub")

    @property
    def representation(self) -> str:
        """What the network sees of a histogram (``casbi_store.learn.representations``): e.g. ``log1p``
        counts, or the ``normalised`` plane with log10 N_obs as a separate condition."""
        return self.meta["config"].get("representation", DEFAULT_REPRESENTATION)


def n_obs_range(meta: dict) -> tuple[float, float, str] | None:
    """The N_obs range a model of the ``normalised`` representation was trained on, and where it
    comes from: recorded at training (config.json ``n_obs_range``: the training halos' star
    counts, widened to the set's observation model), else, for folders from before, the
    observation model of its training set in the store's registry (``n_obs_min``..
    ``n_obs_max``); None for other representations (their total count is no separate condition)
    or when neither can be read."""
    if meta["config"].get("representation", DEFAULT_REPRESENTATION) != N_OBS_REPRESENTATION:
        return None
    if N_OBS_RANGE in meta:
        lo, hi = meta[N_OBS_RANGE]
        origin = f"the training halos and observation model of {meta['set']}:{meta['version']}"
        return float(lo), float(hi), origin
    try:
        from casbi_store.store.trainingsets import observation_model

        spec = observation_model(meta["store"], meta["set"], meta["version"], consolidated=False)
        lo, hi = float(spec["n_obs_min"]), float(spec["n_obs_max"])
    except Exception:  # a moved or remote store, a set without observation model: unknown
        return None
    return lo, hi, f"the observation model of {meta['set']}:{meta['version']}"


def load_model(out: str | os.PathLike, device: str = "cpu") -> TrainedModel:
    """Every member ``ensemble.json`` lists, rebuilt from the folder's config (no pickles);
    ``ModelFolderError`` naming the file for a folder that is incomplete or damaged."""
    out = Path(out)
    if not (out / CONFIG).exists():
        raise MissingInput(f"{out}: not a model folder (no {CONFIG}); train one first")
    meta = read_meta(out)
    names, weights = read_ensemble(out)
    stats = read_transform(out)
    seed = meta["config"]["seed"]
    members, histories = [], []
    for name in names:
        k = int(name.split("-")[1])
        members.append(load_member(out / name / MODEL, meta, stats, seed + k, device))
        history = out / name / HISTORY
        histories.append(_read_json_list(history) if history.exists() else [])
    calibration = read_calibration(out)
    check_manifest(out)  # last: a damaged file gets its own message first
    return TrainedModel(out, meta, stats, members, weights / weights.sum(), histories, calibration)


def _read_json_list(path: Path) -> list:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path}: not readable as JSON ({exc})") from exc


def as_model(model: TrainedModel | str | os.PathLike) -> TrainedModel:
    """A loaded model as it is, a model folder loaded."""
    return model if isinstance(model, TrainedModel) else load_model(model)
