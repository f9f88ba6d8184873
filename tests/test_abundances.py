"""Abundance ratios against hand-computed values."""

import numpy as np

from casbi_store.store.abundances import XSOL_FE, XSOL_H, XSOL_O, abundance_ratios


def test_solar_mixture_gives_zero():
    # metals chosen so that hydrogen equals the solar value: 1 - Z - 0.236 - 2.1 Z = 0.706
    z = (1 - 0.236 - XSOL_H) / 3.1
    feh, ofe, valid = abundance_ratios(np.array([XSOL_FE]), np.array([XSOL_O]), np.array([z]))
    assert valid.all()
    np.testing.assert_allclose([feh[0], ofe[0]], [0.0, 0.0], atol=1e-12)


def test_tenth_solar_iron_and_alpha_enhancement():
    z = (1 - 0.236 - XSOL_H) / 3.1
    fe = XSOL_FE / 10
    ox = XSOL_O / 10 * 10**0.3
    feh, ofe, _ = abundance_ratios(np.array([fe]), np.array([ox]), np.array([z]))
    np.testing.assert_allclose([feh[0], ofe[0]], [-1.0, 0.3], atol=1e-12)


def test_zero_iron_or_oxygen_is_invalid_not_clamped():
    fe = np.array([0.0, 1e-4, 1e-4, 1e-4])
    ox = np.array([1e-3, 0.0, 1e-3, 1e-3])
    feh, ofe, valid = abundance_ratios(fe, ox, np.full(4, 1e-3))
    assert valid.tolist() == [False, False, True, True]
    assert np.isnan(feh[:2]).all() and np.isnan(ofe[:2]).all()
    assert feh[2] == feh[3]  # no dependence on what else is in the array
