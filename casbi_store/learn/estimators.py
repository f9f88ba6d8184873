"""The networks: sbi's neural spline flows with our CNN embedding, and the N_sub classifier.

Every estimator here has ``loss(theta, condition)`` (per-row negative log-likelihood), so one
training loop serves them all. The input transform (``casbi_store.learn.representations``; by default
``Log1pStandardize``: log1p of the counts, then per-pixel standardisation with statistics from
one streamed pass over the training split) is the first layer of each embedding, so its
statistics are saved in the ``state_dict``; sbi's own ``z_score_x`` is not used. Which network
a task uses is the task's choice (``casbi_store.learn.tasks``); the builders here know nothing of tasks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from casbi_store import InputError
from casbi_store.store import schema as S

from .representations import (
    DEFAULT_EMBEDDING,
    DEFAULT_REPRESENTATION,
    Log1pStandardize,
    plane_embedding,
    representation_module,
)

N_PIXELS = S.N_BINS * S.N_BINS


def image_embedding(mean: np.ndarray, std: np.ndarray, conv_channels: tuple[int, ...],
                    embedding_dim: int, representation: str = DEFAULT_REPRESENTATION,
                    embedding: str = DEFAULT_EMBEDDING, extra_stats: dict | None = None
                    ) -> nn.Module:
    """The image's embedding (``representations.plane_embedding``): by default log1p +
    standardisation, then sbi's CNN: 64x64 -> ``embedding_dim`` features."""
    stats = {"mean": mean, "std": std, **(extra_stats or {})}
    return plane_embedding(stats, representation, embedding, conv_channels, embedding_dim)


class PointEstimate(nn.Module):
    """A learned summary: an MLP from the flow's embedding (the classifier's pooled features) to
    an estimate of the standardised parameters, trained by mean squared error beside the
    estimator's own loss (``PointEstimate.loss``, ``TrainConfig.point_estimate_weight``) and
    appended to the flow's condition (to the features the classifier's softmax layer sees).

    Why: the posterior mean is the summary that keeps what a point estimate needs (Fearnhead &
    Prangle 2012), and a regressor on the flow's own CNN learns the infall time where the flow's
    likelihood alone does not (bench/README.md, "Power for a fixed CPU budget"). The estimate of
    the last training forward pass is kept for the loss (``last``); evaluation ignores it."""

    def __init__(self, n_in: int, hidden: int, theta_example: np.ndarray):
        super().__init__()
        theta = torch.as_tensor(np.asarray(theta_example, dtype=np.float64))
        self.register_buffer("theta_mean", theta.mean(dim=0).float())
        self.register_buffer("theta_std", theta.std(dim=0).clamp(min=1e-6).float())
        n_out = theta.shape[1]
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, n_out))
        self.last: torch.Tensor | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        estimate = self.net(features)
        if self.training:
            self.last = estimate
        return estimate

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """Per-row mean squared error of the last training pass's estimate (then forgotten)."""
        if self.last is None or len(self.last) != len(theta):
            raise RuntimeError("PointEstimate.loss needs the estimator's loss of the same "
                               "batch first, in training mode")
        target = (theta - self.theta_mean) / self.theta_std
        error, self.last = ((self.last - target) ** 2).mean(dim=1), None
        return error


def point_estimate_head(estimator: nn.Module) -> PointEstimate:
    """The estimator's ``PointEstimate`` (its ``loss(theta)``: the per-row MSE on the batch the
    estimator's own loss just saw); found once per training, not per step."""
    for module in estimator.modules():
        if isinstance(module, PointEstimate):
            return module
    raise ValueError("this estimator has no point-estimate head (point_estimate_weight is 0 "
                     "in its config)")


class WithEstimate(nn.Module):
    """An embedding's features with the ``PointEstimate`` made from them appended."""

    def __init__(self, embedding: nn.Module, estimate: PointEstimate):
        super().__init__()
        self.embedding, self.estimate = embedding, estimate

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        features = self.embedding(condition)
        return torch.cat([features, self.estimate(features)], dim=1)


def with_estimate(embedding: nn.Module, estimate: PointEstimate | None = None) -> nn.Module:
    """The embedding of a flow whose condition is the image alone: ``embedding`` itself, or
    ``WithEstimate`` when the model has a ``PointEstimate``."""
    return embedding if estimate is None else WithEstimate(embedding, estimate)


class RankedEmbedding(nn.Module):
    """Per-rank condition (flattened histogram, N_sub, rank) -> CNN features of the image with
    log10 N_sub, log10 rank and rank / N_sub appended after the CNN (and, with a
    ``PointEstimate``, its estimate of theta from all of them)."""

    def __init__(self, image_net: nn.Module, estimate: PointEstimate | None = None):
        super().__init__()
        self.image_net = image_net
        self.estimate = estimate

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        image = condition[:, :N_PIXELS].reshape(-1, 1, S.N_BINS, S.N_BINS)
        n_sub, rank = condition[:, N_PIXELS:N_PIXELS + 1], condition[:, N_PIXELS + 1:N_PIXELS + 2]
        features = self.image_net(image)
        return torch.cat([features, self.after_features(features, n_sub, rank)], dim=1)

    def after_features(self, features: torch.Tensor | None, n_sub: torch.Tensor,
                       rank: torch.Tensor) -> torch.Tensor:
        """The columns after the CNN features: log10 N_sub, log10 rank, rank / N_sub, then the
        point estimate if the model has one (which needs the rows' ``features``; without one
        they may be None). Batched sampling computes these once per (image, N_sub, rank) and the
        flow's terms of the features once per image (``posteriors.FactoredContext``)."""
        ranks = torch.cat([torch.log10(n_sub), torch.log10(rank), rank / n_sub], dim=1)
        if self.estimate is None:
            return ranks
        return torch.cat([ranks, self.estimate(torch.cat([features, ranks], dim=1))], dim=1)


def build_npe(mean: np.ndarray, std: np.ndarray, theta_example: np.ndarray,
              condition_shape: tuple[int, ...], *, hidden_features: int, num_transforms: int,
              embedding_dim: int, conv_channels: tuple[int, ...], seed: int,
              wrap: Callable[..., nn.Module] | None = None,
              representation: str = DEFAULT_REPRESENTATION, embedding: str = DEFAULT_EMBEDDING,
              extra_stats: dict | None = None, point_estimate: bool = False) -> nn.Module:
    """sbi's NSF (``posterior_nn``) with our embedding (``wrap``ped, e.g. by ``RankedEmbedding``,
    for conditions other than the image; ``wrap(net, estimate)``); ``theta_example`` sets the
    flow's standardisation of theta. ``z_score_x="none"``: our transform standardises the image.
    ``representation`` and ``embedding`` choose the input (``casbi_store.learn.representations``;
    ``extra_stats``: the statistics of its extra features). ``point_estimate``: a
    ``PointEstimate`` head (``hidden_features`` wide) appended to the embedding."""
    from sbi.neural_nets import posterior_nn

    wrap = wrap or with_estimate
    torch.manual_seed(seed)
    net = image_embedding(mean, std, conv_channels, embedding_dim, representation, embedding,
                          extra_stats)
    embedding_net = wrap(net)
    if point_estimate:
        with torch.no_grad():  # the width of what the head sees: the embedding's output
            n_in = embedding_net.eval()(torch.ones(2, *condition_shape)).shape[1]
        embedding_net = wrap(net, PointEstimate(n_in, hidden_features, theta_example)).train()
    build = posterior_nn("nsf", z_score_x="none", z_score_theta="independent",
                         embedding_net=embedding_net, hidden_features=hidden_features,
                         num_transforms=num_transforms)
    # a strided subset spanning the whole range: the flow's z-score comes from it (a sorted
    # head would put most of theta beyond the spline's bounds, where the loss has no gradient)
    theta = torch.as_tensor(theta_example[:: max(1, len(theta_example) // 1024)],
                            dtype=torch.float32)
    return build(theta, torch.ones(len(theta), *condition_shape))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a skip connection (1x1 projection when the
    channels change), as in ResNet."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(torch.relu(self.norm1(self.conv1(x)))))
        return torch.relu(self.skip(x) + y)


class NsubClassifier(nn.Module):
    """ResNet-style CNN over N_sub in [n_min, n_max]; its softmax is p(N_sub | x).

    ``loss(theta, x)`` is the per-row cross entropy with ``theta`` the true N_sub (shape (N, 1)),
    i.e. the negative log-likelihood of the discrete posterior, comparable to the NPE's loss.
    ``estimate_example`` (training N_sub values): a ``PointEstimate`` of N_sub from the pooled
    features, appended to them before the head (``point_estimate_weight``).
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, n_min: int, n_max: int,
                 channels: tuple[int, ...] = (8, 16, 32), width: int = 128, seed: int = 0,
                 representation: str = DEFAULT_REPRESENTATION, extra_stats: dict | None = None,
                 estimate_example: np.ndarray | None = None, image: bool = True):
        super().__init__()
        if n_max <= n_min:
            raise InputError(f"N_sub range [{n_min}, {n_max}] has fewer than two values")
        torch.manual_seed(seed)
        self.n_min, self.n_max = int(n_min), int(n_max)
        # stem at 64x64, then one residual block per stage at 32, 16 and 8 pixels
        # the seed's input (log1p) is the net's first layer, as in older model folders; other
        # representations are applied before it, their extras joined to the pooled features
        default = representation == DEFAULT_REPRESENTATION
        self.representation = (None if default else representation_module(
            {"mean": mean, "std": std, **(extra_stats or {})}, representation))
        if not image and (default or self.representation.extra_mean.numel() == 0):
            raise InputError("a classifier without the image (embedding mlp) needs a representation "
                             "with extras (log1p_marginals or normalised)")
        layers: list[nn.Module] = [Log1pStandardize(mean, std)] if default else []
        layers += [nn.Conv2d(1, channels[0], 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)]
        c_in = channels[0]
        for c in channels:
            layers += [ResidualBlock(c_in, c), nn.AvgPool2d(2)]
            c_in = c
        layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
        head = [nn.Linear(c_in * 16, width), nn.ReLU(), nn.Linear(width, self.n_max - self.n_min + 1)]
        self.estimate: PointEstimate | None = None
        if default and estimate_example is None:  # the seed's layout: one Sequential
            self.net, self.head = nn.Sequential(*layers, *head), None
            return
        # image=False (embedding mlp): the extras alone (e.g. the marginals) reach the head
        self.net = nn.Sequential(*layers) if image else None
        n_in = (c_in * 16 if image else 0) + (0 if default else self.representation.extra_mean.numel())
        if estimate_example is not None:  # its estimate of N_sub joins the pooled features
            self.estimate = PointEstimate(n_in, width, estimate_example)
            n_in += self.estimate.theta_mean.numel()
        head[0] = nn.Linear(n_in, width)
        self.head = nn.Sequential(*head)

    @property
    def values(self) -> torch.Tensor:
        """The N_sub value of each class."""
        return torch.arange(self.n_min, self.n_max + 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return self.net(x)
        if self.representation is None:
            features = self.net(x)
        else:
            image, extra = self.representation(x)
            if self.net is None:
                features = extra
            else:
                features = self.net(image)
                features = features if extra is None else torch.cat([features, extra], dim=1)
        if self.estimate is not None:
            features = torch.cat([features, self.estimate(features)], dim=1)
        return self.head(features)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n_classes) posterior probabilities; rows sum to 1."""
        return torch.softmax(self.logits(x), dim=1)

    def _index(self, theta: torch.Tensor) -> torch.Tensor:
        n = theta.reshape(-1).round().long()
        if ((n < self.n_min) | (n > self.n_max)).any():
            raise ValueError(f"N_sub outside the classifier's range [{self.n_min}, {self.n_max}]")
        return n - self.n_min

    def log_prob(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(self.logits(x), dim=1)
        return logp.gather(1, self._index(theta)[:, None])[:, 0]

    def loss(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -self.log_prob(theta, x)
