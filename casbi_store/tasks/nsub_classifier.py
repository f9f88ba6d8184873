"""``nsub_classifier``: step 1 as a classifier over N_sub in [n_min, n_max] whose softmax is the
discrete posterior p(N_sub | x); its posterior is ``NsubPosterior``, the members' softmax
averaged with the ensemble weights."""

from __future__ import annotations

import numpy as np
import torch

from ..estimators import NsubClassifier
from .base import Task, register, representation
from .common import NsubParameter


class NsubPosterior:
    """The classifier's discrete posterior p(N_sub | x), averaged over ensemble members."""

    def __init__(self, model):
        self.model = model
        self.values = model.members[0].values.numpy()

    @torch.no_grad()
    def probs(self, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """(N, n_values) probabilities for a batch of (N, 1, 64, 64) histograms."""
        out = []
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            p = sum(w * m.probs(xb) for w, m in zip(self.model.weights, self.model.members,
                                                    strict=True))
            out.append(p.numpy())
        return np.concatenate(out)

    def sample(self, n: int, x: torch.Tensor, seed: int = 0) -> np.ndarray:
        p = self.probs(x[None] if x.ndim == 3 else x)[0]
        return np.random.default_rng(seed).choice(self.values, size=n, p=p / p.sum())


@register
class NsubClassifierTask(NsubParameter, Task):
    name = "nsub_classifier"
    help = "softmax over N_sub"
    title = "N_sub, classifier"
    preference = 0
    infer_suffix = "classifier"
    tuned = ("learning_rate", "batch_size", "embedding_dim")  # no flow

    def build(self, stats, config, n_sub_range, seed):
        n_min, n_max = n_sub_range
        return NsubClassifier(stats["mean"], stats["std"], n_min, n_max,
                              channels=tuple(int(c) for c in config["conv_channels"]),
                              width=int(config["embedding_dim"]), seed=seed,
                              representation=representation(config))

    def posterior(self, model) -> NsubPosterior:
        return NsubPosterior(model)
