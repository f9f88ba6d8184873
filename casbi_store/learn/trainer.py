"""A thin trainer: our loop around sbi's estimators, fed chunk by chunk from the store.

sbi builds the flows (``casbi_store.learn.estimators``); the loop is ours: Adam, gradient clipping,
early stopping on the validation loss, a checkpoint every epoch (written atomically) and resume
after a kill. ``ensemble=N`` trains N members independently (seeds seed .. seed+N-1); they are
combined with weights proportional to exp(mean validation log-likelihood), as ltu-ili does.

What differs between estimators (pairs, network, parameters) is the task's
(``casbi_store.learn.tasks``); the folder the loop writes is ``casbi_store.learn.modelfolder``'s format.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from casbi_store import InputError
from casbi_store.store import schema as S
from casbi_store.store.provenance import package_versions, utc_now

from . import modelfolder as F
from .augment import Augmentation, BlockAugmenter
from .bootstrap import simulation_bag, top_block_simulations
from .estimators import point_estimate_head
from .misspecification import calibrate_after_training
from .representations import (
    DEFAULT_EMBEDDING,
    DEFAULT_REPRESENTATION,
    N_OBS_REPRESENTATION,
    check_choice,
    chunk_statistics,
)
from .streaming import TrainingSetStream, x_chunks
from .tasks import Task, get_task

log = logging.getLogger(__name__)

# options that shape the network or its data: a resumed model folder must keep them
SHAPING = ("hidden_features", "num_transforms", "embedding_dim", "conv_channels", "max_rank",
           "joint_n_sub", "seed", "representation", "embedding", "point_estimate_weight")
EXAMPLE_ROWS = 4096  # training rows that set the prior box and the flow's theta standardisation
LR_SCHEDULES = ("constant", "cosine", "onecycle")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters (the seed's NSF: 10 transforms, 100 hidden features); ``joint_n_sub``
    is the fixed N_sub of the ``theta_joint`` task; ``representation`` and ``embedding`` choose
    what the network sees of the plane (``casbi_store.learn.representations``); ``lr_schedule``:
    ``constant`` (``learning_rate`` throughout), ``cosine`` (from ``learning_rate`` down to 0
    over ``epochs``) or ``onecycle`` (warm-up to ``learning_rate`` as peak over the first 30%
    of the steps, then down; see ``scheduled_lr``, figures in bench/README.md);
    ``shift_feh`` / ``shift_ofe`` (dex) and ``resample_stars`` augment the training halos: every
    epoch each is summed anew from its blocks, each block moved by its own Gaussian offset and
    its counts redrawn (``casbi_store.learn.augment``; the split is then held in memory);
    ``bootstrap_simulations``: each member trains on a bootstrap draw of the simulations that
    top the training halos (``casbi_store.learn.bootstrap``; the split is held in memory), so
    the ensemble carries the finite suite's uncertainty;
    ``point_estimate_weight`` > 0 gives the network a ``PointEstimate`` head (an MLP estimate of
    the standardised parameters, appended to a flow's condition or to the classifier's pooled
    features) trained by MSE with this weight beside the negative log-likelihood (0: none, the
    seed's network)."""

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
    joint_n_sub: int | None = None
    buffer_chunks: int = 4
    in_memory: bool = False
    seed: int = 0
    device: str = "cpu"
    representation: str = DEFAULT_REPRESENTATION
    embedding: str = DEFAULT_EMBEDDING
    lr_schedule: str = "constant"
    point_estimate_weight: float = 0.0
    shift_feh: float = 0.0
    shift_ofe: float = 0.0
    resample_stars: bool = False
    bootstrap_simulations: bool = False

    def __post_init__(self):
        object.__setattr__(self, "conv_channels", tuple(int(c) for c in self.conv_channels))
        _ = self.augmentation  # checks the shifts
        weight = self.point_estimate_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise InputError(f"point_estimate_weight must be a number >= 0, not {weight!r}")
        object.__setattr__(self, "point_estimate_weight", float(weight))
        check_choice(self.representation, self.embedding)
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                             f"not {self.lr_schedule!r}")
        if min(self.epochs, self.batch_size, self.ensemble, self.hidden_features,
               self.num_transforms, self.embedding_dim) < 1 or self.learning_rate <= 0:
            raise InputError("epochs, batch_size, ensemble, network sizes and learning_rate "
                             "must be positive")
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"device must be 'cpu' or 'cuda', not {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise InputError("device 'cuda' asked for, but torch sees no CUDA device")

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(self.shift_feh, self.shift_ofe, bool(self.resample_stars))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise InputError(f"unknown training option(s) {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**values)


class _InMemory:
    """A split loaded whole into memory (small sets, and the streaming benchmark's baseline)."""

    def __init__(self, stream: TrainingSetStream):
        group = stream._open()
        self.x = self._load_x(group)
        self.target = torch.from_numpy(np.asarray(group[stream.target][:], dtype=np.float32))
        self.shuffle, self.seed, self.epoch = stream.shuffle, stream.seed, 0
        self.rows: np.ndarray | None = None  # a member's bootstrap rows (learn.bootstrap)

    def _load_x(self, group) -> torch.Tensor | None:
        return torch.from_numpy(group[S.X.name][:].astype(np.float32))[:, None]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.target) if self.rows is None else len(self.rows)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if self.rows is not None:
            order = torch.from_numpy(self.rows)[order]
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            yield self.x[rows], self.target[rows]


class _Augmented(_InMemory):
    """The training split re-summed from its blocks every epoch (``casbi_store.learn.augment``)."""

    def __init__(self, stream: TrainingSetStream, augmentation: Augmentation,
                 storage_options: dict | None):
        super().__init__(stream)
        self.augmenter = BlockAugmenter(stream.store, stream.name, stream.version, stream.split,
                                        augmentation, stream.seed, storage_options)

    def _load_x(self, group) -> None:
        return None  # the composed halos are never used: each epoch's are summed in set_epoch

    def set_epoch(self, epoch: int) -> None:
        if self.x is None or epoch != self.epoch:  # members after the first repeat the epochs
            self.x = torch.from_numpy(self.augmenter.halos(epoch))[:, None]
        self.epoch = epoch


def _rows(source, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(source, _InMemory):
        yield from source.batches(batch_size)
    else:
        yield from torch.utils.data.DataLoader(source, batch_size=batch_size)


def _pairs(source, task: Task, cfg: TrainConfig, epoch: int, seed: int):
    """(theta, condition) batches on the training device."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    for x, target in _rows(source, cfg.batch_size):
        theta, condition = task.to_training_pair(x, target, max_rank=cfg.max_rank,
                                                 joint_n_sub=cfg.joint_n_sub, generator=gen)
        if len(theta):
            yield theta.to(cfg.device), condition.to(cfg.device)


def scheduled_lr(cfg: TrainConfig, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total`` under
    ``cfg.lr_schedule``: torch's ``CosineAnnealingLR`` (to 0) and ``OneCycleLR`` (defaults:
    30% warm-up from lr / 25, cosine down to lr / 2.5e5), as functions of the step, so that a
    resumed run continues the same curve."""
    lr = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0)))
    if cfg.lr_schedule == "onecycle":
        start, end, peak_step = lr / 25, lr / 25 / 1e4, 0.3 * total - 1
        if step <= peak_step:
            a, b, pct = start, lr, step / peak_step
        else:
            a, b, pct = lr, end, min((step - peak_step) / (total - 1 - peak_step), 1.0)
        return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)
    return lr


def _steps_per_epoch(source, batch_size: int) -> int:
    rows = len(source) if isinstance(source, _InMemory) else source._open()[S.X.name].shape[0]
    return math.ceil(rows / batch_size)


def _model_meta(store, name: str, version: str, task: str, cfg: TrainConfig,
                n_sub_range: tuple[int, int]) -> dict:
    return {"store": os.fspath(store), "set": name, "version": version, "task": task,
            "parameters": get_task(task).parameters(cfg.joint_n_sub), "config": asdict(cfg),
            "n_sub_range": list(n_sub_range), "created": utc_now(),
            "versions": package_versions(("casbi_store", "torch", "sbi", "numpy", "zarr"))}


def _prepare(store, name: str, version: str, task: str, out: Path, cfg: TrainConfig,
             streams: dict, storage_options: dict | None) -> tuple[dict, dict]:
    """config.json and transform.npz of a model folder: written once, checked on resume."""
    spec = get_task(task)
    if (out / F.CONFIG).exists():
        meta = F.read_meta(out)
        if (meta["set"], meta["version"], meta["task"]) != (name, version, task):
            raise InputError(f"{out} holds a {meta['task']} model of {meta['set']}:{meta['version']};"
                             f" choose another --out for {task} on {name}:{version}")
        saved = TrainConfig.from_dict(meta["config"])
        changed = [k for k in SHAPING if getattr(saved, k) != getattr(cfg, k)]
        if changed:
            raise InputError(f"{out} was trained with other {', '.join(changed)} "
                             f"({', '.join(f'{k}={getattr(saved, k)}' for k in changed)}); "
                             "resume with the same network or choose another --out")
        meta["config"] = asdict(cfg)  # e.g. more epochs or members on resume
        stats = F.read_transform(out)
    else:
        from casbi_store.store import trainingsets

        totals: list[np.ndarray] = []  # the training halos' star counts: their N_obs

        def counted(chunks):
            for block in chunks:
                totals.append(np.asarray(block).sum(axis=(1, 2)))
                yield block

        inputs = chunk_statistics(counted(x_chunks(streams["train"])), cfg.representation)
        group = streams["train"]._open()
        n_sub = np.asarray(group[S.N_SUB.name][:])
        target = group[spec.target]
        rows = np.unique(np.linspace(0, target.shape[0] - 1,
                                     min(EXAMPLE_ROWS, target.shape[0])).astype(int))
        values = target.get_orthogonal_selection((rows,) + (slice(None),) * (target.ndim - 1))
        theta = spec.example_parameters(values, max_rank=cfg.max_rank, joint_n_sub=cfg.joint_n_sub)
        if len(theta) < 2:
            raise InputError(f"{name}:{version} has fewer than two training halos for task {task}"
                             + (f" with joint_n_sub={cfg.joint_n_sub}" if cfg.joint_n_sub else ""))
        binning = trainingsets.binning(store, name, version, storage_options)  # the set's own
        stats = {**inputs, "theta_example": theta,
                 "feh_edges": binning.feh_edges, "ofe_edges": binning.ofe_edges}
        meta = _model_meta(store, name, version, task, cfg, (int(n_sub.min()), int(n_sub.max())))
        if cfg.representation == N_OBS_REPRESENTATION:  # N_obs is a condition: its range
            meta[F.N_OBS_RANGE] = _n_obs_range(np.concatenate(totals), store, name, version,
                                               storage_options)
        F.write_transform(out, stats)
    F.write_meta(out, meta)
    return meta, stats


def _n_obs_range(totals: np.ndarray, store, name: str, version: str,
                 storage_options: dict | None) -> list[float]:
    """The N_obs range a normalised model is trained for: its training halos' star counts,
    widened to the set's observation model (``n_obs_min``..``n_obs_max``) where it has one, so
    that a table inside the designed range is not called an extrapolation because no training
    halo happened to be drawn at its very end."""
    from casbi_store.store import trainingsets

    lo, hi = float(totals.min()), float(totals.max())
    try:
        observation = trainingsets.observation_model(store, name, version, storage_options)
    except Exception:  # a registry that cannot be read: the counts alone
        observation = None
    if observation:
        lo, hi = min(lo, float(observation["n_obs_min"])), max(hi, float(observation["n_obs_max"]))
    return [lo, hi]


def train(store: str | os.PathLike, name: str, version: str, task: str, out: str | os.PathLike,
          cfg: TrainConfig | None = None, storage_options: dict | None = None) -> dict:
    """Train (or resume) a model folder: ``cfg.ensemble`` members of one task.

    Returns ``{"members": [history, ...], "best_val_loss": [...], "weights": [...]}``.
    """
    cfg = cfg or TrainConfig()
    spec = get_task(task)
    spec.parameters(cfg.joint_n_sub)  # theta_joint without joint_n_sub fails here, before any work
    if cfg.point_estimate_weight and not spec.point_estimate:
        raise InputError(f"point_estimate_weight: task {task} has no point-estimate head")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    streams = {split: TrainingSetStream(store, name, version, split, target=spec.target,
                                        buffer_chunks=cfg.buffer_chunks, seed=cfg.seed,
                                        shuffle=split == "train", storage_options=storage_options)
               for split in ("train", "val")}
    meta, stats = _prepare(store, name, version, task, out, cfg, streams, storage_options)
    F.start_training(out)  # ensemble.json, written last, marks the folder complete
    sources = ({k: _InMemory(s) for k, s in streams.items()} if cfg.in_memory else streams)
    if cfg.augmentation.active:
        sources["train"] = _Augmented(streams["train"], cfg.augmentation, storage_options)
        log.info("%s: training halos re-summed every epoch (%s)", out, cfg.augmentation)
    top = None
    if cfg.bootstrap_simulations:
        if not isinstance(sources["train"], _InMemory):
            sources["train"] = _InMemory(streams["train"])
        top = top_block_simulations(store, name, version, "train", storage_options)
    histories, best = [], []
    for k in range(cfg.ensemble):
        if top is not None:
            bag = simulation_bag(top, cfg.seed + k)
            sources["train"].rows = bag.rows
            log.info("%s member %d: %d of %d simulations drawn, %.0f%% of the training halos "
                     "in its bag", out, k, len(bag.simulations), len(np.unique(top)),
                     100 * bag.in_bag_fraction)
        result = _train_member(meta, stats, sources, F.member_dir(out, k), cfg, cfg.seed + k)
        histories.append(result["history"])
        best.append(result["best"])
    log_lik = -np.asarray(best)
    weights = np.exp(log_lik - log_lik.max())
    weights /= weights.sum()
    calibration = spec.calibrate(
        [F.load_member(F.member_dir(out, k) / F.MODEL, meta, stats, cfg.seed + k, cfg.device)
         for k in range(cfg.ensemble)], weights, _pairs(sources["val"], spec, cfg, 0, cfg.seed))
    F.write_calibration(out, calibration)
    if calibration:
        log.info("%s: calibration %s", out, calibration)
    ensemble = {"best_val_loss": best, "weights": weights.tolist()}
    calibrate_after_training(out, storage_options)  # the misspecification score's threshold
    F.write_ensemble(out, ensemble)
    return {"members": histories, **ensemble}


def _train_member(meta: dict, stats: dict, sources: dict, out: Path, cfg: TrainConfig,
                  seed: int) -> dict:
    out.mkdir(exist_ok=True)
    task = get_task(meta["task"])
    estimator = F.build_member(meta, stats, seed).to(cfg.device)
    optimizer = torch.optim.Adam(estimator.parameters(), lr=cfg.learning_rate)
    state = {"epoch": 0, "best": float("inf"), "stale": 0, "history": []}
    per_epoch = _steps_per_epoch(sources["train"], cfg.batch_size)
    head = point_estimate_head(estimator) if cfg.point_estimate_weight else None
    checkpoint = out / F.CHECKPOINT
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
        losses, estimate_mse = [], []
        for i, (theta, condition) in enumerate(_pairs(sources["train"], task, cfg, epoch, seed)):
            if cfg.lr_schedule != "constant":
                for group in optimizer.param_groups:
                    group["lr"] = scheduled_lr(cfg, epoch * per_epoch + i, cfg.epochs * per_epoch)
            optimizer.zero_grad()
            loss = estimator.loss(theta, condition).mean()
            losses.append(loss.item())
            if head is not None:
                mse = head.loss(theta).mean()
                estimate_mse.append(mse.item())
                loss = loss + cfg.point_estimate_weight * mse
            loss.backward()
            torch.nn.utils.clip_grad_norm_(estimator.parameters(), cfg.clip_norm)
            optimizer.step()
        estimator.eval()
        with torch.no_grad():  # validation ranks drawn the same way every epoch
            val = [(estimator.loss(theta, condition).sum().item(), len(theta))
                   for theta, condition in _pairs(sources["val"], task, cfg, 0, seed)]
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                  "val_loss": sum(v for v, _ in val) / max(sum(n for _, n in val), 1),
                  "seconds": time.perf_counter() - start}
        if estimate_mse:  # the point estimate's MSE on the standardised theta
            record["train_estimate_mse"] = float(np.mean(estimate_mse))
        state["history"].append(record)
        if record["val_loss"] < state["best"]:
            state["best"], state["stale"] = record["val_loss"], 0
            F.save_atomic(estimator.state_dict(), out / F.MODEL)
        else:
            state["stale"] += 1
        state["epoch"] = epoch + 1
        F.save_atomic({"model": estimator.state_dict(), "optimizer": optimizer.state_dict(),
                      "state": json.dumps(state)}, checkpoint)
        log.info("%s epoch %d: train %.4f, val %.4f (%.1f s)", out.name, record["epoch"],
                 record["train_loss"], record["val_loss"], record["seconds"])
    F.write_history(out, state["history"])
    return state

