"""``nsub``: step 1 as the seed does it, N_sub as a continuous parameter of an NPE (rounded when
used)."""

from __future__ import annotations

import numpy as np
import torch

from .. import schema as S
from .base import FlowTask, register


def nsub_pair(x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N_sub as an (N, 1) parameter, histogram): the step-1 pair."""
    return target.reshape(len(target), 1), x


def nsub_examples(target: np.ndarray) -> np.ndarray:
    t = np.asarray(target, dtype=np.float64)
    return t.reshape(len(t), 1)


@register
class Nsub(FlowTask):
    name = "nsub"
    help = "NPE on N_sub (rounded)"
    title = "N_sub, NPE (rounded)"
    step = 1
    target = S.N_SUB.name
    preference = 1
    infer_suffix = "npe"

    def parameters(self, joint_n_sub: int | None = None) -> list[str]:
        return ["n_sub"]

    def to_training_pair(self, x, target, *, max_rank=3, joint_n_sub=None, generator=None):
        return nsub_pair(x, target)

    def example_parameters(self, target, *, max_rank=3, joint_n_sub=None):
        return nsub_examples(target)

    def box_bounds(self, theta_example):
        low, high = theta_example.min(axis=0) - 0.5, theta_example.max(axis=0) + 0.5
        return low.astype(np.float32), np.maximum(high, low + 1e-6).astype(np.float32)
