"""Chunk tasks: the per-star and histogram chunks of a commit, written where the work runs.

An extraction commit used to read every staged star array into the client and write the star
table, the binning's percentiles and the histograms from there: one core for all of it. Here
each chunk of ``stars`` (2^20 rows) and of ``histograms/counts``/``mass_weighted`` (256 galaxies)
is one task that builds its chunk's values from the staged outcomes (or the store), writes the
chunk file itself (whole, through zarr: a temporary file and a rename) and returns only the
chunk's digest; the percentile ranges come from a tree reduction of each chunk's extreme
values. Chunks are disjoint, so tasks need no coordination; the client resizes the arrays'
metadata first and publishes at the end (:mod:`casbi_store.store.commit`), so nothing a task
writes is visible before the commit, and a killed commit is rolled back as before (chunks past
the committed shapes deleted; the committed rows of a rewritten last chunk are the same values).

:class:`ChunkRunner` runs the tasks on a Dask client's workers (which must see the store's
folder: the shared file system extraction already stages on) or, without one, in this process,
where every chunk write is a counted write point of the kill harness.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import reduce

import numpy as np
import zarr

from . import commit
from . import schema as S
from .binning import Binning, BinningSpec, histogram_stack

WRITE_CONFIG = {"write_empty_chunks": True}  # as the xarray writes of the store (a chunk per key)


class ChunkRunner:
    """Runs chunk tasks: ``client`` (a ``distributed.Client``) maps them on its workers;
    without one they run here, one after the other."""

    def __init__(self, client=None):
        self.client = client

    def map(self, fn, items: list, *args) -> list:
        if not items:
            return []
        if self.client is None:
            return [fn(item, *args) for item in items]
        futures = self.client.map(fn, items, *[[a] * len(items) for a in args], pure=False)
        return self.client.gather(futures)

    def extremes(self, fn, items: list, *args) -> dict:
        """``fn(item, *args)`` gives each item's :func:`extreme_values`; merged here by a tree
        reduction on the workers, so the client receives one partial, never one per chunk."""
        if self.client is None:
            return reduce(merge_extremes, (fn(item, *args) for item in items))
        level = self.client.map(fn, items, *[[a] * len(items) for a in args], pure=False)
        while len(level) > 1:
            pairs = [level[i:i + 2] for i in range(0, len(level), 2)]
            level = [self.client.submit(merge_extremes, *p, pure=False) if len(p) == 2 else p[0]
                     for p in pairs]
        return level[0].result()


# ---- exact percentiles from order statistics ----------------------------------------------------

@dataclass(frozen=True)
class Ranks:
    """The order statistics ``np.percentile(x, percentiles)`` (method 'linear') reads from
    ``n`` values: ``low`` smallest and ``high`` largest values hold them all."""

    n: int
    percentiles: tuple[float, ...]
    low: int
    high: int

    @classmethod
    def of(cls, n: int, percentiles) -> Ranks:
        previous, following, _ = _virtual(n, percentiles)
        ranks = np.concatenate([previous, following])
        low = ranks[ranks < n / 2]
        high = ranks[ranks >= n / 2]
        return cls(n, tuple(float(p) for p in percentiles),
                   int(low.max()) + 1 if low.size else 0, int(n - high.min()) if high.size else 0)


def _virtual(n: int, percentiles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy's virtual index, neighbours and weight for method 'linear' (``_quantile``)."""
    q = np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    virtual = (n - 1) * q
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= n - 1
    previous[above] = following[above] = n - 1
    below = virtual < 0
    previous[below] = following[below] = 0
    gamma = virtual - np.floor(virtual)
    return previous.astype(np.intp), following.astype(np.intp), gamma


def extreme_values(values: np.ndarray, ranks: Ranks) -> dict:
    """The ``ranks.low`` smallest and ``ranks.high`` largest of ``values`` (unsorted)."""
    values = np.asarray(values)
    n = len(values)
    low = (values[:0] if ranks.low == 0 else values if n <= ranks.low
           else np.partition(values, ranks.low - 1)[:ranks.low])
    high = (values[:0] if ranks.high == 0 else values if n <= ranks.high
            else np.partition(values, n - ranks.high)[n - ranks.high:])
    return {"ranks": ranks, "low": np.array(low), "high": np.array(high)}


def merge_extremes(a: dict, b: dict) -> dict:
    if isinstance(a.get("ranks"), Ranks):
        ranks = a["ranks"]
        return extreme_values_pair(np.concatenate([a["low"], b["low"]]),
                                   np.concatenate([a["high"], b["high"]]), ranks)
    return {key: merge_extremes(a[key], b[key]) for key in a}


def extreme_values_pair(low: np.ndarray, high: np.ndarray, ranks: Ranks) -> dict:
    return {"ranks": ranks, "low": extreme_values(low, ranks)["low"],
            "high": extreme_values(high, ranks)["high"]}


def percentiles_from_extremes(part: dict) -> np.ndarray:
    """``np.percentile(all values as float64, percentiles)``, bit for bit, from the merged
    extremes of every chunk (tested against numpy)."""
    ranks: Ranks = part["ranks"]
    n = ranks.n
    low = np.sort(part["low"]).astype(np.float64)
    high = np.sort(part["high"]).astype(np.float64)

    def value(rank: np.ndarray) -> np.ndarray:
        return np.array([low[r] if r < n / 2 else high[r - (n - len(high))] for r in rank],
                        dtype=np.float64)

    previous, following, gamma = _virtual(n, ranks.percentiles)
    a, b = value(previous), value(following)
    diff = b - a  # numpy's _lerp, its two branches as it takes them
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5)
    return out


def resolve_ranges(spec: BinningSpec, part: dict) -> Binning:
    """``binning.resolve_binning`` of all stored stars, from their merged extremes."""
    feh_lo, feh_hi = percentiles_from_extremes(part[S.FEH.name])
    ofe_lo, ofe_hi = percentiles_from_extremes(part[S.OFE.name])
    if not (feh_lo < feh_hi and ofe_lo < ofe_hi):
        raise ValueError(f"degenerate ranges [Fe/H] {feh_lo, feh_hi}, [O/Fe] {ofe_lo, ofe_hi}")
    return Binning(spec, (float(feh_lo), float(feh_hi)), (float(ofe_lo), float(ofe_hi)))


# ---- star chunks ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StarChunk:
    """Rows ``start:stop`` of the star table (one chunk): rows before ``keep`` are committed and
    read from the store, the others come from staged outcomes, ``(file, lo, hi, at)``: rows
    ``lo:hi`` of the file's arrays go to row ``at``."""

    root: str
    start: int
    stop: int
    keep: int
    sources: tuple[tuple[str, int, int, int], ...]


def _open(root: str, path: str, counted: bool = True, mode: str = "r+"):
    from zarr.storage import LocalStore

    store = commit.local_store(root, record=False) if counted else LocalStore(root,
                                                                                read_only=True)
    return zarr.open_array(store, path=path, mode=mode, zarr_format=S.ZARR_FORMAT,
                           config=WRITE_CONFIG)


def _chunk_key(arr, index: tuple[int, ...]) -> str:
    sep = getattr(arr.metadata, "dimension_separator", None) or "."
    return sep.join(map(str, index))


def write_star_chunk(chunk: StarChunk) -> dict[str, dict[str, str]]:
    """Build one chunk of every star array, write it, and return its digests."""
    values = {f.name: np.empty(chunk.stop - chunk.start, dtype=f.dtype) for f in S.STAR_FIELDS}
    if chunk.keep > chunk.start:
        for f in S.STAR_FIELDS:
            values[f.name][:chunk.keep - chunk.start] = _open(
                chunk.root, f"{S.STARS}/{f.name}", counted=False, mode="r")[chunk.start:chunk.keep]
    for file, lo, hi, at in chunk.sources:
        with np.load(file) as staged:
            for f in S.STAR_FIELDS:
                values[f.name][at - chunk.start:at - chunk.start + hi - lo] = staged[f.name][lo:hi]
    out = {}
    for f in S.STAR_FIELDS:
        arr = _open(chunk.root, f"{S.STARS}/{f.name}")
        arr[chunk.start:chunk.stop] = values[f.name]
        key = _chunk_key(arr, (chunk.start // S.STAR_CHUNK,))
        out[f"{S.STARS}/{f.name}"] = {key: commit.block_digest(values[f.name])}
    return out


def star_extremes(rows: tuple[str, int, int], ranks: Ranks) -> dict:
    """Extremes of [Fe/H] and [O/Fe] of star rows ``start:stop`` of the store at ``root``."""
    root, start, stop = rows
    return {name: extreme_values(_open(root, f"{S.STARS}/{name}", counted=False, mode="r")[
        start:stop], ranks) for name in (S.FEH.name, S.OFE.name)}


# ---- histogram chunks -----------------------------------------------------------------------------

@dataclass(frozen=True)
class HistogramChunk:
    """Histogram rows ``g0:g1`` (one chunk) from star rows ``s0:s1`` of the store at ``root``
    (``n_star`` per galaxy), written into the store at ``target`` (``root``, or its
    ``.pending`` folder for a rebuild)."""

    root: str
    target: str
    g0: int
    g1: int
    s0: int
    n_star: tuple[int, ...]
    binning: dict


def write_histogram_chunk(chunk: HistogramChunk) -> tuple[dict[str, dict[str, str]], np.ndarray]:
    """Histograms of one chunk of galaxies, written; their digests and stars outside."""
    n_star = np.asarray(chunk.n_star, dtype=np.int64)
    s1 = chunk.s0 + int(n_star.sum())
    stars = {name: _open(chunk.root, f"{S.STARS}/{name}", counted=False, mode="r")[chunk.s0:s1]
             for name in (S.FEH.name, S.OFE.name, S.STAR_MASS.name)}
    counts, weighted = histogram_stack(stars[S.FEH.name], stars[S.OFE.name],
                                       stars[S.STAR_MASS.name], n_star,
                                       Binning.from_dict(chunk.binning))
    out = {}
    for field, values in ((S.COUNTS, counts), (S.MASS_WEIGHTED, weighted)):
        arr = _open(chunk.target, f"{S.HISTOGRAMS}/{field.name}")
        arr[chunk.g0:chunk.g1] = values
        key = _chunk_key(arr, (chunk.g0 // S.HISTOGRAM_CHUNK, 0, 0))
        out[f"{S.HISTOGRAMS}/{field.name}"] = {key: commit.block_digest(values)}
    return out, n_star - counts.sum(axis=(1, 2))


def merge_digests(parts) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for part in parts:
        for path, chunks in part.items():
            out.setdefault(path, {}).update(chunks)
    return out


def star_chunks(root: str, committed: int, n_star: np.ndarray, files: list[str]
                ) -> list[StarChunk]:
    """The chunks an append of galaxies with ``n_star`` stars (staged in ``files``) after
    ``committed`` rows writes: from the one holding the first new row to the last."""
    total = committed + int(np.sum(n_star))
    starts = committed + np.concatenate([[0], np.cumsum(n_star)[:-1]]).astype(np.int64)
    out = []
    for c0 in range(committed // S.STAR_CHUNK * S.STAR_CHUNK, total, S.STAR_CHUNK):
        c1 = min(c0 + S.STAR_CHUNK, total)
        first = int(np.searchsorted(starts + n_star, c0, side="right"))
        sources = []
        for k in range(first, len(files)):
            g0, g1 = int(starts[k]), int(starts[k] + n_star[k])
            if g0 >= c1:
                break
            lo, hi = max(g0, c0), min(g1, c1)
            if hi > lo:
                sources.append((os.fspath(files[k]), lo - g0, hi - g0, lo))
        out.append(StarChunk(root, c0, c1, min(max(committed, c0), c1), tuple(sources)))
    return out
