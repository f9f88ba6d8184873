"""Composing versioned training sets: a halo is the sum of N_sub building blocks' histograms.

Schemes
-------
``uniform`` (the seed, 3.3): N_sub uniform in [n_sub_min, n_sub_max]; ``train_per_n`` halos per
N_sub for training + validation, ``test_per_n`` for test; members drawn without replacement.
``mass_budget`` (the original CASBI code): building-block stellar masses drawn from a power-law
mass function dN/dM* ~ M*^-alpha; for each draw the block with the nearest log M* (not already
in the halo) joins, until the next one would exceed the stellar-mass budget; N_sub follows.

Leakage control (``split_by``): ``combination`` (no test halo repeats a training halo's set of
members), ``galaxy`` (test blocks are never training blocks), ``simulation`` (no snapshot of a
test simulation is a training block). Validation halos are a random ``val_fraction`` of the
training halos (same pool).

Halos are summed with one sparse selection matrix times the histogram table per chunk of halos;
chunks are written in parallel by Dask, aligned to the Zarr chunks. Where the arrays go, the lock,
the checksum and publishing belong to :mod:`casbi_store.trainingsets`: a version becomes visible
only when it is published, after every array and the checksum.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from . import schema as S
from . import trainingsets
from .binning import Binning, histogram_stack
from .locks import LockHeld
from .provenance import package_versions, utc_now
from .store import StoreError, as_strings, open_stars, open_store, store_attrs

log = logging.getLogger(__name__)

SCHEMES = ("uniform", "mass_budget")
SPLIT_BY = ("combination", "galaxy", "simulation")
PARAMETERS = ((S.MSTAR.name, "Msol"), (S.MDM.name, "Msol"), ("tau", "Gyr"))
VERSION_PATTERN = trainingsets.VERSION_PATTERN


class ComposeError(ValueError):
    """A spec that cannot be composed, or that conflicts with a published version."""


@dataclass(frozen=True)
class ComposeSpec:
    """Everything that defines a training-set version (validated here, once)."""

    name: str
    version: str
    scheme: str = "uniform"
    seed: int = 0
    split_by: str = "combination"
    test_fraction: float = 0.2  # galaxy/simulation splits: share of blocks/simulations for test
    val_fraction: float = 0.2  # share of the training halos kept for validation
    n_sub_min: int = 2  # uniform
    n_sub_max: int = 100
    train_per_n: int = 1000
    test_per_n: int = 100
    alpha: float = 1.25  # mass_budget
    budget: float = 1.41e9
    n_train: int = 10_000
    n_test: int = 1_000
    noise_feh: float = 0.0  # Gaussian error (dex) on each star's [Fe/H] before binning
    noise_ofe: float = 0.0
    description: str = ""

    def __post_init__(self):
        problems = []
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", self.name):
            problems.append(f"name {self.name!r} must be an identifier (letters, digits, _)")
        if not VERSION_PATTERN.match(self.version):
            problems.append(f"version {self.version!r} must look like v1, v2, ...")
        if self.scheme not in SCHEMES:
            problems.append(f"scheme must be one of {SCHEMES}, not {self.scheme!r}")
        if self.split_by not in SPLIT_BY:
            problems.append(f"split_by must be one of {SPLIT_BY}, not {self.split_by!r}")
        if not 0 < self.test_fraction < 1 or not 0 <= self.val_fraction < 1:
            problems.append("test_fraction must be in (0, 1) and val_fraction in [0, 1)")
        if not 1 <= self.n_sub_min <= self.n_sub_max:
            problems.append(f"need 1 <= n_sub_min <= n_sub_max, not {self.n_sub_min}, {self.n_sub_max}")
        if min(self.train_per_n, self.test_per_n, self.n_train, self.n_test) < 1:
            problems.append("halo counts must be positive")
        floats = [f.name for f in fields(self) if f.type == "float"]
        infinite = [k for k in floats if not math.isfinite(getattr(self, k))]
        for key in infinite:
            problems.append(f"{key} must be a finite number, not {getattr(self, key)}")
        if "alpha" not in infinite and "budget" not in infinite and (self.alpha == 1 or self.budget <= 0):
            problems.append("mass_budget needs alpha != 1 and a positive budget")
        for key in ("noise_feh", "noise_ofe"):
            if getattr(self, key) < 0:
                problems.append(f"{key} must be >= 0 dex, not {getattr(self, key)}")
        if problems:
            raise ComposeError("; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict, where: str = "spec") -> ComposeSpec:
        types = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(types)
        if unknown:
            raise ComposeError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(types)}")
        clean = {}
        for key, value in data.items():
            kind = {"int": int, "float": float, "str": str}[types[key]]
            # YAML 1.1 reads 1.41e9 (no '+' in the exponent) as a string: accept numeric text.
            ok = isinstance(value, kind) or (kind is float and isinstance(value, (int, str)))
            try:
                clean[key] = kind(value) if ok and not isinstance(value, bool) else None
            except ValueError:
                clean[key] = None
            if clean[key] is None:
                raise ComposeError(f"{where}: {key} must be {types[key]}, not {value!r}")
        missing = [f.name for f in fields(cls) if f.name in ("name", "version") and f.name not in clean]
        if missing:
            raise ComposeError(f"{where}: missing required key(s) {', '.join(missing)}")
        try:
            return cls(**clean)
        except ComposeError as exc:
            raise ComposeError(f"{where}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ComposeSpec:
        """A spec from a YAML file; every problem is a ComposeError naming the file."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ComposeError(f"{path}: cannot read the spec file ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ComposeError(f"{path}: not valid YAML ({exc})") from None
        if data is None:
            raise ComposeError(f"{path}: empty spec file; a spec needs at least name and version")
        if not isinstance(data, dict):
            raise ComposeError(f"{path}: a spec is a mapping of keys to values, not a "
                               f"{type(data).__name__}")
        return cls.from_dict(data, where=str(path))

    def identity(self) -> dict:
        """What makes two specs the same set (the description does not)."""
        d = asdict(self)
        d.pop("description")
        return d


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


# ---- summing ------------------------------------------------------------------------------------

def members_table(halos: list[np.ndarray], mstar: np.ndarray) -> np.ndarray:
    """(n_halo, max_n_sub) member indices, each row by M* descending, padded with -1."""
    width = max((len(h) for h in halos), default=0)
    table = np.full((len(halos), width), -1, dtype=np.int64)
    for i, h in enumerate(halos):
        table[i, : len(h)] = h[np.argsort(-mstar[h], kind="stable")]
    return table


def selection_matrix(table: np.ndarray, n_galaxies: int):
    """Sparse (n_halo, n_galaxies) matrix with a 1 for every member."""
    from scipy import sparse

    rows, cols = np.nonzero(table >= 0)
    data = np.ones(len(rows), dtype=np.int32)
    return sparse.csr_matrix((data, (rows, table[rows, cols])), shape=(len(table), n_galaxies))


def sum_histograms(table: np.ndarray, hist_csr) -> np.ndarray:
    """x of each halo: the members' histograms summed (int32, shape (n_halo, n_bins**2))."""
    return np.asarray((selection_matrix(table, hist_csr.shape[0]) @ hist_csr).todense(),
                      dtype=np.int32)


def noisy_histograms(table: np.ndarray, stars: dict, offsets: np.ndarray, n_star: np.ndarray,
                     binning: Binning, spec: ComposeSpec, seed: int) -> np.ndarray:
    """x of each halo re-binned from its members' stars with Gaussian abundance errors."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(table), binning.spec.n_bins ** 2), dtype=np.int32)
    for i, row in enumerate(table):
        members = row[row >= 0]
        idx = np.concatenate([np.arange(offsets[m], offsets[m] + n_star[m]) for m in members])
        feh = stars["feh"][idx] + rng.normal(0, spec.noise_feh, len(idx))
        ofe = stars["ofe"][idx] + rng.normal(0, spec.noise_ofe, len(idx))
        counts, _ = histogram_stack(feh, ofe, stars["mass"][idx], np.array([len(idx)]), binning)
        out[i] = counts.reshape(-1)
    return out


# ---- the store ----------------------------------------------------------------------------------

def registry(store: str | os.PathLike, name: str) -> dict[str, dict]:
    """Published versions of one training set (version -> metadata), as on disk now."""
    return trainingsets.versions(store, name, consolidated=False)


def compose(store: str | os.PathLike, spec: ComposeSpec, *, progress: bool = True) -> dict:
    """Compose and publish ``spec`` into ``store``; return the version's registry entry.

    Runs under the lock ``set-<name>-<version>``: a second compose of the same version is refused
    naming the first. The same spec over a published version is a no-op; a different one is
    refused. Arrays are written to a draft that only :meth:`trainingsets.Draft.publish` makes
    visible, so a killed compose leaves nothing visible and a re-run completes it.
    """
    store = os.fspath(store)
    attrs = store_attrs(store)
    record = attrs[S.ATTR_BINNING]
    identity = {"spec": spec.identity(), "binning_version": record["version"]}
    try:
        with trainingsets.begin(store, spec.name, spec.version, identity, record) as draft:
            if draft.published is not None:
                return draft.published
            return _compose_into(draft, store, spec, Binning.from_dict(record), progress)
    except trainingsets.VersionConflict as exc:
        raise ComposeError(str(exc)) from exc
    except LockHeld as exc:
        raise ComposeError(f"{spec.name}:{spec.version} is being composed by another process; "
                           f"{exc}") from exc


def _compose_into(draft: trainingsets.Draft, store: str, spec: ComposeSpec, binning: Binning,
                  progress: bool) -> dict:
    """Draw, sum and write every split into the draft, then publish it."""
    ds = open_store(store)
    mstar = ds[S.MSTAR.name].values
    mdm = ds[S.MDM.name].values
    tau = ds[S.TIME.name].values
    simulation = np.asarray(as_strings(ds[S.SIMULATION.name].values))
    halos = draw_members(spec, simulation, np.log10(mstar))
    nb = binning.spec.n_bins
    counts = ds[S.COUNTS.name].values.reshape(len(mstar), nb * nb)
    from scipy import sparse

    hist_csr = sparse.csr_matrix(counts)
    noise = spec.noise_feh > 0 or spec.noise_ofe > 0
    if noise:
        stars = {k: open_stars(store)[k].values.astype(np.float64) for k in ("feh", "ofe", "mass")}
        offsets, n_star = ds[S.STAR_OFFSET.name].values, ds[S.N_STAR.name].values

    counts_per_split = {}
    for k, split in enumerate(S.SPLITS):
        table = members_table(halos[split], mstar)
        x, x_digests = _lazy_halos(table, hist_csr, nb, noise and (stars, offsets, n_star, binning, spec,
                                                         spec.seed + k))
        theta = np.where(table[..., None] >= 0,
                         np.stack([mstar[table], mdm[table], tau[table]], axis=-1), np.nan)
        out = xr.Dataset(
            {
                S.X.name: ((S.DIM_HALO, S.DIM_FEH_BIN, S.DIM_OFE_BIN), x,
                           {S.ATTR_UNITS: "stars", S.ATTR_DESCRIPTION: S.X.description}),
                S.N_SUB.name: (S.DIM_HALO, (table >= 0).sum(axis=1).astype(np.int32),
                               {S.ATTR_DESCRIPTION: S.N_SUB.description}),
                S.THETA.name: ((S.DIM_HALO, S.DIM_BLOCK, S.DIM_PARAM), theta,
                               {S.ATTR_UNITS: [u for _, u in PARAMETERS],
                                S.ATTR_DESCRIPTION: S.THETA.description}),
                S.MEMBERS.name: ((S.DIM_HALO, S.DIM_BLOCK), table,
                                 {S.ATTR_DESCRIPTION: S.MEMBERS.description}),
            },
            coords={S.DIM_PARAM: np.array([p for p, _ in PARAMETERS], dtype=object),
                    S.FEH_CENTERS.name: ds[S.FEH_CENTERS.name].values,
                    S.OFE_CENTERS.name: ds[S.OFE_CENTERS.name].values},
        )
        chunk = S.HALO_CHUNK
        out = out.chunk({S.DIM_HALO: chunk})  # dask chunks == zarr chunks: aligned parallel writes
        encoding = {S.X.name: {"chunks": (chunk, nb, nb)}, S.N_SUB.name: {"chunks": (chunk,)},
                    S.THETA.name: {"chunks": (chunk, table.shape[1], len(PARAMETERS))},
                    S.MEMBERS.name: {"chunks": (chunk, table.shape[1])}}
        write = draft.write_split(split, out, encoding)
        with _progress(progress, f"{spec.name}:{spec.version} {split}"):
            # one graph: each block of x is computed once, written, and hashed
            _, x_digests = dask.compute(write, x_digests)
        digests = {S.X.name: list(x_digests)}
        for name, values in ((S.N_SUB.name, out[S.N_SUB.name].values),
                             (S.THETA.name, theta), (S.MEMBERS.name, table)):
            digests[name] = [trainingsets.chunk_digest(values[i:i + S.HALO_CHUNK])
                             for i in range(0, len(table), S.HALO_CHUNK)]
        draft.add_digests(split, digests)
        written = draft.rows_written(split)
        if written != len(table):
            raise StoreError(f"{store}: wrote {written} rows of {split}, expected {len(table)}")
        counts_per_split[split] = len(table)
        log.info("%s:%s %s: %d halos", spec.name, spec.version, split, len(table))

    return draft.publish({
        "description": spec.description, "seed": spec.seed, "counts": counts_per_split,
        "parameters": [{"name": p, "units": u} for p, u in PARAMETERS],
        "versions": package_versions(), "created_utc": utc_now(),
    })


def _progress(show: bool, label: str):
    """Dask's progress bar around a write, when wanted."""
    import contextlib

    from dask.diagnostics import ProgressBar

    if not show:
        return contextlib.nullcontext()
    log.info("composing %s", label)
    return ProgressBar(dt=1.0)


def _lazy_halos(table: np.ndarray, hist_csr, nb: int, noise) -> tuple[da.Array, list]:
    """x as a Dask array, one block per Zarr chunk of halos (bounded memory, parallel compute),
    and the delayed digest of each block."""
    hist = dask.delayed(hist_csr, pure=True)
    blocks, digests = [], []
    for start in range(0, len(table), S.HALO_CHUNK):
        part = table[start:start + S.HALO_CHUNK]
        if noise:
            stars, offsets, n_star, binning, spec, seed = noise
            flat = dask.delayed(noisy_histograms)(part, stars, offsets, n_star, binning, spec,
                                                  seed * 1_000_003 + start)
        else:
            flat = dask.delayed(sum_histograms)(part, hist)
        blocks.append(da.from_delayed(flat, shape=(len(part), nb * nb), dtype=np.int32))
        digests.append(dask.delayed(trainingsets.chunk_digest)(flat))
    if not blocks:
        return da.zeros((0, nb, nb), dtype=np.int32), []
    return da.concatenate(blocks).reshape(len(table), nb, nb), digests
