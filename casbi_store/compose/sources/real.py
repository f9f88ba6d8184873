"""The ``real`` source: every block is a store galaxy (the seed's composition, unchanged).

Schemes: ``uniform`` (N_sub uniform in [n_sub_min, n_sub_max], ``train_per_n`` halos per N_sub
for training + validation, ``test_per_n`` for test, members without replacement) and
``mass_budget`` (block masses from a power law dN/dM* ~ M*^-alpha; the block of nearest log M*
joins until the budget is used up). Leakage control by ``split_by``: ``combination``, ``galaxy``,
``simulation``. Validation halos are a random ``val_fraction`` of the training halos, or
(``val_split: simulations``) halos of a ``val_fraction`` of the training simulations set aside.
Training halos may vary their block population (``simulation_dropout``, ``mass_tilt``).
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
    if spec.folds:
        test_sims = sims[np.array_split(perm, spec.folds)[spec.fold]]
    else:
        test_sims = sims[perm[:max(1, round(spec.test_fraction * len(sims)))]]
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


def draw_uniform_varied(pool: np.ndarray, simulation: np.ndarray, log_mstar: np.ndarray,
                        n_sub: int, count: int, dropout: float, tilt: float, rng) -> np.ndarray:
    """As ``draw_uniform``, with the block population varied from halo to halo: each halo leaves
    out every simulation with probability ``dropout`` (their galaxies get keys above every kept
    one's, so they join only where the kept ones are too few), and draws its blocks with weights
    10^(g (log M* - mean)), g uniform in [-tilt, tilt] per halo (Efraimidis-Spirakis keys: a
    weighted draw without replacement), so its mass function leans to light or heavy blocks."""
    if n_sub > len(pool):
        return draw_uniform(pool, n_sub, count, rng)  # its error
    sims, sim_of = np.unique(simulation[pool], return_inverse=True)
    dropped = rng.random((count, len(sims))) < dropout
    u = rng.random((count, len(pool)))
    if tilt:
        lm = log_mstar[pool] - log_mstar[pool].mean()
        g = rng.uniform(-tilt, tilt, size=(count, 1))
        keys = -np.log(np.maximum(u, 1e-300)) * 10.0 ** (-g * lm)  # -log(u) / weight
        keys = keys / (1 + keys)  # into [0, 1): the dropped offset below stays above them all
    else:
        keys = u
    keys = keys + dropped[:, sim_of]
    return pool[np.argpartition(keys, n_sub - 1, axis=1)[:, :n_sub]]


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
    if spec.validates_on_simulations:
        return _draw_with_validation_simulations(spec, simulation, log_mstar, mstar, train_pool,
                                                 test_pool, rng)
    trainval, test = _draw_pools(spec, simulation, log_mstar, train_pool, test_pool, rng,
                                 spec.train_per_n, spec.n_train)
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
            "test": _fill_table(test, _all(test), mstar)}


def _all(blocks: list[np.ndarray]) -> np.ndarray:
    return np.ones(sum(len(b) for b in blocks), dtype=bool)


def _small(simulation: np.ndarray):
    return np.int32 if len(simulation) < 2**31 else np.int64


def _draw_pools(spec: ComposeSpec, simulation: np.ndarray, log_mstar: np.ndarray,
                first_pool: np.ndarray, test_pool: np.ndarray, rng, per_n: int, n_total: int
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Blocks of halos of the first pool (``per_n`` per N_sub, or ``n_total`` by mass budget;
    with the spec's ``simulation_dropout`` and ``mass_tilt``) and of the test pool, in the order
    the seed fixes."""
    small = _small(simulation)
    first: list[np.ndarray] = []
    test: list[np.ndarray] = []
    varied = spec.simulation_dropout or spec.mass_tilt
    if spec.scheme == "uniform":
        for n_sub in range(spec.n_sub_min, spec.n_sub_max + 1):
            halos = (draw_uniform_varied(first_pool, simulation, log_mstar, n_sub, per_n,
                                         spec.simulation_dropout, spec.mass_tilt, rng)
                     if varied else draw_uniform(first_pool, n_sub, per_n, rng))
            first.append(halos.astype(small))
            test.append(draw_uniform(test_pool, n_sub, spec.test_per_n, rng).astype(small))
    else:
        first = [h[None].astype(small) for h in
                 draw_mass_budget(first_pool, log_mstar, spec, n_total, rng)]
        test = [h[None].astype(small) for h in
                draw_mass_budget(test_pool, log_mstar, spec, spec.n_test, rng)]
    return first, test


def _draw_with_validation_simulations(spec: ComposeSpec, simulation: np.ndarray,
                                      log_mstar: np.ndarray, mstar: np.ndarray,
                                      train_pool: np.ndarray, test_pool: np.ndarray, rng
                                      ) -> dict[str, np.ndarray]:
    """Train, validation and test halos from three disjoint sets of simulations: a
    ``val_fraction`` of the training simulations holds the validation halos (as many as the
    halo split would give: ``val_fraction`` of ``train_per_n`` per N_sub, or of ``n_train``)."""
    sims = np.unique(simulation[train_pool])
    n_val_sims = max(1, round(spec.val_fraction * len(sims)))
    if n_val_sims >= len(sims):
        raise ComposeError(f"val_split simulations: {len(sims)} training simulations cannot give "
                           f"{n_val_sims} to validation and keep some for training")
    if spec.val_split == "simulations_by_mass":  # every k-th by mass: the range spanned
        pool_sims, pool_mstar = simulation[train_pool], mstar[train_pool]
        top = np.array([pool_mstar[pool_sims == s].max() for s in sims])
        order = sims[np.argsort(top, kind="stable")]
        step = len(sims) / n_val_sims
        val_sims = order[(rng.uniform(0, step) + step * np.arange(n_val_sims)).astype(int)]
    else:
        val_sims = sims[rng.permutation(len(sims))[:n_val_sims]]
    is_val = np.isin(simulation[train_pool], val_sims)
    val_pool, fit_pool = train_pool[is_val], train_pool[~is_val]
    n_val_per = round(spec.val_fraction * spec.train_per_n)
    n_val_total = round(spec.val_fraction * spec.n_train)
    train, test = _draw_pools(spec, simulation, log_mstar, fit_pool, test_pool, rng,
                              spec.train_per_n - n_val_per, spec.n_train - n_val_total)
    small = _small(simulation)
    if spec.scheme == "uniform":
        val = [draw_uniform(val_pool, n_sub, n_val_per, rng).astype(small)
               for n_sub in range(spec.n_sub_min, spec.n_sub_max + 1)] if n_val_per else []
    else:
        val = [h[None].astype(small) for h in
               draw_mass_budget(val_pool, log_mstar, spec, n_val_total, rng)] if n_val_total else []
    return {"train": _fill_table(train, _all(train), mstar), "val": _fill_table(val, _all(val), mstar),
            "test": _fill_table(test, _all(test), mstar)}


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
