"""The networks: sbi's neural spline flows with our CNN embedding, and the N_sub classifier.

Every estimator here has ``loss(theta, condition)`` (per-row negative log-likelihood), so one
training loop serves them all. The input transform (``casbi_store.representations``; by default
``Log1pStandardize``: log1p of the counts, then per-pixel standardisation with statistics from
one streamed pass over the training split) is the first layer of each embedding, so its
statistics are saved in the ``state_dict``; sbi's own ``z_score_x`` is not used. Which network
a task uses is the task's choice (``casbi_store.tasks``); the builders here know nothing of tasks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from . import schema as S
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


class RankedEmbedding(nn.Module):
    """Per-rank condition (flattened histogram, N_sub, rank) -> CNN features of the image with
    log10 N_sub, log10 rank and rank / N_sub appended after the CNN."""

    def __init__(self, image_net: nn.Module):
        super().__init__()
        self.image_net = image_net

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        image = condition[:, :N_PIXELS].reshape(-1, 1, S.N_BINS, S.N_BINS)
        n_sub, rank = condition[:, N_PIXELS:N_PIXELS + 1], condition[:, N_PIXELS + 1:N_PIXELS + 2]
        return self.combine(self.image_net(image), n_sub, rank)

    @staticmethod
    def combine(features: torch.Tensor, n_sub: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        """The embedding from the image's CNN ``features`` (rows, dim) and (rows, 1) N_sub and
        rank: one image's features serve every (N_sub, rank) asked of it (batched sampling)."""
        return torch.cat([features, torch.log10(n_sub), torch.log10(rank), rank / n_sub], dim=1)


def build_npe(mean: np.ndarray, std: np.ndarray, theta_example: np.ndarray,
              condition_shape: tuple[int, ...], *, hidden_features: int, num_transforms: int,
              embedding_dim: int, conv_channels: tuple[int, ...], seed: int,
              wrap: Callable[[nn.Module], nn.Module] | None = None,
              representation: str = DEFAULT_REPRESENTATION, embedding: str = DEFAULT_EMBEDDING,
              extra_stats: dict | None = None) -> nn.Module:
    """sbi's NSF (``posterior_nn``) with our embedding (``wrap``ped, e.g. by ``RankedEmbedding``,
    for conditions other than the image); ``theta_example`` sets the flow's standardisation of
    theta. ``z_score_x="none"``: our transform standardises the image. ``representation`` and
    ``embedding`` choose the input (``casbi_store.representations``; ``extra_stats``: the
    statistics of its extra features)."""
    from sbi.neural_nets import posterior_nn

    torch.manual_seed(seed)
    net = image_embedding(mean, std, conv_channels, embedding_dim, representation, embedding,
                          extra_stats)
    embedding_net = wrap(net) if wrap is not None else net
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
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, n_min: int, n_max: int,
                 channels: tuple[int, ...] = (8, 16, 32), width: int = 128, seed: int = 0,
                 representation: str = DEFAULT_REPRESENTATION, extra_stats: dict | None = None):
        super().__init__()
        if n_max <= n_min:
            raise ValueError(f"N_sub range [{n_min}, {n_max}] has fewer than two values")
        torch.manual_seed(seed)
        self.n_min, self.n_max = int(n_min), int(n_max)
        # stem at 64x64, then one residual block per stage at 32, 16 and 8 pixels
        # the seed's input (log1p) is the net's first layer, as in older model folders; other
        # representations are applied before it, their extras joined to the pooled features
        default = representation == DEFAULT_REPRESENTATION
        self.representation = (None if default else representation_module(
            {"mean": mean, "std": std, **(extra_stats or {})}, representation))
        layers: list[nn.Module] = [Log1pStandardize(mean, std)] if default else []
        layers += [nn.Conv2d(1, channels[0], 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)]
        c_in = channels[0]
        for c in channels:
            layers += [ResidualBlock(c_in, c), nn.AvgPool2d(2)]
            c_in = c
        layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
        head = [nn.Linear(c_in * 16, width), nn.ReLU(), nn.Linear(width, self.n_max - self.n_min + 1)]
        if default:
            self.net = nn.Sequential(*layers, *head)
        else:
            self.net = nn.Sequential(*layers)
            n_extra = self.representation.extra_mean.numel()
            head[0] = nn.Linear(c_in * 16 + n_extra, width)
            self.head = nn.Sequential(*head)

    @property
    def values(self) -> torch.Tensor:
        """The N_sub value of each class."""
        return torch.arange(self.n_min, self.n_max + 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.representation is None:
            return self.net(x)
        image, extra = self.representation(x)
        features = self.net(image)
        return self.head(features if extra is None else torch.cat([features, extra], dim=1))

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
