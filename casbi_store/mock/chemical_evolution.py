"""A one-zone galactic chemical-evolution model (Weinberg, Andrews & Freudenburg 2017).

Gas mass ``M_g`` with star formation ``SFR = M_g / tau_star``, outflow ``eta * SFR``,
instantaneous recycling ``r``; oxygen from core-collapse supernovae only, iron from
core-collapse (prompt) plus type Ia supernovae following a ``t^-1.1`` delay-time distribution
with a minimum delay. Every element's gas mass obeys::

    dM_X/dt = y_X^cc SFR + y_X^Ia <SFR>_Ia - (1 + eta - r) SFR M_X / M_g

The equations are linear in the inflow normalisation, so abundances do not depend on it; the
caller rescales masses to a target stellar mass. Yields and the DTD follow the science notes
(``../shared/science-notes.md``) and WAF17 by default; ``Physics`` changes them for a whole
suite (a "different physics" suite for misspecification checks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from casbi_store import InputError

Y_O_CC = 0.015  # IMF-averaged oxygen yield of core-collapse SNe, per unit mass formed
Y_FE_CC = 0.0012  # iron yield of core-collapse SNe
Y_FE_IA = 0.0017  # iron yield of type Ia SNe, integrated over the DTD
RECYCLING = 0.4
DTD_SLOPE = -1.1
# Total metallicity tracks O (alpha elements, ~42% of Z) and Fe (iron peak): at the pynbody solar
# mass fractions (O 8.4e-3, Fe 1.25e-3) this gives Z = 0.0195, the Anders & Grevesse value.
Z_PER_O = 1.9
Z_PER_FE = 2.8
MIN_IA_DELAY = 0.01  # Gyr; at least two steps of the default time grid


@dataclass(frozen=True)
class Physics:
    """Chemical-evolution physics shared by every galaxy of a suite; defaults are the fiducial.

    The yields and the DTD slope enter ``evolve``; ``ia_min_delay`` (Gyr, None: each galaxy draws
    its own in 0.05-0.15 Gyr) and ``sfe`` (a factor on the star-formation efficiency 1/tau_star)
    replace or scale the per-galaxy draws of ``suite.draw_simulations``.
    """

    y_o_cc: float = Y_O_CC
    y_fe_cc: float = Y_FE_CC
    y_fe_ia: float = Y_FE_IA
    dtd_slope: float = DTD_SLOPE
    ia_min_delay: float | None = None
    sfe: float = 1.0

    def __post_init__(self):
        for name in ("y_o_cc", "y_fe_cc"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be positive, not {getattr(self, name)}")
        if not self.y_fe_ia >= 0:
            raise InputError(f"y_fe_ia must be >= 0, not {self.y_fe_ia}")
        if not -3 < self.dtd_slope < 0:
            raise InputError(f"dtd_slope must lie in (-3, 0), not {self.dtd_slope}")
        if self.ia_min_delay is not None and not MIN_IA_DELAY <= self.ia_min_delay <= 10:
            raise InputError(f"ia_min_delay must lie in [{MIN_IA_DELAY}, 10] Gyr, not "
                             f"{self.ia_min_delay}")
        if not self.sfe > 0:
            raise InputError(f"sfe must be positive, not {self.sfe}")

    def changes(self) -> dict:
        """The fields that differ from the fiducial physics (empty for the defaults)."""
        fiducial = Physics()
        return {k: v for k, v in asdict(self).items() if getattr(fiducial, k) != v}


@dataclass(frozen=True)
class OneZoneParams:
    """Parameters of one galaxy's chemical evolution (times in Gyr)."""

    t_start: float  # onset of star formation
    tau_star: float  # gas depletion time M_g / SFR
    eta: float  # outflow mass loading
    tau_infall: float  # e-folding time of the gas inflow
    ia_min_delay: float = 0.1  # minimum SN Ia delay
    burstiness: float = 0.0  # amplitude of multiplicative SFR bursts (0 = smooth)
    seed: int = 0


@dataclass(frozen=True)
class OneZoneHistory:
    """The model evaluated on a regular time grid."""

    time: np.ndarray  # Gyr
    sfr: np.ndarray  # arbitrary normalisation (mass per Gyr)
    x_o: np.ndarray  # gas-phase oxygen mass fraction
    x_fe: np.ndarray  # gas-phase iron mass fraction

    @property
    def metals(self) -> np.ndarray:
        """Total metal mass fraction Z of the gas."""
        return Z_PER_O * self.x_o + Z_PER_FE * self.x_fe

    def formed_mass(self) -> np.ndarray:
        """Cumulative mass formed into stars at each grid time (same normalisation as sfr)."""
        dt = np.diff(self.time, prepend=self.time[0])
        return np.cumsum(self.sfr * dt)


def _ia_kernel(time: np.ndarray, min_delay: float, slope: float = DTD_SLOPE) -> np.ndarray:
    """DTD sampled on the grid, normalised to unit integral over the grid span."""
    dt = time[1] - time[0]
    delay = time - time[0]
    kernel = np.zeros_like(delay)
    live = delay >= min_delay
    kernel[live] = delay[live] ** slope
    return kernel / (kernel.sum() * dt)


def evolve(params: OneZoneParams, t_end: float = 13.8, dt: float = 0.005,
           physics: Physics = Physics()) -> OneZoneHistory:
    """Integrate the one-zone model with forward Euler on a grid of step ``dt`` Gyr, with the
    yields and DTD slope of ``physics``."""
    time = np.arange(0.0, t_end + dt / 2, dt)
    n = time.size
    rng = np.random.default_rng(params.seed)
    on = time >= params.t_start
    inflow = np.where(on, np.exp(-(time - params.t_start) / params.tau_infall), 0.0)
    # Bursts: a smooth random modulation of the star-formation efficiency (log-normal, ~100 Myr).
    if params.burstiness > 0:
        noise = rng.normal(size=n)
        width = max(1, int(0.1 / dt))
        noise = np.convolve(noise, np.ones(width) / np.sqrt(width), mode="same")
        efficiency = np.exp(params.burstiness * noise)
    else:
        efficiency = np.ones(n)

    kernel = _ia_kernel(time, params.ia_min_delay, physics.dtd_slope)
    m_gas = np.zeros(n)
    m_o = np.zeros(n)
    m_fe = np.zeros(n)
    sfr = np.zeros(n)
    loss = 1.0 + params.eta - RECYCLING
    for i in range(n - 1):
        sfr[i] = efficiency[i] * m_gas[i] / params.tau_star
        # SN Ia rate: past SFR convolved with the DTD (kernel[0] = 0, so only the past counts).
        ia_rate = np.dot(sfr[: i + 1], kernel[i::-1][: i + 1]) * dt
        depletion = loss * sfr[i] / m_gas[i] if m_gas[i] > 0 else 0.0
        m_gas[i + 1] = m_gas[i] + dt * (inflow[i] - loss * sfr[i])
        m_o[i + 1] = m_o[i] + dt * (physics.y_o_cc * sfr[i] - depletion * m_o[i])
        m_fe[i + 1] = m_fe[i] + dt * (physics.y_fe_cc * sfr[i] + physics.y_fe_ia * ia_rate
                                      - depletion * m_fe[i])
        m_gas[i + 1] = max(m_gas[i + 1], 0.0)
    sfr[-1] = efficiency[-1] * m_gas[-1] / params.tau_star
    with np.errstate(invalid="ignore", divide="ignore"):
        x_o = np.where(m_gas > 0, m_o / m_gas, 0.0)
        x_fe = np.where(m_gas > 0, m_fe / m_gas, 0.0)
    return OneZoneHistory(time=time, sfr=sfr, x_o=x_o, x_fe=x_fe)
