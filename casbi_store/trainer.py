"""A thin trainer: our loop around sbi's estimators, fed chunk by chunk from the store.

sbi builds the flows (``casbi_store.estimators``); the loop is ours: Adam, gradient clipping,
early stopping on the validation loss, a checkpoint every epoch (written atomically) and resume
after a kill. ``ensemble=N`` trains N members independently (seeds seed .. seed+N-1); they are
combined with weights proportional to exp(mean validation log-likelihood), as ltu-ili does.

A model folder holds::

    config.json        task, parameters, training set, TrainConfig, N_sub range, package versions
    transform.npz      input-transform statistics, example parameters (prior box), bin edges
    member-K/          model.pt (best validation loss), checkpoint.pt, history.json
    ensemble.json      each member's best validation loss and its weight

Weights are plain ``state_dict``s, loaded with ``torch.load(weights_only=True)``: no pickles.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from . import schema as S
from . import tasks as T
from .estimators import NsubClassifier, build_npe
from .provenance import package_versions, utc_now
from .streaming import TrainingSetStream, streamed_moments

log = logging.getLogger(__name__)

# options that shape the network or its data: a resumed model folder must keep them
SHAPING = ("hidden_features", "num_transforms", "embedding_dim", "conv_channels", "max_rank",
           "n_sub", "seed")
EXAMPLE_ROWS = 4096  # training rows that set the prior box and the flow's theta standardisation


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters (the seed's NSF: 10 transforms, 100 hidden features)."""

    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 5e-4
    clip_norm: float = 5.0
    patience: int = 5
    hidden_features: int = 100
    num_transforms: int = 10
    embedding_dim: int = 128
    conv_channels: tuple[int, ...] = (8, 16, 32)
    ensemble: int = 1
    max_rank: int = 3
    n_sub: int | None = None
    buffer_chunks: int = 4
    in_memory: bool = False
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        object.__setattr__(self, "conv_channels", tuple(int(c) for c in self.conv_channels))
        if min(self.epochs, self.batch_size, self.ensemble, self.hidden_features,
               self.num_transforms, self.embedding_dim) < 1 or self.learning_rate <= 0:
            raise ValueError("epochs, batch_size, ensemble, network sizes and learning_rate "
                             "must be positive")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', not {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training option(s) {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**values)


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def make_estimator(meta: dict, stats: dict, seed: int) -> torch.nn.Module:
    """The untrained network of a model folder's ``config.json`` and ``transform.npz``."""
    cfg = TrainConfig.from_dict(meta["config"])
    if meta["task"] == "nsub_classifier":
        n_min, n_max = meta["n_sub_range"]
        return NsubClassifier(stats["mean"], stats["std"], n_min, n_max,
                              channels=cfg.conv_channels, width=cfg.embedding_dim, seed=seed)
    return build_npe(meta["task"], stats["mean"], stats["std"], stats["theta_example"],
                     hidden_features=cfg.hidden_features, num_transforms=cfg.num_transforms,
                     embedding_dim=cfg.embedding_dim, conv_channels=cfg.conv_channels, seed=seed)


class _InMemory:
    """A split loaded whole into memory (small sets, and the streaming benchmark's baseline)."""

    def __init__(self, stream: TrainingSetStream):
        group = stream._open()
        self.x = torch.from_numpy(group[S.X.name][:].astype(np.float32))[:, None]
        self.target = torch.from_numpy(np.asarray(group[stream.target][:], dtype=np.float32))
        self.shuffle, self.seed, self.epoch = stream.shuffle, stream.seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            yield self.x[rows], self.target[rows]


def _rows(source, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(source, _InMemory):
        yield from source.batches(batch_size)
    else:
        yield from torch.utils.data.DataLoader(source, batch_size=batch_size)


def _pairs(source, task: str, cfg: TrainConfig, epoch: int, seed: int):
    """(theta, condition) batches on the training device."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    for x, target in _rows(source, cfg.batch_size):
        theta, condition = T.to_training_pair(x, target, task, max_rank=cfg.max_rank,
                                              n_sub=cfg.n_sub, generator=gen)
        if len(theta):
            yield theta.to(cfg.device), condition.to(cfg.device)


def _model_meta(store, name: str, version: str, task: str, cfg: TrainConfig,
                n_sub_range: tuple[int, int]) -> dict:
    return {"store": os.fspath(store), "set": name, "version": version, "task": task,
            "parameters": T.parameters(task, cfg.n_sub), "config": asdict(cfg),
            "n_sub_range": list(n_sub_range), "created": utc_now(),
            "versions": package_versions(("casbi_store", "torch", "sbi", "numpy", "zarr"))}


def _prepare(store, name: str, version: str, task: str, out: Path, cfg: TrainConfig,
             streams: dict, storage_options: dict | None) -> tuple[dict, dict]:
    """config.json and transform.npz of a model folder: written once, checked on resume."""
    config_path = out / "config.json"
    if config_path.exists():
        meta = json.loads(config_path.read_text())
        if (meta["set"], meta["version"], meta["task"]) != (name, version, task):
            raise ValueError(f"{out} holds a {meta['task']} model of {meta['set']}:{meta['version']};"
                             f" choose another --out for {task} on {name}:{version}")
        saved = TrainConfig.from_dict(meta["config"])
        changed = [k for k in SHAPING if getattr(saved, k) != getattr(cfg, k)]
        if changed:
            raise ValueError(f"{out} was trained with other {', '.join(changed)} "
                             f"({', '.join(f'{k}={getattr(saved, k)}' for k in changed)}); "
                             "resume with the same network or choose another --out")
        meta["config"] = asdict(cfg)  # e.g. more epochs or members on resume
        stats = dict(np.load(out / "transform.npz"))
    else:
        from . import trainingsets

        mean, std = streamed_moments(streams["train"])
        group = streams["train"]._open()
        n_sub = np.asarray(group[S.N_SUB.name][:])
        target = group[T.stream_target(task)]
        rows = np.unique(np.linspace(0, target.shape[0] - 1,
                                     min(EXAMPLE_ROWS, target.shape[0])).astype(int))
        values = target.get_orthogonal_selection((rows,) + (slice(None),) * (target.ndim - 1))
        theta = T.example_parameters(values, task, max_rank=cfg.max_rank, n_sub=cfg.n_sub)
        if len(theta) < 2:
            raise ValueError(f"{name}:{version} has fewer than two training halos for task {task}"
                             + (f" with n_sub={cfg.n_sub}" if cfg.n_sub else ""))
        binning = trainingsets.binning(store, name, version, storage_options)  # the set's own
        stats = {"mean": mean, "std": std, "theta_example": theta,
                 "feh_edges": binning.feh_edges, "ofe_edges": binning.ofe_edges}
        meta = _model_meta(store, name, version, task, cfg, (int(n_sub.min()), int(n_sub.max())))
        np.savez(out / "transform.npz", **stats)
    config_path.write_text(json.dumps(meta, indent=2))
    return meta, stats


def train(store: str | os.PathLike, name: str, version: str, task: str, out: str | os.PathLike,
          cfg: TrainConfig | None = None, storage_options: dict | None = None) -> dict:
    """Train (or resume) a model folder: ``cfg.ensemble`` members of one task.

    Returns ``{"members": [history, ...], "best_val_loss": [...], "weights": [...]}``.
    """
    cfg = cfg or TrainConfig()
    T.check_task(task)
    T.parameters(task, cfg.n_sub)  # theta_joint without n_sub fails here, before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    streams = {split: TrainingSetStream(store, name, version, split, target=T.stream_target(task),
                                        buffer_chunks=cfg.buffer_chunks, seed=cfg.seed,
                                        shuffle=split == "train", storage_options=storage_options)
               for split in ("train", "val")}
    meta, stats = _prepare(store, name, version, task, out, cfg, streams, storage_options)
    sources = ({k: _InMemory(s) for k, s in streams.items()} if cfg.in_memory else streams)
    histories, best = [], []
    for k in range(cfg.ensemble):
        result = _train_member(meta, stats, sources, out / f"member-{k}", cfg, cfg.seed + k)
        histories.append(result["history"])
        best.append(result["best"])
    log_lik = -np.asarray(best)
    weights = np.exp(log_lik - log_lik.max())
    weights /= weights.sum()
    ensemble = {"best_val_loss": best, "weights": weights.tolist()}
    (out / "ensemble.json").write_text(json.dumps(ensemble, indent=2))
    return {"members": histories, **ensemble}


def _train_member(meta: dict, stats: dict, sources: dict, out: Path, cfg: TrainConfig,
                  seed: int) -> dict:
    out.mkdir(exist_ok=True)
    task = meta["task"]
    estimator = make_estimator(meta, stats, seed).to(cfg.device)
    optimizer = torch.optim.Adam(estimator.parameters(), lr=cfg.learning_rate)
    state = {"epoch": 0, "best": float("inf"), "stale": 0, "history": []}
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True, map_location=cfg.device)
        estimator.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = json.loads(saved["state"])
        log.info("resuming %s at epoch %d", out, state["epoch"])
    torch.manual_seed(seed * 7919 + state["epoch"])
    while state["epoch"] < cfg.epochs and state["stale"] < cfg.patience:
        epoch = state["epoch"]
        start = time.perf_counter()
        sources["train"].set_epoch(epoch)
        estimator.train()
        losses = []
        for theta, condition in _pairs(sources["train"], task, cfg, epoch, seed):
            optimizer.zero_grad()
            loss = estimator.loss(theta, condition).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(estimator.parameters(), cfg.clip_norm)
            optimizer.step()
            losses.append(loss.item())
        estimator.eval()
        with torch.no_grad():  # validation ranks drawn the same way every epoch
            val = [(estimator.loss(theta, condition).sum().item(), len(theta))
                   for theta, condition in _pairs(sources["val"], task, cfg, 0, seed)]
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                  "val_loss": sum(v for v, _ in val) / max(sum(n for _, n in val), 1),
                  "seconds": time.perf_counter() - start}
        state["history"].append(record)
        if record["val_loss"] < state["best"]:
            state["best"], state["stale"] = record["val_loss"], 0
            _save_atomic(estimator.state_dict(), out / "model.pt")
        else:
            state["stale"] += 1
        state["epoch"] = epoch + 1
        _save_atomic({"model": estimator.state_dict(), "optimizer": optimizer.state_dict(),
                      "state": json.dumps(state)}, checkpoint)
        log.info("%s epoch %d: train %.4f, val %.4f (%.1f s)", out.name, record["epoch"],
                 record["train_loss"], record["val_loss"], record["seconds"])
    (out / "history.json").write_text(json.dumps(state["history"], indent=2))
    return state


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
    def parameters(self) -> list[str]:
        return self.meta["parameters"]


def load_model(out: str | os.PathLike, device: str = "cpu") -> TrainedModel:
    """Every trained member of a model folder, rebuilt from its config (no pickles)."""
    out = Path(out)
    if not (out / "config.json").exists():
        raise FileNotFoundError(f"{out}: not a model folder (no config.json); train one first")
    meta = json.loads((out / "config.json").read_text())
    stats = dict(np.load(out / "transform.npz"))
    paths = sorted(out.glob("member-*/model.pt"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not paths:
        raise FileNotFoundError(f"{out}: no trained member (member-*/model.pt)")
    seed = meta["config"]["seed"]
    members, histories = [], []
    for k, path in enumerate(paths):
        net = make_estimator(meta, stats, seed + k)
        net.load_state_dict(torch.load(path, weights_only=True, map_location=device))
        members.append(net.to(device).eval())
        histories.append(json.loads((path.parent / "history.json").read_text())
                         if (path.parent / "history.json").exists() else [])
    ensemble = out / "ensemble.json"
    weights = (np.asarray(json.loads(ensemble.read_text())["weights"])[:len(members)]
               if ensemble.exists() else np.ones(len(members)))
    return TrainedModel(out, meta, stats, members, weights / weights.sum(), histories)
