"""The ``real`` source: every block is a store galaxy (the seed's composition, unchanged).

Schemes: ``uniform`` (N_sub uniform in [n_sub_min, n_sub_max], ``train_per_n`` halos per N_sub
for training + validation, ``test_per_n`` for test, members without replacement) and
``mass_budget`` (block masses from a power law dN/dM* ~ M*^-alpha; the block of nearest log M*
joins until the budget is used up). Leakage control by ``split_by``: ``combination``, ``galaxy``,
``simulation``. Validation halos are a random ``val_fraction`` of the training halos.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from .base import PAD, ComposeError, Galaxies, Halos, Source, register

if TYPE_CHECKING:
    from casbi_store.compose.spec import ComposeSpec

    from .library import BlockLibrary


# ---- drawing members ----------------------------------------------------------------------------

def split_pools(simulation: np.ndarray, spec: ComposeSpec, rng) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the galaxies that may appear in training (and validation) and in test."""
    n = len(simulation)
    everything = np.arange(n)
    if spec.split_by == "combination":
        return everything, everything
    if spec.split_by == "galaxy":
        perm = rng.permutation(n)
        n_test = max(1, round(spec.test_fraction * n))
        return np.sort(perm[n_test:]), np.sort(perm[:n_test])
    sims = np.unique(simulation)
    perm = rng.permutation(len(sims))
    n_test = max(1, round(spec.test_fraction * len(sims)))
    test_sims = sims[perm[:n_test]]
    is_test = np.isin(simulation, test_sims)
    return everything[~is_test], everything[is_test]


KEYS_PER_CHUNK = 1 << 22  # random sort keys drawn at once (32 MB): draw_uniform's memory bound


def draw_uniform(pool: np.ndarray, n_sub: int, count: int, rng) -> np.ndarray:
    """``count`` halos of ``n_sub`` distinct members from ``pool``: shape (count, n_sub).

    Each halo's members are the ``n_sub`` smallest of one row of random keys, one key per pool
    block; the keys are drawn a chunk of rows at a time (the same stream, so the same halos as
    drawing them at once), never a (count, pool) matrix."""
    if n_sub > len(pool):
        raise ComposeError(f"N_sub = {n_sub} needs {n_sub} building blocks but the pool has "
                           f"{len(pool)}; lower n_sub_max or use a split that keeps more blocks")
    out = np.empty((count, n_sub), dtype=pool.dtype)
    step = max(1, KEYS_PER_CHUNK // max(len(pool), 1))
    for start in range(0, count, step):
        keys = rng.random((min(step, count - start), len(pool)))
        out[start:start + len(keys)] = pool[np.argpartition(keys, n_sub - 1, axis=1)[:, :n_sub]]
    return out


def draw_mass_budget(pool: np.ndarray, log_mstar: np.ndarray, spec: ComposeSpec, count: int,
                     rng) -> list[np.ndarray]:
    """Halos filled from a power-law stellar-mass function until the budget is used up."""
    lm = log_mstar[pool]
    lo, hi = 10 ** lm.min(), 10 ** lm.max()
    a = 1 - spec.alpha
    if 10 ** lm.min() > spec.budget:
        raise ComposeError(f"every building block is heavier than the budget {spec.budget:.3g} Msun")
    halos = []
    while len(halos) < count:
        members: list[int] = []
        total = 0.0
        used = np.zeros(len(pool), dtype=bool)
        while len(members) < len(pool):
            u = rng.random()
            target = np.log10((lo**a + u * (hi**a - lo**a)) ** (1 / a))
            dist = np.where(used, np.inf, np.abs(lm - target))
            k = int(np.argmin(dist))
            mass = 10 ** lm[k]
            if total + mass > spec.budget:
                break
            used[k] = True
            members.append(int(pool[k]))
            total += mass
        if len(members) >= 1:
            halos.append(np.array(members))
    return halos


def _set_key(members: np.ndarray) -> bytes:
    """A halo's set of members, order aside: 16 bytes of a hash of its sorted indices (the full
    ~400 bytes per halo, for a million training halos, would be a set of 0.5 GB)."""
    return hashlib.blake2b(np.sort(members).astype(np.int64).tobytes(), digest_size=16).digest()


def draw_members(spec: ComposeSpec, simulation: np.ndarray, log_mstar: np.ndarray,
                 mstar: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Member tables of every split (:func:`members_table`: each row by M* descending, padded),
    deterministic in the spec and seed.

    Halos are kept as blocks of rows (one (count, N_sub) int32 block per N_sub of the uniform
    scheme) until the validation rows are known, then written straight into each split's table:
    no per-halo arrays, no list of them (at 1e6 halos these held ~1 GB besides the tables)."""
    mstar = 10.0 ** log_mstar if mstar is None else mstar
    rng = np.random.default_rng(spec.seed)
    train_pool, test_pool = split_pools(simulation, spec, rng)
    small = np.int32 if len(simulation) < 2**31 else np.int64
    trainval: list[np.ndarray] = []
    test: list[np.ndarray] = []
    if spec.scheme == "uniform":
        for n_sub in range(spec.n_sub_min, spec.n_sub_max + 1):
            trainval.append(draw_uniform(train_pool, n_sub, spec.train_per_n, rng).astype(small))
            test.append(draw_uniform(test_pool, n_sub, spec.test_per_n, rng).astype(small))
    else:
        trainval = [h[None].astype(small) for h in
                    draw_mass_budget(train_pool, log_mstar, spec, spec.n_train, rng)]
        test = [h[None].astype(small) for h in
                draw_mass_budget(test_pool, log_mstar, spec, spec.n_test, rng)]
    if spec.split_by == "combination":  # no test halo may repeat a training halo's members
        seen = {_set_key(row) for block in trainval for row in block}
        for block in test:
            for i, members in enumerate(block):
                tries = 0
                while _set_key(members) in seen:
                    tries += 1
                    if tries > 1000:
                        raise ComposeError(f"cannot draw a test halo of {len(members)} blocks "
                                           "that differs from every training halo")
                    members = draw_uniform(test_pool, len(members), 1, rng)[0]
                block[i] = members
        del seen
    n_trainval = sum(len(b) for b in trainval)
    order = rng.permutation(n_trainval)
    is_val = np.zeros(n_trainval, dtype=bool)
    is_val[order[:round(spec.val_fraction * n_trainval)]] = True
    return {"train": _fill_table(trainval, ~is_val, mstar),
            "val": _fill_table(trainval, is_val, mstar),
            "test": _fill_table(test, np.ones(sum(len(b) for b in test), dtype=bool), mstar)}


def _fill_table(blocks: list[np.ndarray], keep: np.ndarray, mstar: np.ndarray) -> np.ndarray:
    """The member table (:func:`members_table`) of the rows ``keep`` selects, in order, of the
    halos stacked in ``blocks``, filled one block at a time."""
    lengths = np.concatenate([np.full(len(b), b.shape[1]) for b in blocks]) if blocks else \
        np.zeros(0, dtype=np.int64)
    width = int(lengths[keep].max(initial=0))
    table = np.full((int(keep.sum()), width), PAD, dtype=np.int64)
    dest = np.cumsum(keep) - 1  # row of each kept halo in the table
    start = 0
    for block in blocks:
        rows = keep[start:start + len(block)]
        if rows.any() and block.shape[1]:
            picked = block[rows].astype(np.int64)
            by_mass = np.argsort(-mstar[picked], axis=1, kind="stable")
            table[dest[start:start + len(block)][rows], :block.shape[1]] = \
                np.take_along_axis(picked, by_mass, axis=1)
        start += len(block)
    return table


def members_table(halos: list[np.ndarray], mstar: np.ndarray) -> np.ndarray:
    """(n_halo, max_n_sub) member indices, each row by M* descending, padded with -1."""
    return _fill_table([h[None] for h in halos], np.ones(len(halos), dtype=bool), mstar)


class BlockTheta:
    """θ of halos of store galaxies, (n_halo, width, 3) float64 (M*, M_dm, tau; NaN at PAD),
    computed from the member table for the rows read instead of held: the Zarr write and the
    digests read it a chunk of halos at a time (at 1e6 halos x 100 blocks the whole table is
    2.4 GB). Indexing (rows, then blocks and parameters) and ``np.asarray`` give NumPy arrays."""

    def __init__(self, members: np.ndarray, galaxies: Galaxies):
        self.members = members
        self.values = np.column_stack([galaxies.mstar, galaxies.mdm, galaxies.tau]).astype(np.float64)
        self.shape = members.shape + (3,)
        self.dtype = np.dtype(np.float64)
        self.ndim = 3

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows = self.members[key[:2]] if len(key) > 1 else self.members[key[0]]
        out = np.where((rows >= 0)[..., None], self.values[np.maximum(rows, 0)], np.nan)
        return out[..., key[2]] if len(key) > 2 else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)

    def copy(self) -> np.ndarray:
        return self[:]


def real_halos(members: np.ndarray, galaxies: Galaxies) -> Halos:
    """Halos of store galaxies from their member table; θ read from the galaxies table on demand
    (:class:`BlockTheta`)."""
    return Halos(members, BlockTheta(members, galaxies))


@register
class RealSource(Source):
    name = "real"
    help = "every block a store galaxy (the seed's composition)"

    def draw(self, spec: ComposeSpec, galaxies: Galaxies,
             library: BlockLibrary | None = None) -> dict[str, Halos]:
        tables = draw_members(spec, galaxies.simulation, np.log10(galaxies.mstar), galaxies.mstar)
        return {split: real_halos(table, galaxies) for split, table in tables.items()}
