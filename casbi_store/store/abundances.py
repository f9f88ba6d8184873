"""[Fe/H] and [O/Fe] from Gasoline mass fractions, with pinned solar constants.

We do not use pynbody's derived ``feh``/``ofe``: they overwrite zero iron in place with the
minimum over whatever particles happen to be loaded, so their values depend on the load.
Here zero iron or oxygen is reported as such and the caller drops (and counts) those stars.

Solar reference (mass fractions), pynbody's tipsy defaults (Anders & Grevesse 1989 scale):
``XSOL_FE = 1.25e-3``, ``XSOL_O = 8.4e-3``, ``XSOL_H = 0.706``. Hydrogen follows pynbody's
``hydrogen = 1 - Z - (0.236 + 2.1 Z)`` (helium rising with metallicity).
"""

from __future__ import annotations

import numpy as np

XSOL_FE = 1.25e-3
XSOL_O = 8.4e-3
XSOL_H = 0.706
HELIUM_PRIMORDIAL = 0.236
HELIUM_ENRICHMENT = 2.1  # dY/dZ

SOLAR_CONSTANTS = {
    "XSOL_Fe": XSOL_FE,
    "XSOL_O": XSOL_O,
    "XSOL_H": XSOL_H,
    "Y_primordial": HELIUM_PRIMORDIAL,
    "dY_dZ": HELIUM_ENRICHMENT,
}


def hydrogen_fraction(metals: np.ndarray) -> np.ndarray:
    """Hydrogen mass fraction from total metallicity Z (pynbody's convention)."""
    z = np.asarray(metals, dtype=np.float64)
    return 1.0 - z - (HELIUM_PRIMORDIAL + HELIUM_ENRICHMENT * z)


def abundance_ratios(
    fe_mass_frac: np.ndarray, ox_mass_frac: np.ndarray, metals: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``([Fe/H], [O/Fe], valid)`` in float64.

    ``valid`` is False where iron or oxygen is zero (or negative, or not finite); the ratios
    there are NaN.
    """
    fe = np.asarray(fe_mass_frac, dtype=np.float64)
    ox = np.asarray(ox_mass_frac, dtype=np.float64)
    h = hydrogen_fraction(metals)
    valid = (fe > 0) & (ox > 0) & (h > 0) & np.isfinite(fe) & np.isfinite(ox)
    feh = np.full(fe.shape, np.nan)
    ofe = np.full(fe.shape, np.nan)
    feh[valid] = np.log10(fe[valid] / h[valid]) - np.log10(XSOL_FE / XSOL_H)
    ofe[valid] = np.log10(ox[valid] / fe[valid]) - np.log10(XSOL_O / XSOL_FE)
    return feh, ofe, valid
