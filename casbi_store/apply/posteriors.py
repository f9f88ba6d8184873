"""Posterior objects of trained model folders, and sampling them.

Each task makes its own posterior (``casbi_store.learn.tasks``): NPE models become sbi
``DirectPosterior``s with a ``BoxUniform`` prior over the range of their training parameters
(log masses); ensembles become sbi's ``EnsemblePosterior`` with the weights the trainer derived
from validation log-likelihood. The N_sub classifier becomes an ``NsubPosterior``: the members'
softmax averaged with the same weights.

The two-step posterior that ``infer`` and ``evaluate`` share is built from these in
``casbi_store.apply.twostep``.

Every flow sample, in evaluation and in ``infer``, comes from one sampler,
``BatchedFlowSampler``: an ensemble's member drawn per sample from the weights (one
member-mixing rule), randomness from a ``torch.Generator`` (``seeded_generator``), the flows'
inverse run with each condition's context terms computed once (``flow_inverse``). sbi's
``sample``/``sample_batched`` are not used: they return an ensemble's samples member by member.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from casbi_store import CasbiError
from casbi_store.learn.modelfolder import TrainedModel, as_model

__all__ = ["BatchedFlowSampler", "FactoredContext", "OutsidePriorError", "box_bounds",
           "credible_set", "flow_inverse", "load_posterior", "outside_fraction", "quiet_sampling",
           "sample_in_prior", "sample_rows_in_prior", "seeded_generator"]


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


CHUNK_ROWS = 2**14  # rows per flow inverse call: ~12% fewer CPU-s than 60,000 at once here


class OutsidePriorError(CasbiError, ValueError):
    """Almost no posterior samples fall inside the prior box: the observation is unlike the
    training halos (or the model is untrained)."""


def box_bounds(model: TrainedModel) -> tuple[np.ndarray, np.ndarray]:
    """Low and high corners of the prior box: the training parameters' range."""
    return model.task_spec.box_bounds(model.stats["theta_example"])


def seeded_generator(seed: int, *tags: int) -> torch.Generator:
    """A torch generator of its own for each use of ``seed`` (adding a use moves no other)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *tags])
                                             .generate_state(1, np.uint64)[0] >> 1))


def sample_in_prior(posterior, model: TrainedModel, n: int, x: torch.Tensor,
                    generator: torch.Generator | None = None, min_acceptance: float = 0.005,
                    outside: str = "raise") -> np.ndarray:
    """``n`` samples of ``posterior`` at one condition ``x`` inside the prior box
    (``sample_rows_in_prior``: ``BatchedFlowSampler``, an ensemble's member drawn per sample).
    ``generator``: the randomness (torch's global generator if None)."""
    sampler = BatchedFlowSampler(posterior)
    return sample_rows_in_prior(sampler, model, sampler.contexts(x), torch.zeros(n, dtype=torch.long),
                                generator, min_acceptance, outside=outside).numpy()


def sample_rows_in_prior(sampler: BatchedFlowSampler, model: TrainedModel,
                         contexts: list[torch.Tensor | FactoredContext], context_of: torch.Tensor,
                         generator: torch.Generator | None = None, min_acceptance: float = 0.005,
                         stats: dict | None = None, outside: str = "raise") -> torch.Tensor:
    """One sample per row inside the prior box (row i conditioned on ``contexts[..][
    context_of[i]]``), by rejection per row: a row outside is redrawn, with 2, 4, .. 1024 draws
    per round (at most 2^17 draws a round), its first draw inside kept (the truncated posterior,
    exactly). A bound: once a condition's draws pass 20 x its rows + 20,000 with fewer than
    ``min_acceptance`` of them inside, raise ``OutsidePriorError`` (unbounded rejection would
    loop for hours on such an observation); with ``outside="keep"`` (evaluation, which measures
    the leakage) that condition's rows keep their last draw instead. ``stats``, if given, gets
    ``first_inside``: the share of the rows whose first draw fell inside the box (the flow's own
    mass inside, unbiased), and ``outside``: the rows kept outside."""
    low, high = (torch.as_tensor(b) for b in box_bounds(model))
    generator = generator if generator is not None else torch.default_generator
    n_ctx = len(contexts[0])
    need = torch.bincount(context_of, minlength=n_ctx)
    drawn = torch.zeros(n_ctx, dtype=torch.long)
    kept = torch.zeros(n_ctx, dtype=torch.long)
    out = torch.empty(len(context_of), sampler.dims)
    todo, copies = torch.arange(len(context_of)), 1
    while len(todo):
        rows_context = context_of[todo].repeat_interleave(copies)
        s = sampler.sample(contexts, rows_context, generator).reshape(len(todo), copies, -1)
        inside = ((s >= low) & (s <= high)).all(dim=-1)  # (rows to do, copies)
        if stats is not None and "first_inside" not in stats:
            stats["first_inside"] = float(inside[:, 0].float().mean()) if len(inside) else 1.0
        drawn += torch.bincount(rows_context, minlength=n_ctx)
        kept += torch.bincount(rows_context, weights=inside.reshape(-1).double(),
                               minlength=n_ctx).long()
        hit = inside.any(dim=1)
        first = inside.int().argmax(dim=1)  # the first draw inside
        out[todo[hit]] = s[hit, first[hit]]
        todo = todo[~hit]
        stuck = torch.unique(context_of[todo])
        bad = stuck[(drawn[stuck] >= 20 * need[stuck] + 20_000)
                    & (kept[stuck] < min_acceptance * drawn[stuck])]
        if len(bad) and outside == "keep":
            stuck_rows = torch.isin(context_of[todo], bad)
            out[todo[stuck_rows]] = s[~hit][stuck_rows, -1]
            todo = todo[~stuck_rows]
            if stats is not None:
                stats["outside"] = stats.get("outside", 0) + int(stuck_rows.sum())
        elif len(bad):
            c = int(bad[0])
            raise OutsidePriorError(
                f"{model.path}: only {int(kept[c]) / int(drawn[c]):.2%} of {int(drawn[c])} "
                "posterior samples fall inside the prior box (the training range of "
                f"{', '.join(model.parameters)}): the observation looks unlike the training "
                "halos (other binning? other survey selection?) or the model is untrained")
        copies = max(1, min(2 * copies, 1024, 2**17 // max(len(todo), 1)))  # <= 2^17 a round
    return out


class FactoredContext:
    """Contexts ``cat([features[image_of], extra], dim=1)`` kept apart: a linear map of them is
    the features' map, once per image, gathered, plus the extra columns' map (the per-rank
    task: an image's CNN features, then the columns of ``RankedEmbedding.after_features``:
    N_sub, the rank and, with a point-estimate head, its estimate)."""

    def __init__(self, features: torch.Tensor, image_of: torch.Tensor, extra: torch.Tensor):
        self.features, self.image_of, self.extra = features, image_of, extra

    def __len__(self) -> int:
        return len(self.image_of)

    def __getitem__(self, rows) -> FactoredContext:
        return FactoredContext(self.features, self.image_of[rows], self.extra[rows])

    def full(self) -> torch.Tensor:
        return torch.cat([self.features[self.image_of], self.extra], dim=1)


def _full(contexts: torch.Tensor | FactoredContext) -> torch.Tensor:
    return contexts.full() if isinstance(contexts, FactoredContext) else contexts


def _linear(contexts: torch.Tensor | FactoredContext, weight: torch.Tensor,
            bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` of contexts, a factored one's image part once per image."""
    if not isinstance(contexts, FactoredContext):
        return F.linear(contexts, weight, bias)
    n = contexts.features.shape[1]
    return (F.linear(contexts.features, weight[:, :n])[contexts.image_of]
            + F.linear(contexts.extra, weight[:, n:], bias))


class BatchedFlowSampler:
    """Exactly as many samples as each row asks of an sbi NSF posterior (a ``DirectPosterior``
    or an ``EnsemblePosterior`` of them), for many conditions at once: the evaluation's sampler.

    sbi's ``sample_batched`` draws the same number of samples for every condition of a call, so a
    mixture over N_sub draws (a few samples for each of many (halo, N_sub, rank) conditions) paid
    for padding, and its embedding runs the CNN once per condition. Here each condition is
    embedded once (per-rank conditions: the image's CNN features once per image,
    ``RankedEmbedding.after_features`` for each (N_sub, rank)), then one flow pass maps one
    normal draw per row through the flow's inverse with its condition's embedding. Ensembles
    draw the member of every row from the weights (sbi's ``sample_batched`` gives every
    condition the same member counts, in member order). Randomness comes from a
    ``torch.Generator`` only.
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
        from casbi_store.learn.estimators import RankedEmbedding

        return all(isinstance(f._embedding_net, RankedEmbedding) for f in self.flows)

    @torch.no_grad()
    def contexts(self, condition: torch.Tensor) -> list[torch.Tensor]:
        """Each member's embedding of the ``condition`` rows."""
        return [flow._embedding_net(condition) for flow in self.flows]

    @torch.no_grad()
    def ranked_contexts(self, images: torch.Tensor, image_of: np.ndarray, n_sub: torch.Tensor,
                        rank: torch.Tensor) -> list[FactoredContext]:
        """Each member's embedding of the per-rank conditions (``images[image_of]``, ``n_sub``,
        ``rank``), each image's CNN run once (members with ``RankedEmbedding`` only), kept
        factored: the flow's context terms are then computed once per image and once per
        (N_sub, rank), not once per (image, N_sub, rank)."""
        rows, image_of = (len(image_of), 1), torch.as_tensor(image_of)
        out = []
        for flow in self.flows:
            net = flow._embedding_net
            features = net.image_net(images.reshape(len(images), 1, *images.shape[-2:]))
            extra = net.after_features(  # what follows the CNN (a point estimate: per row)
                features[image_of] if net.estimate is not None else None,
                n_sub.reshape(rows).float(), rank.reshape(rows).float())
            out.append(FactoredContext(features, image_of, extra))
        return out

    @torch.no_grad()
    def sample(self, contexts: list[torch.Tensor | FactoredContext], context_of: torch.Tensor,
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
                if not len(sel):
                    continue
                # the contexts these rows use (a redraw of a few rows needs few of them)
                used, local = torch.unique(context_of[sel], return_inverse=True)
                inverse = flow_inverse(flow._transform, contexts[k][used])
                for part in torch.arange(len(sel)).split(CHUNK_ROWS):  # intermediates in cache
                    out[sel[part]] = inverse_or_nan(inverse, noise[sel[part]], local[part])
        return out


def inverse_or_nan(inverse, noise: torch.Tensor, context_of: torch.Tensor) -> torch.Tensor:
    """``inverse(noise, context_of)``, with NaN for the rows on which nflows' spline inverse
    fails its ``discriminant >= 0`` assertion (float32 rounding far in a spline's tails, nflows
    issue 87; met on halos far from every training halo). The failing rows are found by halving
    the batch; NaN is outside every prior box, so the rejection sampler draws those rows again."""
    try:
        return inverse(noise, context_of)
    except AssertionError:
        if len(noise) == 1:
            return torch.full_like(noise, float("nan"))
        half = len(noise) // 2
        return torch.cat([inverse_or_nan(inverse, noise[:half], context_of[:half]),
                          inverse_or_nan(inverse, noise[half:], context_of[half:])])


def _context_terms(net, contexts: torch.Tensor | FactoredContext):
    """What a coupling transform's conditioner computes from the context alone, once per
    context: a function ``(identity_split, context_of) -> spline parameters`` that gathers it
    per row, or None for a conditioner of another kind (then run as it is).

    nflows' ``ResidualNet`` concatenates the context to its input and gates every residual
    block with ``sigmoid(context_layer(context))``; sbi's ``ContextSplineMap`` (1-d theta) sees
    the context only. In batched sampling many rows share a context (200 samples per halo), so
    these context terms, about half of the conditioner's arithmetic, are computed per context
    and gathered per row; the rows' own arithmetic is nflows' (same order of operations up to
    the split of the first layer's matrix product: float rounding only)."""
    from nflows.nn.nets.resnet import ResidualNet
    from sbi.neural_nets.net_builders.flow import ContextSplineMap

    if isinstance(net, ContextSplineMap):
        params = net(None, _full(contexts))
        return lambda identity, context_of: params[context_of]
    if (not isinstance(net, ResidualNet) or net.context_features is None
            or any(b.use_batch_norm or b.activation not in (F.relu, torch.relu)
                   or (b.training and b.dropout.p > 0) for b in net.blocks)):
        return None
    n_in = net.initial_layer.in_features - net.context_features
    weight_x = net.initial_layer.weight[:, :n_in]
    first = _linear(contexts, net.initial_layer.weight[:, n_in:], net.initial_layer.bias)
    gates = [torch.sigmoid(_linear(contexts, b.context_layer.weight, b.context_layer.bias))
             for b in net.blocks]

    def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(layer.bias, x, layer.weight.T)  # ~2x F.linear's speed on CPU here

    def run(identity: torch.Tensor, context_of: torch.Tensor) -> torch.Tensor:
        temps = torch.addmm(first.index_select(0, context_of), identity, weight_x.T)
        for block, gate in zip(net.blocks, gates, strict=True):
            h = linear(block.linear_layers[0], torch.relu(temps)).relu_()
            temps = torch.addcmul(temps, linear(block.linear_layers[1], h),
                                  gate.index_select(0, context_of))
        return linear(net.final_layer, temps)

    return run


def flow_inverse(transform, contexts: torch.Tensor | FactoredContext):
    """nflows' ``CompositeTransform.inverse``, prepared for ``contexts``: a function
    ``(noise (rows, dims), context_of) -> samples``, row i conditioned on
    ``contexts[context_of[i]]``. The spline couplings' context terms are computed here, once
    per context (``_context_terms``); other transforms (sbi's standardisation, ``LULinear``) run
    as nflows runs them; no log-determinant (sampling needs none)."""
    from nflows.transforms import CompositeTransform, LULinear, PointwiseAffineTransform
    from nflows.transforms.coupling import PiecewiseCouplingTransform

    steps = transform._transforms if isinstance(transform, CompositeTransform) else [transform]
    runs = [None if isinstance(step, (LULinear, PointwiseAffineTransform))
            or not isinstance(step, PiecewiseCouplingTransform)
            or step.unconditional_transform is not None
            else _context_terms(step.transform_net, contexts) for step in steps]

    def inverse(noise: torch.Tensor, context_of: torch.Tensor) -> torch.Tensor:
        z, rows_context = noise, None
        for step, run in zip(reversed(steps), reversed(runs), strict=True):
            if isinstance(step, (LULinear, PointwiseAffineTransform)):  # context-free
                z = step.inverse(z)[0]
            elif run is None:  # a transform of another kind: nflows' own, context per row
                if rows_context is None:
                    rows_context = _full(contexts[context_of])
                z = step.inverse(z, context=rows_context)[0]
            else:
                identity = z[:, step.identity_features]
                moved, _ = step._coupling_transform_inverse(z[:, step.transform_features],
                                                            run(identity, context_of))
                z = torch.empty_like(z)
                z[:, step.identity_features] = identity
                z[:, step.transform_features] = moved
        return z

    return inverse


def outside_fraction(model: TrainedModel, samples: torch.Tensor) -> float:
    """Fraction of samples outside the prior box."""
    low, high = (torch.as_tensor(b) for b in box_bounds(model))
    return float(1 - ((samples >= low) & (samples <= high)).all(dim=-1).float().mean())


def load_posterior(model: TrainedModel | str | os.PathLike):
    """The posterior its task makes of a model folder: sbi's (NPE tasks) or ``NsubPosterior``
    (classifier)."""
    model = as_model(model)
    # sbi's EnsemblePosterior copy-constructs its weights' tensor; sbi's posteriors draw from
    # the global generator when built: the caller's random state is restored after
    with quiet_sampling(), torch.random.fork_rng(devices=[]):
        return model.task_spec.posterior(model)


def credible_set(probs: np.ndarray, level: float) -> np.ndarray:
    """Highest-probability set of each row holding at least ``level`` of the mass (boolean mask)."""
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, axis=1)
    cum = np.cumsum(sorted_p, axis=1)
    inside_sorted = (cum - sorted_p) < level  # include the value that crosses the level
    mask = np.zeros_like(probs, dtype=bool)
    np.put_along_axis(mask, order, inside_sorted, axis=1)
    return mask
