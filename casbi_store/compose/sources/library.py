"""A library of surrogate building blocks, sampled once per composition.

The flow draws ~10^5 stars per second on one thread, so sampling every surrogate block of a
training set afresh costs seconds per halo at the seed's scale (mean N_sub 51, thousands of stars
per block). Instead a composition draws ``size`` θ from the surrogate's prior (cheap), its halos
pick their surrogate blocks among those entries (distinct within a halo), and only the entries
actually picked are sampled, once, in one pass of the flow per chunk of entries. Summing a halo
is then the sparse gather-sum of real sets. A set needing fewer blocks than ``size`` samples at
most as many blocks as before; a larger one reuses entries, as real sets reuse the suite's
galaxies (the library is ``size`` distinct blocks where the suite has its snapshots).

Deterministic in ``seed``: the θ of entry k and the stars of the entries picked in each chunk of
:data:`CHUNK` entries depend on ``(seed, chunk)`` only.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .base import linear_theta

if TYPE_CHECKING:
    from casbi_store.store.binning import Binning
    from casbi_store.surrogate import Surrogate

log = logging.getLogger(__name__)

CHUNK = 256  # entries sampled per flow pass (one seed each)


_SAMPLING = threading.Lock()


def sample_block_stars(surrogate: Surrogate, theta_log: np.ndarray, seed
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Stars of surrogate blocks (concatenated, (n, 2) [Fe/H], [O/Fe]) and each block's count."""
    counts = surrogate.n_stars(theta_log)
    with _SAMPLING:
        stars = surrogate.sample_stars(theta_log, counts, np.random.default_rng(seed))
    return stars, counts


@dataclass
class BlockLibrary:
    """``size`` surrogate blocks: θ of every entry (linear units, as in ``theta``) drawn from the
    prior; stars and histograms of the entries picked, after :meth:`sample`."""

    surrogate: Surrogate
    seed: int
    theta: np.ndarray  # (size, 3) M*, M_dm, tau
    theta_log: np.ndarray  # (size, 3) log10 M*, log10 M_dm, tau
    stars: np.ndarray | None = None  # (sum n_star of picked entries, 2) [Fe/H], [O/Fe] float32
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per entry
    n_star: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # 0 if not picked
    counts: object = None  # scipy CSR (size, n_bins**2) int32 histograms; empty rows not picked
    seconds: float = 0.0

    @classmethod
    def draw(cls, surrogate: Surrogate, size: int, seed: int) -> BlockLibrary:
        """θ of ``size`` entries from the surrogate's prior (nothing sampled from the flow yet)."""
        theta_log = surrogate.prior.sample(size, np.random.default_rng([seed, 0]))
        return cls(surrogate, seed, linear_theta(theta_log), np.asarray(theta_log, np.float64))

    @property
    def size(self) -> int:
        return len(self.theta)

    def sample(self, picked: np.ndarray, binning: Binning, progress: bool = False) -> None:
        """Sample the stars of the ``picked`` entries (any order, repeats fine) and bin them."""
        from scipy import sparse

        from casbi_store.store.binning import histogram_stack


        start = time.perf_counter()
        used = np.unique(np.asarray(picked, dtype=np.int64))
        n_star = np.zeros(self.size, dtype=np.int64)
        parts: list[np.ndarray] = []
        chunks = np.unique(used // CHUNK)
        for i, c in enumerate(chunks):
            entries = used[used // CHUNK == c]
            stars, counts = sample_block_stars(self.surrogate, self.theta_log[entries],
                                               [self.seed, 1, int(c)])
            n_star[entries] = counts
            parts.append(stars)
            if progress and (i + 1) % 4 == 0:
                log.info("surrogate library: %d of %d chunks sampled", i + 1, len(chunks))
        # entries in ascending order: the concatenation follows ``used``
        self.stars = np.concatenate(parts) if parts else np.zeros((0, 2), np.float32)
        self.n_star = n_star
        self.offsets = np.concatenate([[0], np.cumsum(n_star)[:-1]]).astype(np.int64)
        hist, _ = histogram_stack(self.stars[:, 0], self.stars[:, 1],
                                  np.ones(len(self.stars), np.float32), n_star[used], binning)
        nb = binning.spec.n_bins
        rows = np.zeros((self.size, nb * nb), dtype=np.int32)
        rows[used] = hist.reshape(len(used), nb * nb)
        self.counts = sparse.csr_matrix(rows)
        self.seconds = time.perf_counter() - start
        log.info("surrogate library: %d of %d entries sampled (%d stars) in %.1f s", len(used),
                 self.size, len(self.stars), self.seconds)

    def block_stars(self, entry: int) -> np.ndarray:
        """(n, 2) [Fe/H], [O/Fe] of one sampled entry."""
        return self.stars[self.offsets[entry]:self.offsets[entry] + self.n_star[entry]]

    def provenance(self) -> dict:
        return {"size": self.size, "sampled": int((self.n_star > 0).sum()),
                "stars": int(self.n_star.sum()), "seed": self.seed}


def pick_distinct(size: int, per_halo: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """For each halo, ``per_halo[i]`` distinct entries of a library of ``size`` (uniformly)."""
    out = []
    for k in np.asarray(per_halo, dtype=np.int64):
        out.append(rng.choice(size, size=int(k), replace=False) if k else np.zeros(0, np.int64))
    return out
