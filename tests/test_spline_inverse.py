"""nflows' spline inverse can fail its ``discriminant >= 0`` assertion on a few rows far in a
spline's tails (float32 rounding; nflows issue 87): the sampler marks exactly those rows NaN,
which the rejection sampler draws again, instead of failing the whole evaluation."""

from __future__ import annotations

import numpy as np
import torch

from casbi_store.apply.posteriors import inverse_or_nan


def _fragile_inverse(noise: torch.Tensor, context_of: torch.Tensor) -> torch.Tensor:
    """The real failure's shape: any batch holding a row past 2.5 sigma asserts; else a map."""
    assert (noise.abs() < 2.5).all()
    return 2 * noise + context_of[:, None].float()


def test_only_the_failing_rows_become_nan():
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(257, 3, generator=gen) * 1.5
    context_of = torch.arange(257) % 5
    out = inverse_or_nan(_fragile_inverse, noise, context_of)
    bad = (noise.abs() >= 2.5).any(dim=1)
    assert bad.any() and not bad.all()
    assert torch.isnan(out[bad]).all()
    np.testing.assert_array_equal(out[~bad].numpy(),
                                  (2 * noise[~bad] + context_of[~bad, None].float()).numpy())
    # a batch without trouble goes through in one call
    calm = noise[~bad][:10]
    np.testing.assert_array_equal(inverse_or_nan(_fragile_inverse, calm, context_of[:10]).numpy(),
                                  _fragile_inverse(calm, context_of[:10]).numpy())
