"""The networks: sbi's neural spline flows with our CNN embedding, and the N_sub classifier.

Every estimator here has ``loss(theta, condition)`` (per-row negative log-likelihood), so one
training loop serves them all. The input transform (``Log1pStandardize``: log1p of the counts,
then per-pixel standardisation with statistics from one streamed pass over the training split)
is the first layer of each embedding, so its statistics are saved in the ``state_dict``; sbi's
own ``z_score_x`` is not used (see the trainer issue). Which network a task uses is the task's
choice (``casbi_store.tasks``); the builders here know nothing of tasks.

Input representations (``REPRESENTATIONS``, ``TrainConfig.representation``): ``counts`` (the
seed's: the CNN sees log1p of the counts, so their total, which for simulated halos encodes the
blocks' stellar mass through the particle resolution, is part of the image) and ``density``
(for sets with an observation model): the input layer splits the histogram into its density
(sum 1; the CNN sees log1p(density x 4096), a uniform plane being 1 per pixel) and its total
N_obs, and log10 N_obs joins the CNN's features as a separate condition (``AppendLogCount``).
The condition is still a histogram: an observation's N_obs is its total; a density given with
another N_obs is passed as density x N_obs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from . import schema as S

N_PIXELS = S.N_BINS * S.N_BINS
REPRESENTATIONS = ("counts", "density")


def log_density(x: torch.Tensor) -> torch.Tensor:
    """log1p of each plane normalised to a total of ``N_PIXELS`` (sum over the last two axes);
    an empty plane stays 0."""
    total = x.sum(dim=(-2, -1), keepdim=True)
    return torch.log1p(x * (N_PIXELS / total.clamp(min=1e-20)))


def pre_transform(representation: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the input layer applies before standardising: log1p of the counts or of the density."""
    if representation not in REPRESENTATIONS:
        raise ValueError(f"representation must be one of {REPRESENTATIONS}, not {representation!r}")
    return torch.log1p if representation == "counts" else log_density


class Log1pStandardize(nn.Module):
    """x -> (log1p(x) - mean) / max(std, floor); mean and std are saved buffers.

    The floor matters: ~60% of the demo set's pixels are empty in every training halo (std 0),
    and halos of held-out simulations do put stars there. With a floor of 0.5 one such star
    becomes ~1.4, not ~70 (floor 1e-2) or ~1e7 (sbi's 1e-7), so such halos stay in range.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, floor: float = 0.5):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32)[None, None])
        self.register_buffer("std", torch.as_tensor(np.maximum(std, floor),
                                                    dtype=torch.float32)[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.log1p(x) - self.mean) / self.std


class DensityStandardize(Log1pStandardize):
    """x -> (log_density(x) - mean) / max(std, floor): the plane's total does not reach past it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (log_density(x) - self.mean) / self.std


def input_layer(mean: np.ndarray, std: np.ndarray, representation: str = "counts") -> nn.Module:
    """The standardising first layer of a representation (``pre_transform``'s statistics)."""
    pre_transform(representation)  # validates the name
    cls = Log1pStandardize if representation == "counts" else DensityStandardize
    return cls(mean, std)


class AppendLogCount(nn.Module):
    """histogram -> ``body``'s features of it with log10 of its total count appended (then
    ``head``, if given): N_obs as a condition separate from the density the body sees."""

    def __init__(self, body: nn.Module, head: nn.Module | None = None):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.reshape(len(x), -1).sum(dim=1, keepdim=True)
        features = torch.cat([self.body(x), torch.log10(total.clamp(min=1.0))], dim=1)
        return features if self.head is None else self.head(features)


def image_embedding(mean: np.ndarray, std: np.ndarray, conv_channels: tuple[int, ...],
                    embedding_dim: int, representation: str = "counts") -> nn.Module:
    """The input layer, then sbi's CNN: 64x64 -> ``embedding_dim`` features (+ log10 N_obs for
    the ``density`` representation)."""
    from sbi.neural_nets.embedding_nets import CNNEmbedding

    net = nn.Sequential(
        input_layer(mean, std, representation),
        CNNEmbedding(input_shape=(S.N_BINS, S.N_BINS), in_channels=1,
                     out_channels_per_layer=list(conv_channels), num_conv_layers=len(conv_channels),
                     num_linear_layers=2, num_linear_units=embedding_dim, output_dim=embedding_dim),
    )
    return net if representation == "counts" else AppendLogCount(net)


class RankedEmbedding(nn.Module):
    """Per-rank condition (flattened histogram, N_sub, rank) -> CNN features of the image with
    log10 N_sub, log10 rank and rank / N_sub appended after the CNN."""

    def __init__(self, image_net: nn.Module):
        super().__init__()
        self.image_net = image_net

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        image = condition[:, :N_PIXELS].reshape(-1, 1, S.N_BINS, S.N_BINS)
        n_sub, rank = condition[:, N_PIXELS:N_PIXELS + 1], condition[:, N_PIXELS + 1:N_PIXELS + 2]
        return torch.cat([self.image_net(image), torch.log10(n_sub), torch.log10(rank),
                          rank / n_sub], dim=1)


def build_npe(mean: np.ndarray, std: np.ndarray, theta_example: np.ndarray,
              condition_shape: tuple[int, ...], *, hidden_features: int, num_transforms: int,
              embedding_dim: int, conv_channels: tuple[int, ...], seed: int,
              wrap: Callable[[nn.Module], nn.Module] | None = None,
              representation: str = "counts") -> nn.Module:
    """sbi's NSF (``posterior_nn``) with our embedding (``wrap``ped, e.g. by ``RankedEmbedding``,
    for conditions other than the image); ``theta_example`` sets the flow's standardisation of
    theta. ``z_score_x="none"``: our transform standardises the image."""
    from sbi.neural_nets import posterior_nn

    torch.manual_seed(seed)
    embedding = image_embedding(mean, std, conv_channels, embedding_dim, representation)
    if wrap is not None:
        embedding = wrap(embedding)
    build = posterior_nn("nsf", z_score_x="none", z_score_theta="independent",
                         embedding_net=embedding, hidden_features=hidden_features,
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
                 representation: str = "counts"):
        super().__init__()
        if n_max <= n_min:
            raise ValueError(f"N_sub range [{n_min}, {n_max}] has fewer than two values")
        torch.manual_seed(seed)
        self.n_min, self.n_max = int(n_min), int(n_max)
        # stem at 64x64, then one residual block per stage at 32, 16 and 8 pixels
        layers: list[nn.Module] = [input_layer(mean, std, representation),
                                   nn.Conv2d(1, channels[0], 3, padding=1), nn.ReLU(),
                                   nn.AvgPool2d(2)]
        c_in = channels[0]
        for c in channels:
            layers += [ResidualBlock(c_in, c), nn.AvgPool2d(2)]
            c_in = c
        layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
        extra = 0 if representation == "counts" else 1  # log10 N_obs joins the features
        head = [nn.Linear(c_in * 16 + extra, width), nn.ReLU(),
                nn.Linear(width, self.n_max - self.n_min + 1)]
        # counts: one Sequential, as the classifier always was (its saved weights' names)
        self.net = (nn.Sequential(*layers, *head) if representation == "counts"
                    else AppendLogCount(nn.Sequential(*layers), nn.Sequential(*head)))

    @property
    def values(self) -> torch.Tensor:
        """The N_sub value of each class."""
        return torch.arange(self.n_min, self.n_max + 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

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
