"""What each estimator learns: the parameters and the condition it sees, from training-set rows.

The two-step inference of the seed (section 3.1):

- ``nsub``: step 1 as the seed does it, N_sub as a continuous parameter of an NPE (rounded when
  used);
- ``nsub_classifier``: step 1 as a classifier over N_sub in [n_min, n_max] whose softmax is the
  discrete posterior p(N_sub | x);
- ``theta``: step 2 per rank, the default: theta_i = (log10 M*, log10 M_dm, tau) of the block of
  rank i (1 = most massive) given (x, N_sub, i); one estimator serves every N_sub. N_sub and the
  rank enter after the CNN, appended to the flattened image as two extra condition values;
- ``theta_joint``: step 2 as the seed's joint mode for one fixed N_sub: theta of dimension
  3 N_sub, blocks ordered by M*, trained on the halos with exactly that N_sub.

A task turns a batch of stream rows (x, target) into (theta, condition) for the estimator's
``loss``; rows the task cannot use (another N_sub in joint mode) are dropped.
"""

from __future__ import annotations

import numpy as np
import torch

from . import schema as S

NPE_TASKS = ("nsub", "theta", "theta_joint")
TASKS = ("nsub", "nsub_classifier", "theta", "theta_joint")
BLOCK_PARAMETERS = ("log10_mstar", "log10_mdm", "tau")
UNITS = {"n_sub": "", "log10_mstar": "log10 Msol", "log10_mdm": "log10 Msol", "tau": "Gyr",
         "rank": ""}
N_PIXELS = S.N_BINS * S.N_BINS


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    return task


def stream_target(task: str) -> str:
    """The training-set variable a task reads (``theta`` tasks count N_sub from its rows)."""
    return S.N_SUB.name if check_task(task).startswith("nsub") else S.THETA.name


def parameters(task: str, n_sub: int | None = None) -> list[str]:
    """Names of the parameters the estimator infers, in order."""
    check_task(task)
    if task.startswith("nsub"):
        return ["n_sub"]
    if task == "theta":
        return list(BLOCK_PARAMETERS)
    if not n_sub:
        raise ValueError("theta_joint needs a fixed n_sub (e.g. --n-sub 5)")
    return [f"{p}_{k}" for k in range(1, n_sub + 1) for p in BLOCK_PARAMETERS]


def block_parameters(theta: torch.Tensor) -> torch.Tensor:
    """(..., 3) store theta (M*, M_dm, tau) -> (log10 M*, log10 M_dm, tau)."""
    return torch.stack([torch.log10(theta[..., 0]), torch.log10(theta[..., 1]), theta[..., 2]],
                       dim=-1)


def count_blocks(theta: torch.Tensor) -> torch.Tensor:
    """N_sub of each row of a (rows, block, 3) theta batch (NaN pads the unused blocks)."""
    return torch.isfinite(theta[..., 0]).sum(dim=1)


def ranked_condition(x: torch.Tensor, n_sub: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """The per-rank condition: the flattened histogram followed by N_sub and the rank."""
    return torch.cat([x.reshape(len(x), -1), n_sub.reshape(-1, 1).to(x.dtype),
                      rank.reshape(-1, 1).to(x.dtype)], dim=1)


def condition_shape(task: str) -> tuple[int, ...]:
    return (N_PIXELS + 2,) if task == "theta" else (1, S.N_BINS, S.N_BINS)


def to_training_pair(x: torch.Tensor, target: torch.Tensor, task: str, *, max_rank: int = 3,
                     n_sub: int | None = None, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta, condition) for one batch of stream rows; unusable rows are dropped.

    In per-rank mode every row contributes one block, of a rank drawn uniformly from
    1..min(N_sub, max_rank) (``max_rank=0``: from all of its blocks), a new draw each visit.
    """
    if task.startswith("nsub"):
        return target.reshape(len(target), 1), x
    counts = count_blocks(target)
    if task == "theta_joint":
        keep = counts == n_sub
        theta = block_parameters(target[keep, :n_sub]).reshape(int(keep.sum()), 3 * n_sub)
        return theta, x[keep]
    top = counts if max_rank <= 0 else counts.clamp(max=max_rank)
    u = torch.rand(len(x), generator=generator)
    rank = (u * top).floor().long().clamp(max=top - 1) + 1
    theta = block_parameters(target[torch.arange(len(x)), rank - 1])
    return theta, ranked_condition(x, counts, rank)


def example_parameters(target: np.ndarray, task: str, *, max_rank: int = 3,
                       n_sub: int | None = None) -> np.ndarray:
    """Every parameter vector a task would learn from these rows (sets the prior box and the
    flow's standardisation): all ranks up to ``max_rank`` in per-rank mode."""
    t = torch.as_tensor(np.asarray(target, dtype=np.float64))
    if task.startswith("nsub"):
        return t.reshape(len(t), 1).numpy()
    if task == "theta_joint":
        keep = count_blocks(t) == n_sub
        return block_parameters(t[keep, :n_sub]).reshape(int(keep.sum()), 3 * n_sub).numpy()
    blocks = t if max_rank <= 0 else t[:, :max_rank]
    values = block_parameters(blocks).reshape(-1, 3).numpy()
    return values[np.isfinite(values).all(axis=1)]
