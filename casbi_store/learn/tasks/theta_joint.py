"""``theta_joint``: step 2 as the seed's joint mode for one fixed N_sub (``joint_n_sub``): theta of
dimension 3 N_sub, blocks ordered by M*, trained on the halos with exactly that N_sub (other
rows are dropped); sampled on its own, independent of step 1."""

from __future__ import annotations

import numpy as np
import torch

from casbi_store import InputError
from casbi_store.store import schema as S

from .base import FlowTask, register
from .common import BLOCK_PARAMETERS, joint_pair


@register
class ThetaJoint(FlowTask):
    name = "theta_joint"
    help = "all 3 N_sub parameters for one fixed --joint-n-sub"
    title = "theta, joint (fixed N_sub)"
    step = 2
    target = S.THETA.name
    preference = 1

    def parameters(self, joint_n_sub: int | None = None) -> list[str]:
        if not joint_n_sub:
            raise InputError("theta_joint needs a fixed n_sub (joint_n_sub, e.g. --joint-n-sub 5)")
        return [f"{p}_{k}" for k in range(1, joint_n_sub + 1) for p in BLOCK_PARAMETERS]

    def to_training_pair(self, x, target, *, max_rank=3, joint_n_sub=None, generator=None):
        return joint_pair(x, target, joint_n_sub)

    def example_parameters(self, target, *, max_rank=3, joint_n_sub=None):
        t = torch.as_tensor(np.asarray(target, dtype=np.float64))
        return joint_pair(t, t, joint_n_sub)[0].numpy()
