"""A thin trainer: sbi's neural spline flows with a CNN embedding, fed by the streaming dataset.

sbi builds the estimator (``posterior_nn``: NSF with a CNN embedding 64x64 -> 128, our
``Log1pStandardize`` in front, ``z_score_x="none"``); the loop is ours: Adam, gradient clipping,
early stopping on the validation loss, a checkpoint every epoch (written atomically) and resume
after a kill. Tasks: ``nsub`` (N_sub as a continuous parameter, the seed's step 1) and ``theta``
(log10 M*, log10 M_dm and tau of the three most massive blocks, step 2).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import schema as S
from .streaming import Log1pStandardize, TrainingSetStream, streamed_moments

log = logging.getLogger(__name__)

TASKS = ("nsub", "theta")
TOP_BLOCKS = 3  # theta task: the three most massive building blocks


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
    buffer_chunks: int = 4
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs, batch_size and learning_rate must be positive")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', not {self.device!r}")


def task_target(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    return S.N_SUB.name if task == "nsub" else S.THETA.name


def task_parameters(task: str) -> list[str]:
    if task == "nsub":
        return ["n_sub"]
    names = ("log10_mstar", "log10_mdm", "tau")
    return [f"{n}_{k}" for k in range(1, TOP_BLOCKS + 1) for n in names]


def to_theta(target: torch.Tensor, task: str) -> torch.Tensor:
    """The parameters the flow learns, from a batch of stream targets (rows may hold NaN)."""
    if task == "nsub":
        return target.reshape(len(target), 1)
    top = target[:, :TOP_BLOCKS, :]
    return torch.stack([torch.log10(top[..., 0]), torch.log10(top[..., 1]), top[..., 2]],
                       dim=-1).reshape(len(target), -1)


def build_estimator(task: str, mean: np.ndarray, std: np.ndarray, theta_example: np.ndarray,
                    cfg: TrainConfig):
    """The NSF density estimator with our transform and a CNN embedding in front;
    ``theta_example`` (training targets) sets the flow's standardisation of theta."""
    from sbi.neural_nets import posterior_nn
    from sbi.neural_nets.embedding_nets import CNNEmbedding

    torch.manual_seed(cfg.seed)
    embedding = torch.nn.Sequential(
        Log1pStandardize(mean, std),
        CNNEmbedding(input_shape=(S.N_BINS, S.N_BINS), in_channels=1,
                     out_channels_per_layer=list(cfg.conv_channels),
                     num_conv_layers=len(cfg.conv_channels), num_linear_layers=2,
                     num_linear_units=cfg.embedding_dim, output_dim=cfg.embedding_dim),
    )
    build = posterior_nn("nsf", z_score_x="none", z_score_theta="independent",
                         embedding_net=embedding, hidden_features=cfg.hidden_features,
                         num_transforms=cfg.num_transforms)
    theta = torch.as_tensor(theta_example, dtype=torch.float32)
    return build(theta, torch.zeros(len(theta), 1, S.N_BINS, S.N_BINS))


def training_targets(stream: TrainingSetStream, task: str, limit: int = 4096) -> np.ndarray:
    """Up to ``limit`` finite training targets, evenly spaced over the split (deterministic)."""
    group = stream._open()
    arr = group[task_target(task)]
    rows = np.unique(np.linspace(0, arr.shape[0] - 1, min(limit, arr.shape[0])).astype(int))
    values = arr.get_orthogonal_selection((rows,) + (slice(None),) * (arr.ndim - 1))
    theta = to_theta(torch.as_tensor(np.asarray(values, dtype=np.float64)), task).numpy()
    return theta[np.isfinite(theta).all(axis=1)]


def _batches(stream: TrainingSetStream, task: str, batch_size: int, device: str):
    loader = torch.utils.data.DataLoader(stream, batch_size=batch_size)
    for x, target in loader:
        theta = to_theta(target, task)
        keep = torch.isfinite(theta).all(dim=1)
        if keep.any():
            yield x[keep].to(device), theta[keep].to(device)


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(store: str | os.PathLike, name: str, version: str, task: str, out: str | os.PathLike,
          cfg: TrainConfig | None = None) -> dict:
    """Train (or resume training) one estimator; returns the history. Files in ``out``:
    ``checkpoint.pt`` (every epoch), ``model.pt`` (best validation loss), ``config.json``."""
    cfg = cfg or TrainConfig()
    target = task_target(task)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    streams = {split: TrainingSetStream(store, name, version, split, target=target,
                                        buffer_chunks=cfg.buffer_chunks, seed=cfg.seed,
                                        shuffle=split == "train")
               for split in ("train", "val")}
    mean, std = streamed_moments(streams["train"])
    theta_example = training_targets(streams["train"], task)
    estimator = build_estimator(task, mean, std, theta_example, cfg).to(cfg.device)
    optimizer = torch.optim.Adam(estimator.parameters(), lr=cfg.learning_rate)
    meta = {"store": os.fspath(store), "set": name, "version": version, "task": task,
            "parameters": task_parameters(task), "config": asdict(cfg)}
    (out / "config.json").write_text(json.dumps(meta, indent=2))
    np.savez(out / "transform.npz", mean=mean, std=std, theta_example=theta_example)
    state = {"epoch": 0, "best": float("inf"), "stale": 0, "history": []}
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        estimator.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        log.info("resuming %s at epoch %d", out, state["epoch"])
    while state["epoch"] < cfg.epochs and state["stale"] < cfg.patience:
        epoch = state["epoch"]
        start = time.perf_counter()
        streams["train"].set_epoch(epoch)
        estimator.train()
        losses = []
        for x, theta in _batches(streams["train"], task, cfg.batch_size, cfg.device):
            optimizer.zero_grad()
            loss = estimator.loss(theta, x).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(estimator.parameters(), cfg.clip_norm)
            optimizer.step()
            losses.append(loss.item())
        estimator.eval()
        with torch.no_grad():
            val = [estimator.loss(theta, x).mean().item()
                   for x, theta in _batches(streams["val"], task, cfg.batch_size, cfg.device)]
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                  "val_loss": float(np.mean(val)), "seconds": time.perf_counter() - start}
        state["history"].append(record)
        if record["val_loss"] < state["best"]:
            state["best"], state["stale"] = record["val_loss"], 0
            _save_atomic(estimator.state_dict(), out / "model.pt")
        else:
            state["stale"] += 1
        state["epoch"] = epoch + 1
        _save_atomic({"model": estimator.state_dict(), "optimizer": optimizer.state_dict(),
                      "state": state}, checkpoint)
        log.info("epoch %d: train %.4f, val %.4f (%.1f s)", record["epoch"], record["train_loss"],
                 record["val_loss"], record["seconds"])
    (out / "history.json").write_text(json.dumps(state["history"], indent=2))
    return {"history": state["history"], "best_val_loss": state["best"]}


def load_estimator(out: str | os.PathLike):
    """The best estimator saved by ``train`` (rebuilt from its config and transform)."""
    out = Path(out)
    meta = json.loads((out / "config.json").read_text())
    cfg = TrainConfig(**{**meta["config"], "conv_channels": tuple(meta["config"]["conv_channels"])})
    stats = np.load(out / "transform.npz")
    estimator = build_estimator(meta["task"], stats["mean"], stats["std"], stats["theta_example"],
                                cfg)
    estimator.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    return estimator.eval(), meta
