"""The ``real`` source: every block is a store galaxy (the seed's composition, unchanged).

Schemes: ``uniform`` (N_sub uniform in [n_sub_min, n_sub_max], ``train_per_n`` halos per N_sub
for training + validation, ``test_per_n`` for test, members without replacement) and
``mass_budget`` (block masses from a power law dN/dM* ~ M*^-alpha; the block of nearest log M*
joins until the budget is used up). Leakage control by ``split_by``: ``combination``, ``galaxy``,
``simulation``. Validation halos are a random ``val_fraction`` of the training halos.
"""

from __future__ import annotations

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


def draw_uniform(pool: np.ndarray, n_sub: int, count: int, rng) -> np.ndarray:
    """``count`` halos of ``n_sub`` distinct members from ``pool``: shape (count, n_sub)."""
    if n_sub > len(pool):
        raise ComposeError(f"N_sub = {n_sub} needs {n_sub} building blocks but the pool has "
                           f"{len(pool)}; lower n_sub_max or use a split that keeps more blocks")
    keys = rng.random((count, len(pool)))
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
    return np.sort(members).astype(np.int64).tobytes()


def draw_members(spec: ComposeSpec, simulation: np.ndarray, log_mstar: np.ndarray
                 ) -> dict[str, list[np.ndarray]]:
    """Members of every halo of every split, deterministic in the spec and seed."""
    rng = np.random.default_rng(spec.seed)
    train_pool, test_pool = split_pools(simulation, spec, rng)
    trainval: list[np.ndarray] = []
    test: list[np.ndarray] = []
    if spec.scheme == "uniform":
        for n_sub in range(spec.n_sub_min, spec.n_sub_max + 1):
            trainval.extend(draw_uniform(train_pool, n_sub, spec.train_per_n, rng))
            test.extend(draw_uniform(test_pool, n_sub, spec.test_per_n, rng))
    else:
        trainval = draw_mass_budget(train_pool, log_mstar, spec, spec.n_train, rng)
        test = draw_mass_budget(test_pool, log_mstar, spec, spec.n_test, rng)
    if spec.split_by == "combination":  # no test halo may repeat a training halo's members
        seen = {_set_key(m) for m in trainval}
        for i, members in enumerate(test):
            tries = 0
            while _set_key(members) in seen:
                tries += 1
                if tries > 1000:
                    raise ComposeError(f"cannot draw a test halo of {len(members)} blocks that "
                                       "differs from every training halo")
                members = draw_uniform(test_pool, len(members), 1, rng)[0]
            test[i] = members
    order = rng.permutation(len(trainval))
    n_val = round(spec.val_fraction * len(trainval))
    return {"train": [trainval[i] for i in np.sort(order[n_val:])],
            "val": [trainval[i] for i in np.sort(order[:n_val])],
            "test": test}


def members_table(halos: list[np.ndarray], mstar: np.ndarray) -> np.ndarray:
    """(n_halo, max_n_sub) member indices, each row by M* descending, padded with -1."""
    width = max((len(h) for h in halos), default=0)
    table = np.full((len(halos), width), PAD, dtype=np.int64)
    for i, h in enumerate(halos):
        table[i, : len(h)] = h[np.argsort(-mstar[h], kind="stable")]
    return table


def real_halos(members: list[np.ndarray], galaxies: Galaxies) -> Halos:
    """Halos of store galaxies: members by M* descending, their θ from the galaxies table."""
    table = members_table(members, galaxies.mstar)
    # filled in place, one parameter at a time: no (n_halo, width, 3) temporaries, which at the
    # seed's size (1e6 halos x 100 blocks) were 2.4 GB each
    theta = np.full(table.shape + (3,), np.nan)
    valid = table >= 0
    rows = table[valid]
    for k, values in enumerate((galaxies.mstar, galaxies.mdm, galaxies.tau)):
        theta[..., k][valid] = values[rows]
    return Halos(table, theta)


@register
class RealSource(Source):
    name = "real"
    help = "every block a store galaxy (the seed's composition)"

    def draw(self, spec: ComposeSpec, galaxies: Galaxies,
             library: BlockLibrary | None = None) -> dict[str, Halos]:
        halos = draw_members(spec, galaxies.simulation, np.log10(galaxies.mstar))
        return {split: real_halos(members, galaxies) for split, members in halos.items()}
