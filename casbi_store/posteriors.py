"""Posterior objects of trained model folders, and sampling them.

Each task makes its own posterior (``casbi_store.tasks``): NPE models become sbi
``DirectPosterior``s with a ``BoxUniform`` prior over the range of their training parameters
(log masses); ensembles become sbi's ``EnsemblePosterior`` with the weights the trainer derived
from validation log-likelihood. The N_sub classifier becomes an ``NsubPosterior``: the members'
softmax averaged with the same weights.

``nsub_probabilities`` and ``sample_nsub`` give p(N_sub | x) and N_sub draws on the integers
for either kind of step-1 posterior (the NPE's continuous samples rounded), which evaluation
and inference share.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from .modelfolder import TrainedModel, as_model
from .tasks.nsub_classifier import NsubPosterior

__all__ = ["BatchedFlowSampler", "FlowSamples", "NsubPosterior", "OutsidePriorError", "box_bounds",
           "credible_set", "load_posterior", "nsub_probabilities", "outside_fraction", "quiet_sampling",
           "sample_in_prior", "sample_nsub"]


# what sbi, nflows and torch warn on every sampling call: the leakage outside the prior box is
# measured (``outside_fraction``) or rejected here, batch capping and nflows' use of a deprecated
# torch call are not the user's concern
SAMPLING_NOISE = (r".*reject_outside_prior=False lie outside", "Capping max_sampling_batch_size",
                  "torch.triangular_solve is deprecated", "To copy construct from a tensor")


@contextmanager
def quiet_sampling() -> Iterator[None]:
    """Silence ``SAMPLING_NOISE`` (only those warnings, only inside the block)."""
    with warnings.catch_warnings():
        for message in SAMPLING_NOISE:
            warnings.filterwarnings("ignore", message=message)
        yield


class OutsidePriorError(ValueError):
    """Almost no posterior samples fall inside the prior box: the observation is unlike the
    training halos (or the model is untrained)."""


def box_bounds(model: TrainedModel) -> tuple[np.ndarray, np.ndarray]:
    """Low and high corners of the prior box: the training parameters' range."""
    return model.task_spec.box_bounds(model.stats["theta_example"])


def sample_in_prior(posterior, model: TrainedModel, n: int, x: torch.Tensor,
                    min_acceptance: float = 0.005) -> np.ndarray:
    """``n`` samples of ``posterior`` at ``x`` inside the prior box, by rejection with a bound:
    if fewer than ``min_acceptance`` of the draws land inside, raise ``OutsidePriorError``
    (sbi's own rejection would loop for hours on such an observation)."""
    low, high = (torch.as_tensor(b) for b in box_bounds(model))
    kept, have, drawn = [], 0, 0
    while have < n:
        batch = max(2 * (n - have), 1000)
        with torch.no_grad(), quiet_sampling():
            s = posterior.sample((batch,), x=x, reject_outside_prior=False,
                                 show_progress_bars=False)
        inside = s[((s >= low) & (s <= high)).all(dim=-1)]
        kept.append(inside)
        have, drawn = have + len(inside), drawn + batch
        if have < n and drawn >= 20 * n + 20_000 and have / drawn < min_acceptance:
            raise OutsidePriorError(
                f"{model.path}: only {have / drawn:.2%} of {drawn} posterior samples fall inside "
                f"the prior box (the training range of {', '.join(model.parameters)}): the "
                "observation looks unlike the training halos (other binning? other survey "
                "selection?) or the model is untrained")
    return torch.cat(kept)[:n].detach().numpy()


class FlowSamples:
    """A posterior whose ``sample_batched`` returns the flow's own samples, without sbi's
    rejection outside the prior: for evaluation over many halos (sbi's diagnostics call
    ``sample_batched``), where one halo with little mass inside the box would otherwise stall
    the whole run. Samples outside the box are the flow's leakage; ``outside_fraction``
    measures it."""

    def __init__(self, posterior):
        self.posterior = posterior

    def sample_batched(self, sample_shape, x: torch.Tensor, **kwargs) -> torch.Tensor:
        kwargs.update(reject_outside_prior=False, show_progress_bars=False)
        with torch.no_grad(), quiet_sampling():  # the leakage is measured, not warned
            return self.posterior.sample_batched(sample_shape, x=x, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.posterior, name)


class BatchedFlowSampler:
    """Exactly as many samples as each row asks of an sbi NSF posterior (a ``DirectPosterior``
    or an ``EnsemblePosterior`` of them), for many conditions at once: the evaluation's sampler.

    sbi's ``sample_batched`` draws the same number of samples for every condition of a call, so a
    mixture over N_sub draws (a few samples for each of many (halo, N_sub, rank) conditions) paid
    for padding, and its embedding runs the CNN once per condition. Here each condition is
    embedded once (per-rank conditions: the image's CNN features once per image,
    ``RankedEmbedding.combine`` for each (N_sub, rank)), then one flow pass maps one normal draw
    per row through the flow's inverse with its condition's embedding. Ensembles draw the member
    of every row from the weights (sbi's ``sample_batched`` gives every condition the same member
    counts, in member order). Randomness comes from a ``torch.Generator`` only.
    """

    def __init__(self, posterior):
        from sbi.inference import EnsemblePosterior

        parts = posterior.posteriors if isinstance(posterior, EnsemblePosterior) else [posterior]
        self.flows = [p.posterior_estimator.net for p in parts]
        weights = (posterior.weights if isinstance(posterior, EnsemblePosterior)
                   else torch.ones(1))
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.dims = int(parts[0].posterior_estimator.input_shape[0])

    @property
    def ranked(self) -> bool:
        """Whether every member embeds per-rank conditions (``RankedEmbedding``)."""
        from .estimators import RankedEmbedding

        return all(isinstance(f._embedding_net, RankedEmbedding) for f in self.flows)

    @torch.no_grad()
    def contexts(self, condition: torch.Tensor) -> list[torch.Tensor]:
        """Each member's embedding of the ``condition`` rows."""
        return [flow._embedding_net(condition) for flow in self.flows]

    @torch.no_grad()
    def ranked_contexts(self, images: torch.Tensor, image_of: np.ndarray, n_sub: torch.Tensor,
                        rank: torch.Tensor) -> list[torch.Tensor]:
        """Each member's embedding of the per-rank conditions (``images[image_of]``, ``n_sub``,
        ``rank``), each image's CNN run once (members with ``RankedEmbedding`` only)."""
        rows = (len(image_of), 1)
        out = []
        for flow in self.flows:
            net = flow._embedding_net
            features = net.image_net(images.reshape(len(images), 1, *images.shape[-2:]))
            out.append(net.combine(features[torch.as_tensor(image_of)],
                                   n_sub.reshape(rows).float(), rank.reshape(rows).float()))
        return out

    @torch.no_grad()
    def sample(self, contexts: list[torch.Tensor], context_of: torch.Tensor,
               generator: torch.Generator) -> torch.Tensor:
        """One sample for each row, ``(rows, dims)``; row i conditioned on context
        ``context_of[i]``."""
        rows = len(context_of)
        member = (torch.multinomial(self.weights, rows, replacement=True, generator=generator)
                  if len(self.flows) > 1 else torch.zeros(rows, dtype=torch.long))
        noise = torch.randn(rows, self.dims, generator=generator)
        out = torch.empty(rows, self.dims)
        with quiet_sampling():  # nflows' LU inverse calls a deprecated torch solver
            for k, flow in enumerate(self.flows):
                sel = torch.nonzero(member == k)[:, 0]
                if len(sel):
                    out[sel] = flow._transform.inverse(noise[sel],
                                                       context=contexts[k][context_of[sel]])[0]
        return out

    def sample_in_box(self, contexts: list[torch.Tensor], context_of: torch.Tensor,
                      low: torch.Tensor, high: torch.Tensor, generator: torch.Generator,
                      rounds: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample per row inside the box [low, high], by redrawing the rows outside up to
        ``rounds`` times (a bounded rejection: a row still outside keeps its last draw, the
        flow's leakage); returns the samples and a mask of the rows outside."""
        out = self.sample(contexts, context_of, generator)
        outside = ~((out >= low) & (out <= high)).all(dim=-1)
        for _ in range(rounds):
            redo = torch.nonzero(outside)[:, 0]
            if not len(redo):
                break
            again = self.sample(contexts, context_of[redo], generator)
            out[redo] = again
            outside[redo] = ~((again >= low) & (again <= high)).all(dim=-1)
        return out, outside


def outside_fraction(model: TrainedModel, samples: torch.Tensor) -> float:
    """Fraction of samples outside the prior box."""
    low, high = (torch.as_tensor(b) for b in box_bounds(model))
    return float(1 - ((samples >= low) & (samples <= high)).all(dim=-1).float().mean())


def load_posterior(model: TrainedModel | str | os.PathLike):
    """The posterior its task makes of a model folder: sbi's (NPE tasks) or ``NsubPosterior``
    (classifier)."""
    model = as_model(model)
    return model.task_spec.posterior(model)


def sample_nsub(model: TrainedModel, posterior, n: int, x: torch.Tensor, seed: int = 0
                ) -> np.ndarray:
    """``n`` integer N_sub draws of a step-1 posterior at one (1, 1, 64, 64) histogram (the
    NPE's samples rounded and clipped into [n_min, n_max])."""
    if isinstance(posterior, NsubPosterior):
        return posterior.sample(n, x[0], seed=seed)
    n_min, n_max = model.meta["n_sub_range"]
    raw = sample_in_prior(posterior, model, n, x)[:, 0]
    return np.clip(np.rint(raw), n_min, n_max).astype(int)


def nsub_probabilities(model: TrainedModel, posterior, x: torch.Tensor, n_samples: int = 1000
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(values, probabilities (N, n_values)) of N_sub for a batch of histograms; the NPE's
    samples are rounded and clipped into [n_min, n_max]."""
    n_min, n_max = model.meta["n_sub_range"]
    values = np.arange(n_min, n_max + 1)
    if isinstance(posterior, NsubPosterior):
        return values, posterior.probs(x)
    samples = FlowSamples(posterior).sample_batched((n_samples,), x=x)
    idx = np.clip(np.rint(samples[..., 0].numpy()), n_min, n_max).astype(int) - n_min  # (S, N)
    probs = np.zeros((x.shape[0], len(values)))
    for j in range(x.shape[0]):
        probs[j] = np.bincount(idx[:, j], minlength=len(values)) / n_samples
    return values, probs


def credible_set(probs: np.ndarray, level: float) -> np.ndarray:
    """Highest-probability set of each row holding at least ``level`` of the mass (boolean mask)."""
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, axis=1)
    cum = np.cumsum(sorted_p, axis=1)
    inside_sorted = (cum - sorted_p) < level  # include the value that crosses the level
    mask = np.zeros_like(probs, dtype=bool)
    np.put_along_axis(mask, order, inside_sorted, axis=1)
    return mask
