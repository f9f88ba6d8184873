"""Reference regressors: features against numpy, and what they recover from planes."""

import numpy as np

from casbi_store.evaluation import baselines as B


def test_plane_features_are_the_log1p_marginals_and_log_total():
    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, size=(5, 8, 8))
    f = B.plane_features(x)
    assert f.shape == (5, 17)
    assert np.allclose(f[:, :8], np.log1p(x.sum(axis=2)))
    assert np.allclose(f[:, 8:16], np.log1p(x.sum(axis=1)))
    assert np.allclose(f[:, 16], np.log10(x.sum(axis=(1, 2))))


def test_baselines_recover_what_the_plane_holds():
    """A toy world where N_sub sets the total count and the top block's tau shifts [Fe/H]: both
    regressors must learn N_sub and tau_1 on held-out halos; the block's M_dm is pure noise and
    must not be 'learned' (R^2 near 0 or below)."""
    rng = np.random.default_rng(1)

    def world(n):
        n_sub = rng.integers(2, 20, n)
        tau = rng.uniform(1, 7, n)
        theta = np.full((n, 20, 3), np.nan)
        theta[:, 0] = np.stack([10 ** rng.uniform(6, 8, n), 10 ** rng.uniform(9, 10, n), tau], 1)
        x = np.zeros((n, 8, 8))
        for i in range(n):
            centre = int(tau[i])  # the [Fe/H] bin of the peak moves with tau
            x[i, centre, 2] = rng.poisson(200 * n_sub[i])
            x[i] += rng.poisson(1.0, (8, 8))
        return x, n_sub, theta

    fitted = B.fit(*world(200), ranks=1)
    scores = B.score(fitted, *world(100), ranks=1)
    for kind in B.KINDS:
        assert scores[kind]["n_sub"]["r2"] > 0.9, kind
        assert scores[kind]["tau_1"]["r2"] > 0.8, kind
        assert scores[kind]["log10_mdm_1"]["r2"] < 0.1, kind
        assert scores[kind]["n_sub"]["rows"] == 100
