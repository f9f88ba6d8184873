"""The model-folder format: the trainer writes it through here, everyone else reads it here.

A model folder holds::

    config.json        task, parameters, training set, TrainConfig, N_sub range, package versions
    transform.npz      input-transform statistics, example parameters (prior box), bin edges
    member-K/          model.pt (best validation loss), checkpoint.pt, history.json
    ensemble.json      each member's best validation loss and its weight

Weights are plain ``state_dict``s, loaded with ``torch.load(weights_only=True)``: no pickles.
A member's network is rebuilt from ``config.json`` and ``transform.npz`` by its task
(``casbi_store.tasks``). Folders written before ``TrainConfig.n_sub`` was renamed
``joint_n_sub`` still load (the old key is mapped when read).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .tasks import Task, get_task

CONFIG, TRANSFORM, ENSEMBLE = "config.json", "transform.npz", "ensemble.json"
MODEL, CHECKPOINT, HISTORY = "model.pt", "checkpoint.pt", "history.json"
RENAMED = {"n_sub": "joint_n_sub"}  # old TrainConfig keys of config.json -> their names now


def member_dir(out: Path, k: int) -> Path:
    return Path(out) / f"member-{k}"


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill leaves the old file or the new."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_meta(out: Path) -> dict:
    """``config.json``, with old TrainConfig keys renamed."""
    meta = json.loads((Path(out) / CONFIG).read_text())
    config = meta.get("config", {})
    for old, new in RENAMED.items():
        if old in config and new not in config:
            config[new] = config.pop(old)
    return meta


def write_meta(out: Path, meta: dict) -> None:
    (Path(out) / CONFIG).write_text(json.dumps(meta, indent=2))


def read_transform(out: Path) -> dict:
    return dict(np.load(Path(out) / TRANSFORM))


def write_transform(out: Path, stats: dict) -> None:
    np.savez(Path(out) / TRANSFORM, **stats)


def write_history(member: Path, history: list[dict]) -> None:
    (member / HISTORY).write_text(json.dumps(history, indent=2))


def write_ensemble(out: Path, ensemble: dict) -> None:
    (Path(out) / ENSEMBLE).write_text(json.dumps(ensemble, indent=2))


def build_member(meta: dict, stats: dict, seed: int) -> torch.nn.Module:
    """The untrained network of a model folder's ``config.json`` and ``transform.npz``."""
    return get_task(meta["task"]).build(stats, meta["config"], tuple(meta["n_sub_range"]), seed)


@dataclass
class TrainedModel:
    """A model folder loaded: its metadata, statistics, members and ensemble weights."""

    path: Path
    meta: dict
    stats: dict
    members: list[torch.nn.Module]
    weights: np.ndarray
    histories: list[list[dict]]

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def task_spec(self) -> Task:
        """The registered task (``casbi_store.tasks``) this model was trained for."""
        return get_task(self.meta["task"])

    @property
    def parameters(self) -> list[str]:
        return self.meta["parameters"]

    @property
    def joint_n_sub(self) -> int | None:
        return self.meta["config"].get("joint_n_sub")


def load_model(out: str | os.PathLike, device: str = "cpu") -> TrainedModel:
    """Every trained member of a model folder, rebuilt from its config (no pickles)."""
    out = Path(out)
    if not (out / CONFIG).exists():
        raise FileNotFoundError(f"{out}: not a model folder (no {CONFIG}); train one first")
    meta = read_meta(out)
    stats = read_transform(out)
    paths = sorted(out.glob(f"member-*/{MODEL}"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not paths:
        raise FileNotFoundError(f"{out}: no trained member (member-*/{MODEL})")
    seed = meta["config"]["seed"]
    members, histories = [], []
    for k, path in enumerate(paths):
        net = build_member(meta, stats, seed + k)
        net.load_state_dict(torch.load(path, weights_only=True, map_location=device))
        members.append(net.to(device).eval())
        histories.append(json.loads((path.parent / HISTORY).read_text())
                         if (path.parent / HISTORY).exists() else [])
    ensemble = out / ENSEMBLE
    weights = (np.asarray(json.loads(ensemble.read_text())["weights"])[:len(members)]
               if ensemble.exists() else np.ones(len(members)))
    return TrainedModel(out, meta, stats, members, weights / weights.sum(), histories)


def as_model(model: TrainedModel | str | os.PathLike) -> TrainedModel:
    """A loaded model as it is, a model folder loaded."""
    return model if isinstance(model, TrainedModel) else load_model(model)
