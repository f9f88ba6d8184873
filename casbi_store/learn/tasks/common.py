"""Helpers the tasks share: store theta -> block parameters, N_sub of a row, per-rank and joint
pairs, and the step-1 pair (N_sub of the histogram)."""

from __future__ import annotations

import numpy as np
import torch

from casbi_store.learn.estimators import N_PIXELS
from casbi_store.store import schema as S

BLOCK_PARAMETERS = ("log10_mstar", "log10_mdm", "tau")
UNITS = {"n_sub": "", "log10_mstar": "log10 Msol", "log10_mdm": "log10 Msol", "tau": "Gyr",
         "rank": ""}

__all__ = ["BLOCK_PARAMETERS", "N_PIXELS", "UNITS", "NsubParameter", "block_parameters",
           "count_blocks", "has_point_estimate", "input_options", "joint_pair", "rank_pair",
           "ranked_condition"]


def input_options(stats: dict, config: dict) -> dict:
    """The input representation and embedding of a model's config (the seed's, log1p + cnn, for
    folders written before these options existed) and the statistics of its extra features."""
    from casbi_store.learn.representations import DEFAULT_EMBEDDING, DEFAULT_REPRESENTATION

    extra = {k: stats[k] for k in ("extra_mean", "extra_std") if k in stats}
    return {"representation": config.get("representation") or DEFAULT_REPRESENTATION,
            "embedding": config.get("embedding") or DEFAULT_EMBEDDING, "extra_stats": extra}


def has_point_estimate(config: dict) -> bool:
    """Whether a model's config asks for a ``PointEstimate`` head (``point_estimate_weight`` > 0;
    folders written before the option: no)."""
    return float(config.get("point_estimate_weight") or 0) > 0


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


def rank_pair(x: torch.Tensor, target: torch.Tensor, counts: torch.Tensor, rank: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta of the block of ``rank`` (1-based, one per row), per-rank condition)."""
    theta = block_parameters(target[torch.arange(len(x)), rank.long() - 1])
    return theta, ranked_condition(x, counts, rank)


def joint_pair(x: torch.Tensor, target: torch.Tensor, n_sub: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(all 3 n_sub block parameters, histogram) of the rows with exactly ``n_sub`` blocks."""
    keep = count_blocks(target) == n_sub
    theta = block_parameters(target[keep, :n_sub]).reshape(int(keep.sum()), 3 * n_sub)
    return theta, x[keep]


class NsubParameter:
    """Mixin of the step-1 tasks: N_sub, read from the set's ``n_sub``, as one parameter of the
    histogram."""

    step = 1
    target = S.N_SUB.name

    def parameters(self, joint_n_sub: int | None = None) -> list[str]:
        return ["n_sub"]

    def to_training_pair(self, x, target, *, max_rank=3, joint_n_sub=None, generator=None):
        return target.reshape(len(target), 1), x

    def example_parameters(self, target, *, max_rank=3, joint_n_sub=None):
        t = np.asarray(target, dtype=np.float64)
        return t.reshape(len(t), 1)
