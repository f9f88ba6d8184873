"""Bin indices and histograms against numpy's reference implementation."""

import numpy as np
import pytest

from casbi_store.store.binning import Binning, BinningSpec, bin_index, histogram_stack, resolve_binning


def _values(rng, n=200_000):
    x = rng.normal(-1.0, 0.8, n)
    return x


def test_bin_index_matches_histogram_including_edges():
    rng = np.random.default_rng(0)
    edges = np.linspace(-3.1, 0.7, 65)
    x = np.concatenate([_values(rng), edges, [np.nan, np.inf, -np.inf, edges[-1] + 1e-12]])
    idx = bin_index(x, edges)
    ref, _ = np.histogram(x[np.isfinite(x)], bins=edges)
    assert np.array_equal(np.bincount(idx[idx >= 0], minlength=64), ref)
    # every value lands where searchsorted puts it
    inside = idx >= 0
    expect = np.searchsorted(edges, x[inside], side="right") - 1
    expect[x[inside] == edges[-1]] = 63
    assert np.array_equal(idx[inside], expect)


def test_histogram_stack_equals_histogram2d_per_galaxy():
    rng = np.random.default_rng(1)
    n_star = np.array([0, 5, 1000, 37, 20_000])
    feh = rng.normal(-1, 0.7, n_star.sum()).astype(np.float32)
    ofe = rng.normal(0.2, 0.15, n_star.sum()).astype(np.float32)
    mass = rng.uniform(1e3, 1e4, n_star.sum()).astype(np.float32)
    binning = resolve_binning(BinningSpec(), feh, ofe)
    counts, weighted = histogram_stack(feh, ofe, mass, n_star, binning)
    starts = np.concatenate([[0], np.cumsum(n_star)[:-1]])
    for k, (s, n) in enumerate(zip(starts, n_star, strict=True)):
        sl = slice(s, s + n)
        ref, _, _ = np.histogram2d(feh[sl], ofe[sl], bins=[binning.feh_edges, binning.ofe_edges])
        refw, _, _ = np.histogram2d(feh[sl], ofe[sl], bins=[binning.feh_edges, binning.ofe_edges],
                                    weights=mass[sl].astype(float))
        assert np.array_equal(counts[k], ref.astype(np.int32))
        np.testing.assert_allclose(weighted[k], refw, rtol=1e-6)


def test_percentile_ranges_do_not_depend_on_order():
    rng = np.random.default_rng(2)
    feh, ofe = rng.normal(size=10_000), rng.normal(size=10_000)
    perm = rng.permutation(10_000)
    assert resolve_binning(BinningSpec(), feh, ofe) == resolve_binning(BinningSpec(), feh[perm],
                                                                       ofe[perm])
    b = resolve_binning(BinningSpec(percentiles=(0.01, 99.99)), feh, ofe)
    assert b.feh_range == tuple(np.percentile(feh, [0.01, 99.99]))


def test_fixed_binning_and_validation():
    spec = BinningSpec(method="fixed", feh_range=(-4, 1), ofe_range=(-1, 1))
    b = resolve_binning(spec, np.array([]), np.array([]))
    assert b.feh_edges[0] == -4 and b.feh_edges[-1] == 1 and len(b.ofe_edges) == 65
    assert Binning.from_dict(b.to_dict()) == b
    with pytest.raises(ValueError, match="fixed binning needs feh_range"):
        BinningSpec(method="fixed")
    with pytest.raises(ValueError, match="percentiles"):
        BinningSpec(percentiles=(50, 10))
    with pytest.raises(ValueError, match="method"):
        BinningSpec(method="quantile")
