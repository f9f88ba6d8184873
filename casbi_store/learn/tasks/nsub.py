"""``nsub``: step 1 as the seed does it, N_sub as a continuous parameter of an NPE (rounded when
used; the prior box is widened by 0.5 so that every integer of the range rounds inside it)."""

from __future__ import annotations

import numpy as np

from .base import FlowTask, register
from .common import NsubParameter


@register
class Nsub(NsubParameter, FlowTask):
    name = "nsub"
    help = "NPE on N_sub (rounded)"
    title = "N_sub, NPE (rounded)"
    preference = 1
    infer_suffix = "npe"

    def box_bounds(self, theta_example):
        low, high = theta_example.min(axis=0) - 0.5, theta_example.max(axis=0) + 0.5
        return low.astype(np.float32), np.maximum(high, low + 1e-6).astype(np.float32)
