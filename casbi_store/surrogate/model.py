"""The surrogate simulator: a conditional normalizing flow over single stars,
p([Fe/H], [O/Fe] | θ), trained on the store's stars, and the building blocks drawn from it.

Training streams the ``stars`` group: every epoch draws ``stars_per_galaxy`` stars of each
training galaxy (with replacement, seeded by (seed, epoch)), so every galaxy weighs the same
whatever its star count and memory stays bounded. The flow is zuko's neural spline flow
(autoregressive rational-quadratic splines) on standardised abundances, conditioned on
standardised θ. A block's histogram is ``N`` stars drawn from the flow, with ``N`` from the
star-count relation fitted on the store, binned with the store's binning (``histogram_stack``).

A model folder holds::

    config.json      options, store, binning (version, edges), holdout and training simulations,
                     standardisations, the star-count relation, package versions
    prior.json       the KDE prior over θ (casbi_store.surrogate.prior)
    checkpoint.pt    flow + optimizer state_dicts and the loop's state, written atomically per epoch
    model.pt         the flow's state_dict once training is complete
    history.json     per epoch: train loss, held-out loss (stars of held-out simulations), seconds

Re-running ``train`` on the folder resumes from the checkpoint; the result equals an
uninterrupted run with the same seed. Weights load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import zuko

from casbi_store import InputError, MissingInput
from casbi_store.store.atomic import atomic_path, atomic_write_text
from casbi_store.store.binning import Binning, histogram_stack
from casbi_store.store.provenance import package_versions, utc_now

from .data import (
    THETA_NAMES,
    THETA_UNITS,
    GalaxyTable,
    holdout_simulations,
    read_galaxies,
    read_star_rows,
    sample_rows,
    store_binning,
)
from .prior import ThetaPrior
from .starcount import StarCountRelation

log = logging.getLogger(__name__)

# options that shape the network or the data it learns from: a resumed folder must keep them
SHAPING = ("stars_per_galaxy", "batch_size", "learning_rate", "clip_norm", "transforms",
           "hidden_features", "hidden_layers", "bins", "theta_noise", "holdout_fraction",
           "holdout_simulations", "seed")
HELDOUT_STARS_PER_GALAXY = 256  # fixed sample of held-out stars for the per-epoch held-out loss
SAMPLE_BATCH = 1 << 18  # stars drawn from the flow per forward pass
SAMPLE_THREADS = 1


@dataclass(frozen=True)
class SurrogateConfig:
    """Training options; validated here, once."""

    epochs: int = 30
    stars_per_galaxy: int = 512
    batch_size: int = 1024
    learning_rate: float = 1e-3
    clip_norm: float = 5.0
    transforms: int = 4
    hidden_features: int = 64
    hidden_layers: int = 2
    bins: int = 8
    theta_noise: float = 0.2  # std of Gaussian jitter on standardised theta while training
    holdout_fraction: float = 0.2
    holdout_simulations: tuple[str, ...] = ()
    seed: int = 0
    threads: int = 1  # torch intra-op threads while training: more only slow such small networks

    def __post_init__(self):
        object.__setattr__(self, "holdout_simulations", tuple(self.holdout_simulations))
        ints = ("epochs", "threads", "stars_per_galaxy", "batch_size", "transforms", "hidden_features",
                "hidden_layers", "bins")
        bad = [k for k in ints if int(getattr(self, k)) < 1]
        if bad or self.learning_rate <= 0 or self.clip_norm <= 0:
            raise InputError("surrogate options must be positive: "
                             f"{', '.join(bad) or 'learning_rate, clip_norm'}")
        if self.theta_noise < 0:
            raise InputError(f"theta_noise must be >= 0, not {self.theta_noise}")
        if not 0 <= self.holdout_fraction < 1:
            raise InputError(f"holdout_fraction must be in [0, 1), not {self.holdout_fraction}")

    @classmethod
    def from_dict(cls, values: dict) -> SurrogateConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise InputError(f"unknown surrogate option(s) {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**values)


class StarFlow(torch.nn.Module):
    """zuko NSF over standardised ([Fe/H], [O/Fe]) given standardised θ; the standardisations are
    buffers, so the state_dict is the whole model."""

    def __init__(self, cfg: SurrogateConfig, theta_loc, theta_scale, x_loc, x_scale):
        super().__init__()
        self.flow = zuko.flows.NSF(features=2, context=3, bins=cfg.bins, transforms=cfg.transforms,
                                   hidden_features=[cfg.hidden_features] * cfg.hidden_layers)
        for name, value in (("theta_loc", theta_loc), ("theta_scale", theta_scale),
                            ("x_loc", x_loc), ("x_scale", x_scale)):
            self.register_buffer(name, torch.as_tensor(np.asarray(value), dtype=torch.float32))

    def _context(self, theta: torch.Tensor) -> torch.Tensor:
        return (theta - self.theta_loc) / self.theta_scale

    def log_prob(self, x: torch.Tensor, theta: torch.Tensor,
                 context_noise: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | θ) in the units of x (dex), per row; ``context_noise`` is added to the
        standardised θ (training-time jitter)."""
        z = (x - self.x_loc) / self.x_scale
        context = self._context(theta)
        if context_noise is not None:
            context = context + context_noise
        return self.flow(context).log_prob(z) - torch.log(self.x_scale).sum()

    def sample(self, theta: torch.Tensor) -> torch.Tensor:
        """One star per row of θ: (n, 2) [Fe/H], [O/Fe]."""
        return self.flow(self._context(theta)).sample() * self.x_scale + self.x_loc


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with ``n`` torch intra-op threads, then restore. The flow's matrices are small (a
    batch × 64): a second thread buys nothing, and on a busy machine spinning threads made one
    step 20× slower (2.9 s instead of 0.14 s, measured on the project's 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_json_atomic(obj, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


def _build(meta: dict) -> StarFlow:
    cfg = SurrogateConfig.from_dict(meta["options"])
    std = meta["standardisation"]
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, the caller's RNG untouched
        torch.manual_seed(cfg.seed)
        return StarFlow(cfg, std["theta_loc"], std["theta_scale"], std["x_loc"], std["x_scale"])


def _prepare(store: str, out: Path, cfg: SurrogateConfig) -> tuple[dict, GalaxyTable]:
    """config.json and prior.json: fitted once on the training galaxies, checked on resume."""
    galaxies = read_galaxies(store)
    config_path = out / "config.json"
    if config_path.exists():
        meta = json.loads(config_path.read_text())
        saved = SurrogateConfig.from_dict(meta["options"])
        changed = [k for k in SHAPING if getattr(saved, k) != getattr(cfg, k)]
        if changed:
            raise InputError(f"{out} was trained with other {', '.join(changed)} "
                             f"({', '.join(f'{k}={getattr(saved, k)}' for k in changed)}); "
                             "resume with the same options or choose another --out")
        if os.path.abspath(meta["store"]) != os.path.abspath(store):
            raise InputError(f"{out} was trained on {meta['store']}, not {store}; choose another --out")
        meta["options"] = asdict(cfg)  # e.g. more epochs
        _write_json_atomic(meta, config_path)
        return meta, galaxies
    binning, version = store_binning(store)
    held = holdout_simulations(galaxies.simulation, cfg.holdout_fraction, cfg.seed,
                               cfg.holdout_simulations)
    train_rows = np.flatnonzero(~np.isin(galaxies.simulation.astype(str), held))
    theta = galaxies.theta[train_rows]
    theta_scale = theta.std(0)
    theta_scale[theta_scale == 0] = 1.0
    lo, hi = np.array([binning.feh_range, binning.ofe_range]).T
    relation = StarCountRelation.fit(theta[:, 0], galaxies.n_star[train_rows])
    meta = {
        "kind": "surrogate", "model": "zuko NSF over single stars p([Fe/H], [O/Fe] | theta)",
        "store": os.path.abspath(store), "options": asdict(cfg),
        "parameters": list(THETA_NAMES), "units": list(THETA_UNITS),
        "binning": {**binning.to_dict(), "version": version,
                    "feh_edges": binning.feh_edges.tolist(), "ofe_edges": binning.ofe_edges.tolist()},
        "holdout_simulations": held,
        "train_simulations": sorted(set(galaxies.simulation[train_rows].astype(str))),
        "n_train_galaxies": len(train_rows),
        "standardisation": {"theta_loc": theta.mean(0).tolist(), "theta_scale": theta_scale.tolist(),
                            "x_loc": ((lo + hi) / 2).tolist(), "x_scale": ((hi - lo) / 4).tolist()},
        "star_count": relation.to_dict(),
        "prior": "prior.json",
        "created": utc_now(),
        "versions": package_versions(("casbi_store", "torch", "zuko", "numpy", "scipy", "zarr")),
    }
    ThetaPrior.fit(theta, seed=cfg.seed).save(out / "prior.json")
    _write_json_atomic(meta, config_path)
    return meta, galaxies


def split_rows(meta: dict, galaxies: GalaxyTable) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the training and held-out simulations recorded in the model's config (galaxies
    added to the store later, of other simulations, are in neither)."""
    sims = galaxies.simulation.astype(str)
    return (np.flatnonzero(np.isin(sims, meta["train_simulations"])),
            np.flatnonzero(np.isin(sims, meta["holdout_simulations"])))


def _epoch_data(store: str, galaxies: GalaxyTable, rows: np.ndarray, per_galaxy: int,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    star_rows = sample_rows(galaxies.n_star[rows], galaxies.star_offset[rows], per_galaxy, rng)
    x = read_star_rows(store, star_rows)
    theta = np.repeat(galaxies.theta[rows], per_galaxy, axis=0)
    return torch.from_numpy(x), torch.from_numpy(theta.astype(np.float32))


def train_surrogate(store: str | os.PathLike, out: str | os.PathLike,
                    cfg: SurrogateConfig | None = None, progress: bool = True) -> dict:
    """Train (or resume) a surrogate model folder; returns ``{"history": [...], "out": path}``."""
    cfg = cfg or SurrogateConfig()
    with torch_threads(cfg.threads):
        return _train(os.fspath(store), Path(out), cfg, progress)


def _train(store: str, out: Path, cfg: SurrogateConfig, progress: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    meta, galaxies = _prepare(store, out, cfg)
    train_rows, held_rows = split_rows(meta, galaxies)
    flow = _build(meta)
    optimizer = torch.optim.Adam(flow.parameters(), lr=cfg.learning_rate)
    state = {"epoch": 0, "history": []}
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True)
        flow.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = json.loads(saved["state"])
        if state["epoch"] < cfg.epochs:
            log.info("resuming %s at epoch %d of %d", out, state["epoch"], cfg.epochs)
    if state["epoch"] >= cfg.epochs and (out / "model.pt").exists():  # finished: nothing to redo
        return {"history": state["history"], "out": str(out)}
    held = (_epoch_data(store, galaxies, held_rows, HELDOUT_STARS_PER_GALAXY,
                        np.random.default_rng([cfg.seed, 1_000_003])) if len(held_rows) else None)
    log.info("surrogate: %d training galaxies (%d simulations), %d held out (%d simulations); "
             "%d stars per galaxy per epoch", len(train_rows), len(meta["train_simulations"]),
             len(held_rows), len(meta["holdout_simulations"]), cfg.stars_per_galaxy)
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        start = time.perf_counter()
        x, theta = _epoch_data(store, galaxies, train_rows, cfg.stars_per_galaxy,
                               np.random.default_rng([cfg.seed, epoch]))
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        order = torch.randperm(len(x), generator=gen)
        flow.train()
        losses = []
        for b in range(0, len(x), cfg.batch_size):
            rows = order[b:b + cfg.batch_size]
            optimizer.zero_grad()
            noise = (torch.randn(len(rows), 3, generator=gen) * cfg.theta_noise
                     if cfg.theta_noise else None)
            loss = -flow.log_prob(x[rows], theta[rows], noise).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), cfg.clip_norm)
            optimizer.step()
            losses.append(loss.item())
        flow.eval()
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        if held is not None:
            with torch.no_grad():
                record["heldout_loss"] = float(-flow.log_prob(*held).mean())
        record["seconds"] = time.perf_counter() - start
        state["history"].append(record)
        state["epoch"] = epoch + 1
        _save_atomic({"model": flow.state_dict(), "optimizer": optimizer.state_dict(),
                      "state": json.dumps(state)}, checkpoint)
        if progress:
            log.info("surrogate epoch %d/%d: train %.4f, held-out %s (%.1f s)", epoch + 1, cfg.epochs,
                     record["train_loss"], f"{record['heldout_loss']:.4f}" if held is not None else "-",
                     record["seconds"])
    _save_atomic(flow.state_dict(), out / "model.pt")
    _write_json_atomic(state["history"], out / "history.json")
    return {"history": state["history"], "out": str(out)}


class Surrogate:
    """A trained surrogate: building blocks' stars and 64×64 histograms for any θ."""

    def __init__(self, path: Path, meta: dict, flow: StarFlow, prior: ThetaPrior,
                 star_count: StarCountRelation, binning: Binning):
        self.path, self.meta, self.flow = path, meta, flow
        self.prior, self.star_count, self.binning = prior, star_count, binning

    @property
    def binning_version(self) -> int:
        return int(self.meta["binning"]["version"])

    def n_stars(self, theta: np.ndarray) -> np.ndarray:
        """Stars of a block of each θ, from the star-count relation of log10 M*."""
        return self.star_count.n_stars(np.atleast_2d(theta)[:, 0])

    def sample_stars(self, theta: np.ndarray, n_stars: np.ndarray | int,
                     rng: np.random.Generator | int | None = None) -> np.ndarray:
        """``n_stars[k]`` stars of each θ_k, concatenated in θ order: (sum n, 2) [Fe/H], [O/Fe]."""
        theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        counts = np.broadcast_to(np.asarray(n_stars, dtype=np.int64), (len(theta),))
        context = np.repeat(theta.astype(np.float32), counts, axis=0)
        seed = int(np.random.default_rng(rng).integers(2**62))
        out = np.empty((len(context), 2), dtype=np.float32)
        with torch.random.fork_rng(devices=[]), torch.no_grad(), torch_threads(SAMPLE_THREADS):
            torch.manual_seed(seed)
            for b in range(0, len(context), SAMPLE_BATCH):
                out[b:b + SAMPLE_BATCH] = self.flow.sample(
                    torch.from_numpy(context[b:b + SAMPLE_BATCH])).numpy()
        return out

    def sample_histograms(self, theta: np.ndarray, rng: np.random.Generator | int | None = None, *,
                          binning: Binning | None = None, n_stars: np.ndarray | int | None = None
                          ) -> np.ndarray:
        """One block per row of ``theta`` (n, 3): (n, n_bins, n_bins) int32 counts.

        Each block has ``n_stars`` stars (default: the star-count relation of its M*), binned with
        ``binning`` (default: the store's binning the model was trained with) by the store's own
        ``histogram_stack``, so stars outside the ranges are not counted. Deterministic given rng.
        """
        theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        if theta.shape[1] != 3:
            raise InputError(f"theta must have 3 columns ({', '.join(THETA_NAMES)}), got {theta.shape}")
        counts = self.n_stars(theta) if n_stars is None else np.broadcast_to(
            np.asarray(n_stars, dtype=np.int64), (len(theta),))
        stars = self.sample_stars(theta, counts, rng)
        hist, _ = histogram_stack(stars[:, 0], stars[:, 1], np.ones(len(stars), np.float32), counts,
                                  binning or self.binning)
        return hist


REQUIRED = ("config.json", "prior.json", "model.pt")


def load_surrogate(path: str | os.PathLike) -> Surrogate:
    """A trained surrogate model folder (weights via ``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_dir():
        raise MissingInput(f"{path}: no such surrogate model folder")
    missing = [name for name in REQUIRED if not (path / name).exists()]
    if missing:
        hint = ""
        if (path / "checkpoint.pt").exists() and "model.pt" in missing:
            state = json.loads(torch.load(path / "checkpoint.pt", weights_only=True)["state"])
            hint = (f"; training stopped after epoch {state['epoch']}: re-run "
                    "`casbi-store surrogate train` with the same --out to finish it")
        raise MissingInput(f"{path}: incomplete surrogate model folder, missing "
                                f"{', '.join(missing)}{hint}")
    meta = json.loads((path / "config.json").read_text())
    if meta.get("kind") != "surrogate":
        raise InputError(f"{path}/config.json is not a surrogate model's config")
    flow = _build(meta)
    flow.load_state_dict(torch.load(path / "model.pt", weights_only=True))
    flow.eval()
    binning = Binning.from_dict(meta["binning"])
    return Surrogate(path, meta, flow, ThetaPrior.load(path / "prior.json"),
                     StarCountRelation.from_dict(meta["star_count"]), binning)
