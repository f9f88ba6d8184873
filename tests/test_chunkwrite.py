"""Percentile ranges from the chunks' extreme values (issue 20 §2): the numbers np.percentile gives
on all stars, bit for bit, however the stars are split into chunks and merged."""

from __future__ import annotations

from functools import reduce

import numpy as np
import pytest

from casbi_store.store.binning import BinningSpec, resolve_binning
from casbi_store.store.chunkwrite import (
    Ranks,
    extreme_values,
    merge_extremes,
    percentiles_from_extremes,
    resolve_ranges,
)


@pytest.mark.parametrize("percentiles", [(0.01, 99.99), (1, 99), (0, 100), (50, 60), (10, 90)])
def test_percentiles_from_extremes_equal_numpy(percentiles):
    rng = np.random.default_rng(sum(percentiles).__hash__() % 2**32)
    for trial in range(300):
        n = int(rng.integers(1, 30)) if trial % 4 == 0 else int(rng.integers(30, 5000))
        x = (rng.normal(size=n) * rng.uniform(0.01, 3)).astype(np.float32)
        if trial % 3 == 0:  # ties
            x = np.round(x, 1).astype(np.float32)
        ranks = Ranks.of(n, percentiles)
        assert ranks.low + ranks.high <= 2 * n
        parts = np.array_split(x, int(rng.integers(1, 8)))  # some empty when n is small
        merged = reduce(merge_extremes, [extreme_values(p, ranks) for p in parts])
        assert np.array_equal(percentiles_from_extremes(merged),
                              np.percentile(x.astype(np.float64), percentiles))


def test_resolve_ranges_equals_resolve_binning():
    rng = np.random.default_rng(3)
    feh = rng.normal(-0.5, 0.4, 100_000).astype(np.float32)
    ofe = rng.normal(0.2, 0.1, 100_000).astype(np.float32)
    spec = BinningSpec()
    ranks = Ranks.of(len(feh), spec.percentiles)
    assert ranks.low == ranks.high == 11  # ranks 9 and 10 from either end (index 9.9999)
    chunks = [{"feh": extreme_values(feh[i:i + 30_000], ranks),
               "ofe": extreme_values(ofe[i:i + 30_000], ranks)} for i in range(0, 100_000, 30_000)]
    assert resolve_ranges(spec, reduce(merge_extremes, chunks)) == resolve_binning(spec, feh, ofe)
