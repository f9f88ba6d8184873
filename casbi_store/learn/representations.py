"""Input representations and plane embeddings: what a network sees of a halo's 64x64 plane.

A representation turns a histogram of counts into a standardised image and, optionally, a vector
of extra features (the network's first layers; their statistics, from one streamed pass over the
training split, are saved in ``transform.npz``):

- ``log1p`` (the default): log1p of the counts, standardised per pixel; no extras.
- ``normalised``: the plane divided by its total count (shape only: ``log1p(REF x / total)``,
  i.e. the counts of a halo of ``REF`` stars), standardised per pixel; extra: log10 of the
  total count, so the amount of stars enters as a separate condition.
- ``log1p_marginals``: the ``log1p`` image; extras: the log1p marginal [Fe/H] and [O/Fe]
  distributions and log10 of the total count (what the ridge baseline reads), standardised.

An embedding maps (image, extras) to ``embedding_dim`` features (extras appended after it):

- ``cnn`` (the default): sbi's ``CNNEmbedding`` (the seed's CNN);
- ``pooled``: a smaller CNN whose last feature maps are average-pooled to 4x4;
- ``mlp``: the extras only, through an MLP (needs a representation with extras).

Both choices are training options (``TrainConfig.representation`` / ``.embedding``) recorded in a
model folder's ``config.json``; the tasks build their networks through ``plane_embedding`` and the
step-1 classifier through ``representation_module``. A new representation is one class here
(a ``Representation`` subclass) registered in ``REPRESENTATIONS``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from casbi_store import InputError
from casbi_store.store import schema as S

DEFAULT_REPRESENTATION, DEFAULT_EMBEDDING = "log1p", "cnn"
N_OBS_REPRESENTATION = "normalised"  # sees N_obs as a condition: its model knows the range trained on
EMBEDDINGS = ("cnn", "pooled", "mlp")
REF_COUNT = 1000.0  # normalised planes are shown as the counts of a halo of this many stars
PIXEL_FLOOR = 0.5  # see Log1pStandardize


class Log1pStandardize(nn.Module):
    """x -> (log1p(x) - mean) / max(std, floor); mean and std are saved buffers.

    The floor matters: ~60% of the demo set's pixels are empty in every training halo (std 0),
    and halos of held-out simulations do put stars there. With a floor of 0.5 one such star
    becomes ~1.4, not ~70 (floor 1e-2) or ~1e7 (sbi's 1e-7), so such halos stay in range.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, floor: float = PIXEL_FLOOR):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32)[None, None])
        self.register_buffer("std", torch.as_tensor(np.maximum(std, floor),
                                                    dtype=torch.float32)[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.log1p(x) - self.mean) / self.std


class Representation:
    """One input representation, written once in torch (the statistics pass runs it too):
    the counts its image shows (log1p'd and standardised per pixel) and its extra features."""

    name: ClassVar[str]
    help: ClassVar[str]

    def extra_dim(self, n_bins: int = S.N_BINS) -> int:
        return 0

    def image_counts(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, nb, nb) counts -> the counts the image shows."""
        return x

    def extras(self, x: torch.Tensor) -> torch.Tensor | None:
        """(N, 1, nb, nb) counts -> (N, k) extra features before standardisation."""
        return None


class Standardised(nn.Module):
    """A representation with its statistics: (N, 1, nb, nb) counts -> (standardised image,
    standardised extras or None)."""

    def __init__(self, rep: Representation, stats: dict):
        super().__init__()
        self.rep = rep
        self.image = Log1pStandardize(stats["mean"], stats["std"])
        has_extra = "extra_mean" in stats
        self.register_buffer("extra_mean", torch.as_tensor(
            stats["extra_mean"] if has_extra else np.zeros(0), dtype=torch.float32))
        self.register_buffer("extra_std", torch.as_tensor(
            np.maximum(stats["extra_std"], 1e-3) if has_extra else np.ones(0),
            dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        extra = self.rep.extras(x)
        if extra is not None:
            extra = (extra - self.extra_mean) / self.extra_std
        return self.image(self.rep.image_counts(x)), extra


def _total(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=(1, 2, 3)).clamp(min=1.0)[:, None]


class Log1p(Representation):
    name = "log1p"
    help = "log1p counts, standardised per pixel (the seed's)"


class Normalised(Representation):
    name = "normalised"
    help = "plane / total count (as counts of a 1000-star halo) + log10 total count as an extra"

    def extra_dim(self, n_bins=S.N_BINS):
        return 1

    def image_counts(self, x):
        return REF_COUNT * x / _total(x)[:, :, None, None]

    def extras(self, x):
        return torch.log10(_total(x))


class Log1pMarginals(Representation):
    name = "log1p_marginals"
    help = "log1p counts + the log1p [Fe/H] and [O/Fe] marginals and log10 total as extras"

    def extra_dim(self, n_bins=S.N_BINS):
        return 2 * n_bins + 1

    def extras(self, x):
        return torch.cat([torch.log1p(x.sum(dim=3)[:, 0]), torch.log1p(x.sum(dim=2)[:, 0]),
                          torch.log10(_total(x))], dim=1)


REPRESENTATIONS: dict[str, Representation] = {r.name: r for r in (Log1p(), Normalised(),
                                                                   Log1pMarginals())}


def get_representation(name: str) -> Representation:
    try:
        return REPRESENTATIONS[name]
    except KeyError:
        raise InputError(f"representation must be one of {sorted(REPRESENTATIONS)}, "
                         f"not {name!r}") from None


def check_choice(representation: str, embedding: str) -> None:
    """Raise for an unknown representation or embedding, or one that cannot go together."""
    rep = get_representation(representation)
    if embedding not in EMBEDDINGS:
        raise InputError(f"embedding must be one of {EMBEDDINGS}, not {embedding!r}")
    if embedding == "mlp" and rep.extra_dim() == 0:
        raise InputError(f"embedding 'mlp' reads only the extra features; representation "
                         f"{representation!r} has none (use log1p_marginals or normalised)")


def chunk_statistics(chunks, representation: str) -> dict[str, np.ndarray]:
    """Per-pixel mean/std of log1p of the image counts and mean/std of the extras over an
    iterable of (rows, nb, nb) count blocks, in float64: the statistics ``transform.npz``
    keeps (``mean``, ``std``; ``extra_mean``, ``extra_std`` for representations with extras)."""
    rep = get_representation(representation)
    sums: dict[str, list] = {}
    n = 0
    for block in chunks:
        x = torch.as_tensor(np.asarray(block, dtype=np.float64))[:, None]
        n += len(x)
        extra = rep.extras(x)
        pixels = np.log1p(rep.image_counts(x)[:, 0].numpy())  # numpy's log1p, as ever
        for key, v in (("", pixels), ("extra_", None if extra is None else extra.numpy())):
            if v is None:
                continue
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] = acc[0] + v.sum(axis=0)
            acc[1] = acc[1] + (v ** 2).sum(axis=0)
    out = {}
    for key, (total, total_sq) in sums.items():
        mean = total / n
        out[f"{key}mean"] = mean
        out[f"{key}std"] = np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0))
    return out


class PooledCNN(nn.Module):
    """A small CNN: 3x3 conv + ReLU + 2x2 max-pool per layer, feature maps average-pooled to
    4x4, one linear layer to ``out_dim``."""

    def __init__(self, channels: tuple[int, ...], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * c_in, out_dim), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class PlaneEmbedding(nn.Module):
    """(N, 1, nb, nb) counts -> features: the representation, then the image network (none for
    ``mlp``) with the extras appended (``mlp``: the extras through an MLP)."""

    def __init__(self, representation: nn.Module, image_net: nn.Module | None,
                 extra_net: nn.Module | None = None):
        super().__init__()
        self.representation = representation
        self.image_net = image_net
        self.extra_net = extra_net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image, extra = self.representation(x)
        if self.image_net is None:
            return self.extra_net(extra)
        features = self.image_net(image)
        return features if extra is None else torch.cat([features, extra], dim=1)


def plane_embedding(stats: dict, representation: str, embedding: str,
                    conv_channels: tuple[int, ...], embedding_dim: int) -> nn.Module:
    """The embedding of a flow: the seed's layout (``Log1pStandardize`` then sbi's CNN, in one
    ``nn.Sequential``, so older model folders load) for log1p + cnn; a ``PlaneEmbedding``
    otherwise."""
    from sbi.neural_nets.embedding_nets import CNNEmbedding

    check_choice(representation, embedding)

    def cnn() -> nn.Module:
        return CNNEmbedding(input_shape=(S.N_BINS, S.N_BINS), in_channels=1,
                            out_channels_per_layer=list(conv_channels),
                            num_conv_layers=len(conv_channels), num_linear_layers=2,
                            num_linear_units=embedding_dim, output_dim=embedding_dim)

    if (representation, embedding) == (DEFAULT_REPRESENTATION, DEFAULT_EMBEDDING):
        return nn.Sequential(Log1pStandardize(stats["mean"], stats["std"]), cnn())
    rep = get_representation(representation)
    module = Standardised(rep, stats)
    if embedding == "mlp":
        k = rep.extra_dim()
        mlp = nn.Sequential(nn.Linear(k, embedding_dim), nn.ReLU(),
                            nn.Linear(embedding_dim, embedding_dim), nn.ReLU())
        return PlaneEmbedding(module, None, mlp)
    image_net = cnn() if embedding == "cnn" else PooledCNN(conv_channels, embedding_dim)
    return PlaneEmbedding(module, image_net)


def representation_module(stats: dict, representation: str) -> Standardised:
    """The torch module of a representation (for networks that embed the image themselves)."""
    return Standardised(get_representation(representation), stats)
