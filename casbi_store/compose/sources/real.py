"""The ``real`` source: every block is a store galaxy (the seed's composition, unchanged).

Schemes: ``uniform`` (N_sub uniform in [n_sub_min, n_sub_max], ``train_per_n`` halos per N_sub
for training + validation, ``test_per_n`` for test, members without replacement) and
``mass_budget`` (block masses from a power law dN/dM* ~ M*^-alpha; the block of nearest log M*
joins until the budget is used up). Leakage control by ``split_by``: ``combination``, ``galaxy``,
``simulation``. Validation halos are a random ``val_fraction`` of the training halos, or
(``val_split: simulations``) halos of a ``val_fraction`` of the training simulations set aside.
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
    if spec.folds:
        test_sims = sims[np.array_split(perm, spec.folds)[spec.fold]]
    else:
        test_sims = sims[perm[:max(1, round(spec.test_fraction * len(sims)))]]
    is_test = np.isin(simulation, test_sims)
    return everything[~is_test], everything[is_test]


def draw_uniform(pool: np.ndarray, n_sub: int, count: int, rng) -> np.ndarray:
    """``count`` halos of ``n_sub`` distinct members from ``pool``: shape (count, n_sub)."""
    if n_sub > len(pool):
        raise ComposeError(f"N_sub = {n_sub} needs {n_sub} building blocks but the pool has "
                           f"{len(pool)}; lower n_sub_max or use a split that keeps more blocks")
    keys = rng.random((count, len(pool)))
    return pool[np.argpartition(keys, n_sub - 1, axis=1)[:, :n_sub]]


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
    return np.sort(members).astype(np.int64).tobytes()


def draw_members(spec: ComposeSpec, simulation: np.ndarray, log_mstar: np.ndarray
                 ) -> dict[str, list[np.ndarray]]:
    """Members of every halo of every split, deterministic in the spec and seed."""
    rng = np.random.default_rng(spec.seed)
    train_pool, test_pool = split_pools(simulation, spec, rng)
    if spec.val_split == "simulations":
        return _draw_with_validation_simulations(spec, simulation, log_mstar, train_pool,
                                                 test_pool, rng)
    trainval, test = _draw_pools(spec, log_mstar, train_pool, test_pool, rng,
                                 spec.train_per_n, spec.n_train, simulation)
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


def _draw_pools(spec: ComposeSpec, log_mstar: np.ndarray, train_pool: np.ndarray,
                test_pool: np.ndarray, rng, per_n: int, n_total: int, simulation: np.ndarray
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Halos of the first pool (``per_n`` per N_sub, or ``n_total`` by mass budget; with the
    spec's ``simulation_dropout``) and the test pool's, in the order the seed fixes."""
    first: list[np.ndarray] = []
    test: list[np.ndarray] = []
    if spec.scheme == "uniform":
        for n_sub in range(spec.n_sub_min, spec.n_sub_max + 1):
            if spec.simulation_dropout or spec.mass_tilt:
                first.extend(draw_uniform_varied(train_pool, simulation, log_mstar, n_sub, per_n,
                                                 spec.simulation_dropout, spec.mass_tilt, rng))
            else:
                first.extend(draw_uniform(train_pool, n_sub, per_n, rng))
            test.extend(draw_uniform(test_pool, n_sub, spec.test_per_n, rng))
    else:
        first = draw_mass_budget(train_pool, log_mstar, spec, n_total, rng)
        test = draw_mass_budget(test_pool, log_mstar, spec, spec.n_test, rng)
    return first, test


def _draw_with_validation_simulations(spec: ComposeSpec, simulation: np.ndarray,
                                      log_mstar: np.ndarray, train_pool: np.ndarray,
                                      test_pool: np.ndarray, rng) -> dict[str, list[np.ndarray]]:
    """Train, validation and test halos from three disjoint sets of simulations: a
    ``val_fraction`` of the training simulations holds the validation halos (as many as the
    halo split would give: ``val_fraction`` of ``train_per_n`` per N_sub, or of ``n_train``)."""
    sims = np.unique(simulation[train_pool])
    n_val_sims = max(1, round(spec.val_fraction * len(sims)))
    if n_val_sims >= len(sims):
        raise ComposeError(f"val_split simulations: {len(sims)} training simulations cannot give "
                           f"{n_val_sims} to validation and keep some for training")
    val_sims = sims[rng.permutation(len(sims))[:n_val_sims]]
    is_val = np.isin(simulation[train_pool], val_sims)
    val_pool, fit_pool = train_pool[is_val], train_pool[~is_val]
    n_val_per = round(spec.val_fraction * spec.train_per_n)
    n_val_total = round(spec.val_fraction * spec.n_train)
    train, test = _draw_pools(spec, log_mstar, fit_pool, test_pool, rng,
                              spec.train_per_n - n_val_per, spec.n_train - n_val_total, simulation)
    if spec.scheme == "uniform":
        val = [h for n_sub in range(spec.n_sub_min, spec.n_sub_max + 1)
               for h in draw_uniform(val_pool, n_sub, n_val_per, rng)] if n_val_per else []
    else:
        val = draw_mass_budget(val_pool, log_mstar, spec, n_val_total, rng) if n_val_total else []
    return {"train": train, "val": val, "test": test}


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
