"""The two-step posterior, one way for one halo (``infer``) and for many (``evaluate``).

Step 1 is any ``NsubStep``: probabilities and integer draws of N_sub for a batch of histograms.
The classifier's ``NsubPosterior`` provides it (its softmax, sampled by inverse CDF), and so does
``RoundedNsub``, an N_sub NPE whose samples are rounded and clipped into the training range;
``nsub_step`` gives a model folder's. Step 2, ``mixture_samples``: theta of ranks 1..R of every
N_sub draw (NaN above it), each sample conditioned on its draw's (N_sub, rank).

Every halo is sampled on its own, with its own seed (``halo_seed`` for the halos of an
evaluation), in the shapes ``infer`` uses for one histogram: a halo's numbers do not depend on
the other halos of a call (a batched matrix product rounds otherwise), so ``evaluate``'s
samples of a halo are exactly ``infer``'s at the halo's seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

from casbi_store.learn.modelfolder import TrainedModel, as_model

from .posteriors import (
    BatchedFlowSampler,
    load_posterior,
    sample_in_prior,
    sample_rows_in_prior,
    seeded_generator,
)

OUTSIDE = ("raise", "keep")
NSUB_PROBABILITY_SAMPLES = 1000  # flow samples behind an NPE's p(N_sub | x)


@runtime_checkable
class NsubStep(Protocol):
    """Step 1 of the two-step posterior: p(N_sub | x) and N_sub draws, halo by halo."""

    values: np.ndarray  # the N_sub values [n_min..n_max]

    def probabilities(self, x: torch.Tensor, seeds: Sequence[int]) -> np.ndarray:
        """(halos, values) p(N_sub | x) of the (halos, 1, 64, 64) histograms."""

    def draws(self, x: torch.Tensor, n: int, seeds: Sequence[int], outside: str = "raise"
              ) -> np.ndarray:
        """(n, halos) integer N_sub draws, halo h's from ``seeds[h]``; ``outside``: what a halo
        whose flow samples fall outside the prior box gets (``sample_rows_in_prior``)."""


class RoundedNsub:
    """An N_sub NPE as a step 1: its samples rounded and clipped into [n_min, n_max]."""

    def __init__(self, model: TrainedModel, posterior=None):
        self.model = model
        self.posterior = posterior if posterior is not None else load_posterior(model)
        self.n_min, self.n_max = model.meta["n_sub_range"]
        self.values = np.arange(self.n_min, self.n_max + 1)

    def _rounded(self, raw: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(raw), self.n_min, self.n_max).astype(int)

    def probabilities(self, x: torch.Tensor, seeds: Sequence[int],
                      n_samples: int = NSUB_PROBABILITY_SAMPLES) -> np.ndarray:
        """The histogram of ``n_samples`` flow samples per halo (outside the prior box too; a
        draw the flow could not invert, NaN, left out)."""
        sampler = BatchedFlowSampler(self.posterior)
        probs = np.zeros((len(x), len(self.values)))
        for h, seed in enumerate(_seeds(seeds, len(x))):
            samples = sampler.sample(sampler.contexts(x[h:h + 1]),
                                     torch.zeros(n_samples, dtype=torch.long),
                                     seeded_generator(seed, 33))
            raw = samples[:, 0].numpy()
            raw = raw[np.isfinite(raw)]  # a draw the spline inverse failed on (inverse_or_nan)
            idx = self._rounded(raw) - self.n_min
            probs[h] = np.bincount(idx, minlength=len(self.values)) / max(len(raw), 1)
        return probs

    def draws(self, x: torch.Tensor, n: int, seeds: Sequence[int], outside: str = "raise"
              ) -> np.ndarray:
        """Flow samples inside the prior box (``sample_in_prior``), rounded and clipped."""
        return np.stack([self._rounded(sample_in_prior(self.posterior, self.model, n, x[h:h + 1],
                                                       seeded_generator(seed, 30),
                                                       outside=outside)[:, 0])
                         for h, seed in enumerate(_seeds(seeds, len(x)))], axis=1)


def nsub_step(model: TrainedModel | str) -> NsubStep:
    """A step-1 model folder's ``NsubStep``: its task's posterior if it is one (the
    classifier's), else its flow's samples rounded (``RoundedNsub``)."""
    model = as_model(model)
    posterior = load_posterior(model)
    return posterior if isinstance(posterior, NsubStep) else RoundedNsub(model, posterior)


def halo_seed(seed: int, row: int) -> int:
    """The seed of the halo at ``row`` of a split in an evaluation at ``seed``: ``infer`` at this
    seed returns the samples the evaluation judged for that halo."""
    return int(np.random.SeedSequence([int(seed), int(row)]).generate_state(1)[0])


def _seeds(seeds: Sequence[int], halos: int) -> list[int]:
    seeds = [int(s) for s in seeds]
    if len(seeds) != halos:
        raise ValueError(f"{len(seeds)} seeds for {halos} halos")
    return seeds


@dataclass
class Mixture:
    """``mixture_samples``' answer."""

    samples: np.ndarray  # (draws, halos, ranks, parameters), NaN above the drawn N_sub
    first_inside: np.ndarray  # (halos,) share of the first draws inside the prior box
    outside: np.ndarray  # (halos,) rows kept outside the box (outside="keep" only)
    rows: np.ndarray  # (halos,) rows sampled


def mixture_samples(model: TrainedModel, x: torch.Tensor, draws: np.ndarray, ranks: int,
                    seeds: Sequence[int], outside: str = "raise", posterior=None,
                    progress: str | None = None) -> Mixture:
    """theta of ranks 1..``ranks`` for each N_sub draw of each halo: the second step of the
    two-step posterior (``infer`` with one halo, ``evaluate`` with many).

    ``x``: (halos, 1, 64, 64) histograms; ``draws``: (draws, halos) N_sub. Per halo, one sample
    per (draw, rank) from ``BatchedFlowSampler`` (each distinct (N_sub, rank) condition embedded
    once, the CNN once, an ensemble's member drawn per sample), kept inside the prior box by
    rejection (``sample_rows_in_prior``), from ``seeded_generator(seeds[h], 31)``. ``outside``:
    ``"raise"`` (``OutsidePriorError`` for a halo whose draws almost never fall inside the box)
    or ``"keep"`` (that halo keeps draws outside; ``Mixture.outside`` counts them).
    ``progress``: a label for a progress bar over the halos, shown on a terminal (halos unlike
    the training ones sample slowly: rejection at low acceptance).
    """
    if outside not in OUTSIDE:
        raise ValueError(f"outside must be one of {OUTSIDE}, not {outside!r}")
    draws = np.asarray(draws)
    n_draws, halos = draws.shape
    posterior = posterior if posterior is not None else load_posterior(model)
    sampler = BatchedFlowSampler(posterior)
    out = np.full((n_draws, halos, ranks, len(model.parameters)), np.nan)
    first_inside, kept_outside = np.ones(halos), np.zeros(halos, dtype=int)
    rows = np.zeros(halos, dtype=int)
    bar = tqdm(total=halos, desc=progress, unit="halo", leave=False,
               disable=None if progress else True)  # None: only on a terminal
    for h, seed in enumerate(_seeds(seeds, halos)):
        d = draws[:, h]
        draw_i, rank_i = np.nonzero(np.arange(1, ranks + 1)[None, :] <= d[:, None])
        keys, context_of = np.unique(d[draw_i] * (ranks + 1) + rank_i + 1, return_inverse=True)
        n_sub, rank = (torch.as_tensor(keys // (ranks + 1)).float(),
                       torch.as_tensor(keys % (ranks + 1)).float())
        image = x[h:h + 1]
        if sampler.ranked:
            contexts = sampler.ranked_contexts(image, np.zeros(len(keys), dtype=int), n_sub, rank)
        else:
            contexts = sampler.contexts(model.task_spec.condition(
                image.reshape(1, -1).expand(len(keys), -1), n_sub, rank))
        stats: dict = {}
        samples = sample_rows_in_prior(sampler, model, contexts, torch.as_tensor(context_of),
                                       seeded_generator(seed, 31), stats=stats, outside=outside)
        out[draw_i, h, rank_i] = samples.numpy()
        first_inside[h] = stats.get("first_inside", 1.0)
        kept_outside[h], rows[h] = stats.get("outside", 0), len(draw_i)
        bar.update()
    bar.close()
    return Mixture(out, first_inside, kept_outside, rows)
