"""``nsub_classifier``: step 1 as a classifier over N_sub in [n_min, n_max] whose softmax is the
discrete posterior p(N_sub | x); its posterior is ``NsubPosterior``, the members' softmax at the
model's temperature averaged with the ensemble weights.

Temperature scaling: after training, one temperature T is fitted on the validation split (the
NLL of the ensemble's posterior softmax(logits / T), ``calibration.fit_temperature``) and stored
in the folder's ``calibration.json``; every use of the posterior (evaluate, infer) applies it.
Folders without it use T = 1."""

from __future__ import annotations

import numpy as np
import torch

from casbi_store.learn.calibration import fit_temperature
from casbi_store.learn.estimators import NsubClassifier

from .base import Task, register
from .common import NsubParameter, has_point_estimate, input_options


class NsubPosterior:
    """The classifier's discrete posterior p(N_sub | x), averaged over ensemble members."""

    def __init__(self, model):
        self.model = model
        self.values = model.members[0].values.numpy()
        self.temperature = float(model.calibration.get("temperature", 1.0))

    @torch.no_grad()
    def probs(self, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """(N, n_values) probabilities for a batch of (N, 1, 64, 64) histograms."""
        out = []
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            p = sum(w * torch.softmax(m.logits(xb) / self.temperature, dim=1)
                    for w, m in zip(self.model.weights, self.model.members, strict=True))
            out.append(p.numpy())
        return np.concatenate(out)

    def probabilities(self, x: torch.Tensor, seeds=None) -> np.ndarray:
        """(N, n_values) probabilities, each histogram's on its own (a halo's numbers do not
        depend on the others'): step 1 of ``casbi_store.apply.twostep`` (no randomness)."""
        return np.concatenate([self.probs(x[h:h + 1]) for h in range(len(x))])

    def draws(self, x: torch.Tensor, n: int, seeds, outside: str = "raise") -> np.ndarray:
        """(n, N) draws of N_sub, halo h's by inverse CDF from ``default_rng(seeds[h])``
        (``outside``: the NPE's concern, unused)."""
        if len(seeds) != len(x):
            raise ValueError(f"{len(seeds)} seeds for {len(x)} halos")
        out = np.empty((n, len(x)), dtype=self.values.dtype)
        for h, (p, seed) in enumerate(zip(self.probabilities(x), seeds, strict=True)):
            out[:, h] = np.random.default_rng(int(seed)).choice(self.values, size=n, p=p / p.sum())
        return out


@register
class NsubClassifierTask(NsubParameter, Task):
    name = "nsub_classifier"
    help = "softmax over N_sub"
    title = "N_sub, classifier"
    preference = 0
    infer_suffix = "classifier"
    tuned = ("learning_rate", "batch_size", "embedding_dim")  # no flow
    point_estimate = True

    def build(self, stats, config, n_sub_range, seed):
        n_min, n_max = n_sub_range
        options = input_options(stats, config)
        if options["embedding"] not in ("cnn", "mlp"):
            raise ValueError(f"the N_sub classifier has its own ResNet embedding (cnn), or reads "
                             f"the representation's extras alone (mlp); embedding "
                             f"{options['embedding']!r} applies to the flows only")
        return NsubClassifier(stats["mean"], stats["std"], n_min, n_max,
                              channels=tuple(int(c) for c in config["conv_channels"]),
                              width=int(config["embedding_dim"]), seed=seed,
                              representation=options["representation"],
                              extra_stats=options["extra_stats"],
                              estimate_example=(stats["theta_example"]
                                                if has_point_estimate(config) else None),
                              image=options["embedding"] == "cnn")

    def posterior(self, model) -> NsubPosterior:
        return NsubPosterior(model)

    @torch.no_grad()
    def calibrate(self, members, weights, pairs) -> dict:
        """Temperature scaling of the ensemble's softmax on the validation pairs."""
        logits, labels = [], []
        for theta, x in pairs:
            logits.append(torch.stack([m.logits(x) for m in members]).cpu().numpy())
            labels.append(members[0]._index(theta).cpu().numpy())
        if not logits:
            return {"temperature": 1.0, "rows": 0}
        return fit_temperature(np.concatenate(logits, axis=1), np.concatenate(labels), weights)
