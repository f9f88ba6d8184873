"""Calibration metrics against constructed posteriors whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from casbi_store.learn import calibration as cal


def gaussian_case(rows: int = 3000, samples: int = 400, width: float = 1.0, seed: int = 0):
    """theta ~ N(0, 1), y = theta + N(0, 0.5^2): the exact posterior is N(0.8 y, 0.2); its
    samples widened by ``width`` (1: calibrated)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=rows)
    y = theta + 0.5 * rng.normal(size=rows)
    mean, sd = 0.8 * y, np.sqrt(0.2)
    draws = mean + width * sd * rng.normal(size=(samples, rows))
    return draws, theta, mean, sd


def test_coverage_of_a_calibrated_gaussian_posterior_is_nominal():
    draws, theta, mean, sd = gaussian_case()
    m = cal.parameter_metrics(draws, theta, prior_var=1.0, rng=np.random.default_rng(1))
    tol = 3 * np.sqrt(0.68 * 0.32 / len(theta))
    assert m["coverage_68"] == pytest.approx(0.68, abs=tol)
    assert m["coverage_95"] == pytest.approx(0.95, abs=3 * np.sqrt(0.95 * 0.05 / len(theta)))
    # independently: central intervals from the samples' percentiles
    lo, hi = np.percentile(draws, [16, 84], axis=0)
    assert m["coverage_68"] == pytest.approx(np.mean((lo <= theta) & (theta <= hi)), abs=0.01)
    assert m["sbc_ks_pvalue"] > 1e-3 and m["tarp_max_deviation"] < 0.06
    # skill: 1 - MSE / Var(prior) = 1 - 0.2 for the exact posterior mean
    assert m["skill"] == pytest.approx(1 - np.mean((mean - theta) ** 2), abs=0.01)
    assert m["skill"] == pytest.approx(0.8, abs=0.03)


def test_overconfident_posterior_undercovers_and_fails_uniformity():
    draws, theta, _, _ = gaussian_case(width=0.5)
    m = cal.parameter_metrics(draws, theta, prior_var=1.0, rng=np.random.default_rng(1))
    # N(0, 1) truth against a half-width interval: P(|z| <= 0.4945) = 0.379
    assert m["coverage_68"] == pytest.approx(0.379, abs=0.03)
    assert m["sbc_ks_pvalue"] < 1e-6 and m["tarp_max_deviation"] > 0.1


def test_skill_of_the_prior_mean_is_zero_and_of_the_truth_one():
    truth = np.linspace(2.0, 5.0, 10_001)  # truths spread as the prior U(2, 5)
    var = cal.uniform_variance(2.0, 5.0)
    assert cal.point_metrics(np.full_like(truth, 3.5), truth, var)["skill"] == pytest.approx(0, abs=1e-3)
    assert cal.point_metrics(truth, truth, var)["skill"] == 1.0
    n = np.repeat(np.arange(3, 9), 50)  # every N_sub equally often, as a composed test split
    got = cal.point_metrics(np.full(len(n), 5.5), n.astype(float), cal.integer_uniform_variance(3, 8))
    assert got["skill"] == pytest.approx(0, abs=1e-12) and got["bias"] == pytest.approx(0)


def test_discrete_pit_is_uniform_for_a_calibrated_discrete_posterior():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(6), size=4000)  # each halo's own posterior over 3..8
    truth = np.array([rng.choice(6, p=p) for p in probs]) + 3.0
    draws = np.stack([rng.choice(6, size=300, p=p) for p in probs], axis=1) + 3.0
    m = cal.parameter_metrics(draws, truth, cal.integer_uniform_variance(3, 8), rng)
    assert m["coverage_68"] == pytest.approx(0.68, abs=0.03)
    assert m["coverage_95"] == pytest.approx(0.95, abs=0.015)
    assert m["sbc_ks_pvalue"] > 1e-3


def test_tarp_matches_its_definition_computed_by_hand():
    rng = np.random.default_rng(5)
    samples = rng.normal(size=(50, 40, 2))
    truth = rng.normal(size=(40, 2))
    refs = rng.uniform(-1, 1, size=(40, 2))
    ecp, alpha = cal.tarp(samples, truth, rng, num_bins=4, references=refs)
    scale = truth.std(axis=0)
    frac = []
    for j in range(40):
        d_samples = np.linalg.norm((samples[:, j] - refs[j]) / scale, axis=-1)
        frac.append(np.mean(d_samples < np.linalg.norm((truth[j] - refs[j]) / scale)))
    np.testing.assert_allclose(alpha, [0, 0.25, 0.5, 0.75, 1.0])
    expected = [0.0] + [np.mean(np.asarray(frac) <= a) for a in alpha[1:]]
    np.testing.assert_allclose(ecp[1:-1], expected[1:-1], atol=1 / 40 + 1e-12)
    assert ecp[-1] == 1.0


def test_rows_without_samples_are_skipped():
    draws = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan]])
    m = cal.parameter_metrics(draws, np.array([2.5, 1.0]), 1.0, np.random.default_rng(0))
    assert m["rows"] == 1 and m["rmse"] == pytest.approx(0.5)


@pytest.mark.parametrize("scale", [3.0, 0.4])
def test_temperature_scaling_recovers_the_temperature_of_a_miscalibrated_posterior(scale):
    """Labels drawn from softmax(z); a network reporting z * scale (over-confident for scale > 1,
    under-confident below) is recalibrated by T = scale, within the sampling noise."""
    rng = np.random.default_rng(3)
    z = 2.0 * rng.standard_normal((4_000, 8))
    p = cal.tempered_probabilities(z, 1.0)
    labels = (p.cumsum(axis=1) > rng.random((len(z), 1))).argmax(axis=1)
    fit = cal.fit_temperature(z * scale, labels)
    assert fit["temperature"] == pytest.approx(scale, rel=0.1)
    assert fit["nll_after"] < fit["nll_before"]
    # the true posterior is already calibrated: T stays near 1; an ensemble of one member twice
    assert cal.fit_temperature(z, labels)["temperature"] == pytest.approx(1.0, rel=0.1)
    assert cal.fit_temperature(np.stack([z, z]) * scale, labels, weights=np.array([0.3, 0.7]))[
        "temperature"] == pytest.approx(fit["temperature"], rel=1e-3)
