"""``theta``: step 2 per rank, the default: theta_i = (log10 M*, log10 M_dm, tau) of the block of
rank i (1 = most massive) given (x, N_sub, i); one estimator serves every N_sub. N_sub and the
rank enter after the CNN, appended to the flattened image as two extra condition values
(``estimators.RankedEmbedding``)."""

from __future__ import annotations

import numpy as np
import torch

from casbi_store.learn.estimators import RankedEmbedding
from casbi_store.store import schema as S

from .base import FlowTask, register
from .common import (
    BLOCK_PARAMETERS,
    N_PIXELS,
    block_parameters,
    count_blocks,
    rank_pair,
    ranked_condition,
)


@register
class Theta(FlowTask):
    name = "theta"
    help = "per-rank NPE of (log M*, log M_dm, tau) given N_sub and rank"
    title = "theta, per rank"
    step = 2
    target = S.THETA.name
    condition_shape = (N_PIXELS + 2,)
    preference = 0
    needs_nsub = True

    def parameters(self, joint_n_sub: int | None = None) -> list[str]:
        return list(BLOCK_PARAMETERS)

    def to_training_pair(self, x, target, *, max_rank=3, joint_n_sub=None, generator=None):
        """Every row contributes one block, of a rank drawn uniformly from 1..min(N_sub,
        max_rank) (``max_rank=0``: from all of its blocks), a new draw each visit."""
        counts = count_blocks(target)
        top = counts if max_rank <= 0 else counts.clamp(max=max_rank)
        u = torch.rand(len(x), generator=generator)
        rank = (u * top).floor().long().clamp(max=top - 1) + 1
        return rank_pair(x, target, counts, rank)

    def example_parameters(self, target, *, max_rank=3, joint_n_sub=None):
        """All ranks up to ``max_rank``."""
        t = torch.as_tensor(np.asarray(target, dtype=np.float64))
        blocks = t if max_rank <= 0 else t[:, :max_rank]
        values = block_parameters(blocks).reshape(-1, 3).numpy()
        return values[np.isfinite(values).all(axis=1)]

    def condition(self, x, n_sub, rank):
        return ranked_condition(x, n_sub, rank)

    def evaluation_pairs(self, x, target, *, ranks, joint_n_sub=None):
        """Each halo once per rank 1..min(N_sub, ranks), conditioned on its true N_sub."""
        counts = count_blocks(target)
        thetas, conds, rank_of = [], [], []
        for rank in range(1, ranks + 1):
            keep = counts >= rank
            theta, cond = rank_pair(x[keep], target[keep], counts[keep],
                                    torch.full((int(keep.sum()),), rank))
            thetas.append(theta)
            conds.append(cond)
            rank_of.append(np.full(int(keep.sum()), rank))
        return torch.cat(thetas), torch.cat(conds), np.concatenate(rank_of)

    def metric_columns(self, parameters, rank_of, ranks):
        return [(f"{p}_{r}", rank_of == r, k) for r in range(1, ranks + 1)
                for k, p in enumerate(BLOCK_PARAMETERS)]

    def wrap_embedding(self, embedding, estimate=None):
        return RankedEmbedding(embedding, estimate)
