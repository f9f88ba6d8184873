"""The mock NIHAO suite: dwarf galaxies with one-zone chemistry, written as NIHAO files.

Each simulation is a dwarf whose z = 0 halo mass sets its stellar mass (a steep stellar-to-halo
mass relation), its outflow loading (``eta ~ M_halo^-1/3``) and its star-formation efficiency.
Its one-zone chemical evolution gives every star particle the gas abundances at its formation
time plus 0.05 dex scatter. A snapshot at time ``t`` holds the stars formed by ``t`` (same
``iord`` across snapshots), the main halo's dark matter (growing as ``exp(-beta z)``), a subhalo,
a less massive neighbouring dwarf with its own old metal-poor stars, background dark matter and
some gas. ``generate_suite`` is deterministic for a seed.

``SuiteSpec.physics`` (``chemical_evolution.Physics``) changes the chemical evolution of every
galaxy (yields, SN Ia delay and DTD slope, star-formation efficiency) while keeping all random
draws, so a "different physics" suite has the same galaxies as the fiducial one of its seed.
The fiducial physics writes the same files, byte for byte, as before these options existed.
"""

from __future__ import annotations

import gc
import logging
import math
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from casbi_store import InputError
from casbi_store.store.abundances import XSOL_FE, XSOL_H, XSOL_O, hydrogen_fraction

from .chemical_evolution import Z_PER_FE, Z_PER_O, OneZoneParams, Physics, evolve
from .nihao_files import (
    HUBBLE,
    OMEGA_B,
    OMEGA_L,
    OMEGA_M,
    Family,
    Halo,
    ahf_basename,
    param_text,
    write_snapshot,
)

log = logging.getLogger(__name__)

ABUNDANCE_SCATTER_DEX = 0.05
PRISTINE_WINDOW_GYR = 0.03  # stars formed this soon after the onset carry no metals at all
EARLY_DEFECT_STEP = 16  # ~0.2 Gyr, before any galaxy forms stars


@dataclass(frozen=True)
class SuiteSpec:
    """Size and content of a mock suite."""

    n_simulations: int
    steps: tuple[int, ...]
    log_mhalo_range: tuple[float, float] = (9.0, 11.0)
    n_dm_final: int = 3000  # dark-matter particles of the main halo at z = 0
    n_star_max: int = 100_000  # cap on star particles of the largest galaxy at z = 0
    n_star_min: int = 150
    n_gas: int = 300
    seed: int = 0
    defects: bool = False
    physics: Physics = Physics()


PRESETS: dict[str, SuiteSpec] = {
    "tiny": SuiteSpec(n_simulations=4, steps=(256, 512, 768, 1024), n_dm_final=400,
                      n_star_max=1500, n_star_min=60, n_gas=40),
    "demo": SuiteSpec(n_simulations=48, steps=tuple(range(64, 1025, 64)), n_dm_final=3000,
                      n_star_max=100_000, n_gas=300),
    # NIHAO's size: ~100 zoom simulations x 64 outputs (every 16 steps), halo masses 10^9.5-10^12
    # Msun; the star-particle relation gives the largest galaxies ~1e6 star particles at z = 0.
    "nihao": SuiteSpec(n_simulations=100, steps=tuple(range(16, 1025, 16)),
                       log_mhalo_range=(9.5, 12.0), n_dm_final=100_000,
                       n_star_max=1_000_000, n_star_min=150, n_gas=10_000),
}


def preset(name: str, seed: int = 0, defects: bool = False, **overrides) -> SuiteSpec:
    """A preset spec with a seed, the defects flag and optional overrides (sizes, ``physics``)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], seed=seed, defects=defects, **overrides)


@dataclass(frozen=True)
class SimulationModel:
    """Everything that defines one mock simulation."""

    name: str
    log_mhalo: float
    mstar_final: float  # target current stellar mass at z = 0 (Msun)
    chemistry: OneZoneParams
    growth_beta: float  # M_halo(z) = M_halo(0) exp(-beta z)
    n_star_final: int
    steps: tuple[int, ...]
    defect: str = ""  # which defect this simulation carries, if any
    seed: int = 0


def nihao_name(mhalo: float) -> str:
    """NIHAO's naming by halo mass: 1.05e10 -> 'g1.05e10', 6.31e9 -> 'g6.31e09'."""
    mantissa, exponent = f"{mhalo:.2e}".split("e")
    return f"g{mantissa}e{int(exponent):02d}"


def stellar_mass_target(log_mhalo: float) -> float:
    """Stellar-to-halo mass relation for dwarfs: M* ~ M_halo^2.13, 1e5.5 Msun at 10^9.5 Msun."""
    return 10 ** (5.5 + 2.13 * (log_mhalo - 9.5))


def n_star_particles(mstar: float, spec: SuiteSpec) -> int:
    """Star particles at z = 0: more massive dwarfs are resolved by more (and heavier) particles."""
    n = 200.0 * (mstar / 1e5) ** 0.65
    return int(np.clip(n, spec.n_star_min, spec.n_star_max))


def draw_simulations(spec: SuiteSpec) -> list[SimulationModel]:
    """Draw the simulations of a suite: halo masses stratified across the range, then physics."""
    rng = np.random.default_rng(spec.seed)
    lo, hi = spec.log_mhalo_range
    strata = (np.arange(spec.n_simulations) + rng.uniform(size=spec.n_simulations))
    log_mh = lo + (hi - lo) * strata / spec.n_simulations
    models = []
    names: set[str] = set()
    physics = spec.physics
    for lm in log_mh:
        m10 = 10 ** (lm - 10)
        mstar = stellar_mass_target(lm) * 10 ** rng.normal(0, 0.2)
        chem = OneZoneParams(
            t_start=float(rng.uniform(0.3, 0.7)),
            tau_star=float(3.0 * m10**-0.3 * 10 ** rng.normal(0, 0.15)) / physics.sfe,
            eta=float(12.0 * m10 ** (-1 / 3) * 10 ** rng.normal(0, 0.1)),
            tau_infall=float(np.exp(rng.uniform(np.log(1.5), np.log(12.0)))),
            ia_min_delay=_ia_delay(float(rng.uniform(0.05, 0.15)), physics),  # drawn either way
            burstiness=float(0.3 * m10**-0.2),
            seed=int(rng.integers(2**31)),
        )
        name = _unique(nihao_name(10**lm), names)
        models.append(SimulationModel(
            name=name, log_mhalo=float(lm), mstar_final=float(mstar), chemistry=chem,
            growth_beta=float(rng.uniform(0.3, 0.8)), n_star_final=n_star_particles(mstar, spec),
            steps=spec.steps, seed=int(rng.integers(2**31)),
        ))
    if spec.defects:
        models = _with_defects(models, spec, rng)
    return models


def _ia_delay(drawn: float, physics: Physics) -> float:
    return drawn if physics.ia_min_delay is None else physics.ia_min_delay


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return candidate


def _with_defects(models: list[SimulationModel], spec: SuiteSpec, rng) -> list[SimulationModel]:
    """Mark four simulations with a broken snapshot each and add one too-massive dwarf."""
    if len(models) < 4:
        raise InputError("--defects needs at least 4 simulations")
    kinds = ["truncated", "before_star_formation", "missing_FeMassFrac", "missing_halo_catalogue"]
    marked = [replace(m, defect=k) for m, k in zip(models[:4], kinds, strict=True)]
    early = marked[1]
    marked[1] = replace(early, steps=(EARLY_DEFECT_STEP, *early.steps))
    lm = 11.5  # an LMC-like dwarf: stellar mass crosses 6e9 Msun during the run
    massive = SimulationModel(
        name=nihao_name(10**lm), log_mhalo=lm, mstar_final=1.2e10,
        chemistry=OneZoneParams(t_start=0.4, tau_star=1.5 / spec.physics.sfe, eta=2.0,
                                tau_infall=6.0, ia_min_delay=_ia_delay(0.1, spec.physics),
                                seed=int(rng.integers(2**31))),
        growth_beta=0.5, n_star_final=min(spec.n_star_max, 3 * spec.n_star_min + 2000),
        steps=spec.steps, defect="above_stellar_mass_limit", seed=int(rng.integers(2**31)),
    )
    return marked + models[4:] + [massive]


# ---- cosmology ----------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _age_table() -> tuple[np.ndarray, np.ndarray]:
    """Cosmic time (Gyr) against expansion factor, from pynbody's own Friedmann integral."""
    import pynbody
    from pynbody.analysis import cosmology

    ref = pynbody.new(dm=1)
    ref.properties.update({"h": HUBBLE, "omegaM0": OMEGA_M, "omegaL0": OMEGA_L,
                           "omegaB0": OMEGA_B})
    a = np.linspace(0.02, 1.0, 4000)
    t = np.asarray(cosmology.age(ref, z=1 / a - 1), dtype=float)
    return a, t


def age_today() -> float:
    return float(_age_table()[1][-1])


def snapshot_time(step: int) -> float:
    """NIHAO outputs are evenly spaced in time: t = t0 * step / 1024."""
    return age_today() * step / 1024


def expansion_factor(t_gyr: float) -> float:
    a, t = _age_table()
    return float(np.interp(t_gyr, t, a))


# ---- one simulation -----------------------------------------------------------------------------

def _sphere(rng, n: int, scale: float, profile: str) -> np.ndarray:
    """Isotropic positions: 'exponential' (stars) or 'hernquist' (dark matter), truncated at 8 scales."""
    u = rng.uniform(size=n)
    if profile == "hernquist":
        u = np.minimum(u, 0.97)
        r = scale * np.sqrt(u) / (1 - np.sqrt(u))
    else:
        r = rng.gamma(3.0, scale, size=n)
    r = np.minimum(r, 8 * scale)
    v = rng.normal(size=(n, 3))
    return r[:, None] * v / np.linalg.norm(v, axis=1, keepdims=True)


def _virial_radius(mhalo: float, a: float) -> float:
    """Physical virial radius (kpc) of a halo of mass ``mhalo`` at expansion factor ``a``."""
    return 206.0 / HUBBLE * (mhalo * HUBBLE / 1e12) ** (1 / 3) * a


def _mass_fractions(feh: np.ndarray, ofe: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Invert [Fe/H], [O/Fe] into (FeMassFrac, OxMassFrac, metals), for the neighbour's stars."""
    x_fe = XSOL_FE / XSOL_H * 10**feh * 0.75
    for _ in range(5):  # hydrogen depends (weakly) on Z: iterate
        x_o = x_fe * XSOL_O / XSOL_FE * 10**ofe
        z = Z_PER_O * x_o + Z_PER_FE * x_fe
        x_fe = XSOL_FE / XSOL_H * 10**feh * hydrogen_fraction(z)
    x_o = x_fe * XSOL_O / XSOL_FE * 10**ofe
    return x_fe, x_o, Z_PER_O * x_o + Z_PER_FE * x_fe


def mass_loss_fraction(age_gyr: np.ndarray) -> np.ndarray:
    """Fraction of a star particle's formation mass returned to the gas by ``age`` (up to r = 0.4)."""
    return np.minimum(0.05 * np.log1p(np.maximum(age_gyr, 0) / 0.005), 0.4)


@dataclass(frozen=True)
class StarDraws:
    """The random star population of one simulation (every snapshot shows its stars born by then)."""

    history: object  # chemical_evolution.History
    m_dm: float  # dark-matter particle mass (Msun)
    stars: tuple  # (tform, x_fe, x_o, massform, offsets) of the main galaxy
    neighbour: tuple  # (tform, x_fe, x_o, metals, massform) of the neighbour's stars


def draw_stars(model: SimulationModel, spec: SuiteSpec, rng: np.random.Generator) -> StarDraws:
    """Draw a simulation's stars (formation times, abundances, masses, offsets) from ``rng``."""
    history = evolve(model.chemistry, t_end=age_today(), physics=spec.physics)
    formed = history.formed_mass()
    formed = formed + np.arange(formed.size) * 1e-12 * max(formed[-1], 1e-30)  # strictly rising
    n = model.n_star_final
    tform = np.sort(np.interp(rng.uniform(formed[0], formed[-1], n), formed, history.time))
    x_o = np.interp(tform, history.time, history.x_o) * 10 ** rng.normal(0, ABUNDANCE_SCATTER_DEX, n)
    x_fe = np.interp(tform, history.time, history.x_fe) * 10 ** rng.normal(
        0, ABUNDANCE_SCATTER_DEX, n)
    pristine = tform < model.chemistry.t_start + PRISTINE_WINDOW_GYR
    x_o[pristine] = 0.0
    x_fe[pristine] = 0.0
    retained_today = 1 - mass_loss_fraction(age_today() - tform)
    massform = np.full(n, model.mstar_final / retained_today.sum())
    mhalo0 = 10**model.log_mhalo
    m_dm = mhalo0 * (1 - OMEGA_B / OMEGA_M) / spec.n_dm_final
    r_star_final = 0.015 * _virial_radius(mhalo0, 1.0)
    star_offsets = _sphere(rng, n, r_star_final / 3, "exponential")

    # The neighbour: a quarter of the main halo's mass, with old metal-poor stars.
    n_nb_star = max(20, n // 20)
    nb_tform = np.sort(rng.uniform(0.5, 2.5, n_nb_star))
    nb_fe, nb_o, nb_z = _mass_fractions(rng.normal(-2.3, 0.3, n_nb_star),
                                        rng.normal(0.35, 0.08, n_nb_star))
    nb_massform = np.full(n_nb_star, m_dm * 0.02)
    return StarDraws(history, m_dm, (tform, x_fe, x_o, massform, star_offsets),
                     (nb_tform, nb_fe, nb_o, nb_z, nb_massform))


def dark_matter_counts(model: SimulationModel, spec: SuiteSpec, step: int) -> dict[str, int]:
    """Dark-matter particles of a snapshot: main halo (with its subhalo), neighbour, background."""
    z = 1 / expansion_factor(snapshot_time(step)) - 1
    mhalo = 10**model.log_mhalo * math.exp(-model.growth_beta * z)
    n_dm = max(50, round(spec.n_dm_final * mhalo / 10**model.log_mhalo))
    return {"main": n_dm, "sub": max(10, n_dm // 50), "neighbour": max(20, n_dm // 4),
            "background": max(50, n_dm // 10)}


def particle_counts(model: SimulationModel, spec: SuiteSpec) -> list[dict[str, int]]:
    """Particles of each of a simulation's snapshots, as ``build_simulation`` would write them
    (the same draws, nothing written): ``step``, ``n_star`` (main galaxy), ``n_star_file``,
    ``n_dm``, ``n_gas``, ``n_particles``."""
    draws = draw_stars(model, spec, np.random.default_rng(model.seed))
    tform, nb_tform = draws.stars[0], draws.neighbour[0]
    rows = []
    for step in model.steps:
        t = snapshot_time(step)
        n_main = int(np.count_nonzero(tform <= t))
        n_star = n_main + int(np.count_nonzero(nb_tform <= t))
        dm = dark_matter_counts(model, spec, step)
        n_dm = dm["main"] + dm["neighbour"] + dm["background"]
        rows.append({"step": step, "n_star": n_main, "n_star_file": n_star, "n_dm": n_dm,
                     "n_gas": spec.n_gas, "n_particles": n_star + n_dm + spec.n_gas})
    return rows


def build_simulation(model: SimulationModel, spec: SuiteSpec, out: Path) -> list[Path]:
    """Write one simulation folder; return the snapshot paths written."""
    rng = np.random.default_rng(model.seed)
    sim_dir = out / model.name
    sim_dir.mkdir(parents=True, exist_ok=True)
    (sim_dir / f"{model.name}.param").write_text(param_text(model.name))
    draws = draw_stars(model, spec, rng)
    written = []
    # pynbody runs gc.collect() at every family-array promotion (3 per snapshot): with the
    # imports' objects frozen out of the collector's view that is ~1 ms, not ~0.2 s (58% of a
    # suite's CPU time under cProfile). Freezing changes no byte written.
    gc.freeze()
    try:
        for step in model.steps:
            path = sim_dir / f"{model.name}.{step:05d}"
            snap_rng = np.random.default_rng([model.seed, step])
            _write_one_snapshot(path, step, model, spec, snap_rng, draws.m_dm, stars=draws.stars,
                                neighbour=draws.neighbour, history=draws.history)
            written.append(path)
    finally:
        gc.unfreeze()
    _apply_defect(model, written)
    return written


def _write_one_snapshot(path, step, model, spec, rng, m_dm, stars, neighbour, history) -> None:
    t = snapshot_time(step)
    a = expansion_factor(t)
    z = 1 / a - 1
    mhalo = 10**model.log_mhalo * math.exp(-model.growth_beta * z)
    rvir = _virial_radius(mhalo, a)
    dm_counts = dark_matter_counts(model, spec, step)
    n_dm, n_sub = dm_counts["main"], dm_counts["sub"]
    n_nb_dm, n_bg = dm_counts["neighbour"], dm_counts["background"]
    centre = np.array([100.0, -50.0, 30.0]) * a
    sigma = math.sqrt(4.30091e-6 * mhalo / rvir / 3)  # km/s

    tform, x_fe, x_o, massform, offsets = stars
    born = tform <= t
    s_mass = massform[born] * (1 - mass_loss_fraction(t - tform[born]))
    s_pos = centre + offsets[born] * a
    s_fe, s_o = x_fe[born], x_o[born]
    nb_tform, nb_fe, nb_o, nb_z, nb_massform = neighbour
    nb_born = nb_tform <= t
    nb_centre = centre + np.array([3.0 * rvir, 0.5 * rvir, 0.0])
    nb_rvir = rvir * 0.25 ** (1 / 3)
    n_nb_star = int(nb_born.sum())

    # Dark matter: main halo (the last few of which form a subhalo), neighbour, background.
    dm_pos = np.concatenate([
        centre + _sphere(rng, n_dm - n_sub, rvir / 8, "hernquist"),
        centre + np.array([0.5 * rvir, 0, 0]) + _sphere(rng, n_sub, rvir / 40, "hernquist"),
        nb_centre + _sphere(rng, n_nb_dm, nb_rvir / 8, "hernquist"),
        centre + rng.uniform(-5 * rvir, 5 * rvir, size=(n_bg, 3)),
    ])
    n_dm_all = len(dm_pos)
    dm_vel = rng.normal(0, sigma, size=(n_dm_all, 3))
    dm = Family(mass=np.full(n_dm_all, m_dm), pos=dm_pos, vel=dm_vel,
                iord=np.arange(n_dm_all), eps=0.1 * rvir / 40)

    # Stars: main galaxy, then the neighbour's.
    n_main_star = int(born.sum())
    nb_mass = nb_massform[nb_born] * (1 - mass_loss_fraction(t - nb_tform[nb_born]))
    star_tform = np.concatenate([tform[born], nb_tform[nb_born]])
    star = Family(
        mass=np.concatenate([s_mass, nb_mass]),
        pos=np.concatenate([s_pos, nb_centre + _sphere(rng, n_nb_star, nb_rvir / 30, "exponential")]),
        vel=rng.normal(0, sigma / 2, size=(n_main_star + n_nb_star, 3)),
        iord=np.concatenate([10**7 + np.flatnonzero(born), 2 * 10**7 + np.flatnonzero(nb_born)]),
        eps=0.1 * rvir / 40,
        extra={
            "tform": star_tform,
            "massform": np.concatenate([massform[born], nb_massform[nb_born]]),
            "FeMassFrac": np.concatenate([s_fe, nb_fe[nb_born]]),
            "OxMassFrac": np.concatenate([s_o, nb_o[nb_born]]),
            "metals": np.concatenate([Z_PER_O * s_o + Z_PER_FE * s_fe, nb_z[nb_born]]),
        },
    )

    # Gas: 70% in the main halo with the current gas-phase abundances, the rest in the background.
    n_gas_main = int(0.7 * spec.n_gas)
    g_fe = float(np.interp(t, history.time, history.x_fe))
    g_o = float(np.interp(t, history.time, history.x_o))
    gas_pos = np.concatenate([
        centre + _sphere(rng, n_gas_main, rvir / 10, "exponential"),
        centre + rng.uniform(-5 * rvir, 5 * rvir, size=(spec.n_gas - n_gas_main, 3)),
    ])
    gas_fe = np.r_[np.full(n_gas_main, g_fe), np.zeros(spec.n_gas - n_gas_main)]
    gas_o = np.r_[np.full(n_gas_main, g_o), np.zeros(spec.n_gas - n_gas_main)]
    gas = Family(
        mass=np.full(spec.n_gas, m_dm * OMEGA_B / (OMEGA_M - OMEGA_B)),
        pos=gas_pos, vel=rng.normal(0, sigma, size=(spec.n_gas, 3)),
        iord=3 * 10**7 + np.arange(spec.n_gas), eps=0.1 * rvir / 40,
        extra={"rho": rng.lognormal(-4, 1, spec.n_gas), "temp": rng.lognormal(np.log(2e4), 0.5,
               spec.n_gas), "FeMassFrac": gas_fe, "OxMassFrac": gas_o,
               "metals": Z_PER_O * gas_o + Z_PER_FE * gas_fe},
    )

    main_dm = np.arange(n_dm)
    halos = [
        Halo(0, -1, {"dm": main_dm, "star": np.arange(n_main_star),
                     "gas": np.arange(n_gas_main)}, centre, rvir),
        Halo(1, -1, {"dm": n_dm + np.arange(n_nb_dm),
                     "star": n_main_star + np.arange(n_nb_star),
                     "gas": np.arange(0)}, nb_centre, nb_rvir),
        Halo(2, 0, {"dm": np.arange(n_dm - n_sub, n_dm), "star": np.arange(0),
                    "gas": np.arange(0)}, centre + np.array([0.5 * rvir, 0, 0]), rvir / 10),
    ]
    write_snapshot(path, a, gas=gas, dm=dm, star=star, halos=halos, redshift=z)


def _apply_defect(model: SimulationModel, paths: list[Path]) -> None:
    """Break one snapshot the way real archives break."""
    if model.defect == "truncated":
        target = paths[len(paths) // 2]
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif model.defect == "missing_FeMassFrac":
        Path(f"{paths[-2]}.FeMassFrac").unlink()
    elif model.defect == "missing_halo_catalogue":
        target = paths[len(paths) // 2 - 1]
        for f in target.parent.glob(target.name + ".z*.AHF_*"):
            f.unlink()


def _build(args) -> tuple[str, int]:
    model, spec, out = args
    return model.name, len(build_simulation(model, spec, out))


def generate_suite(out: Path, spec: SuiteSpec, workers: int = 1, progress: bool = True) -> dict:
    """Write a mock suite into ``out``; return a manifest (also written as ``suite.yaml``).

    Refuses to write into a non-empty folder that is not a mock suite of the same spec.
    """
    import yaml

    out = Path(out)
    manifest_path = out / "mock_suite.yaml"
    models = draw_simulations(spec)
    spec_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()
                 if k != "physics"}
    if spec.physics.changes():  # the fiducial physics leaves the manifest as it always was
        spec_dict["physics"] = asdict(spec.physics)
    manifest = {
        "generator": "casbi_store.mock",
        "spec": spec_dict,
        "simulations": [
            {"name": m.name, "log_mhalo": round(m.log_mhalo, 4), "mstar_final": m.mstar_final,
             "n_star_final": m.n_star_final, "defect": m.defect or None,
             "chemistry": asdict(m.chemistry)}
            for m in models
        ],
    }
    if out.exists() and any(out.iterdir()):
        if manifest_path.exists() and yaml.safe_load(manifest_path.read_text()) == manifest:
            log.info("mock suite %s already complete for this spec; nothing to do", out)
            return manifest
        raise InputError(f"{out} is not empty and holds no mock suite of this spec; "
                              "choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    jobs = [(m, spec, staging) for m in models]
    bar = tqdm(total=len(jobs), desc="mock simulations", unit="sim", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_build, jobs):
                bar.update()
    else:
        for job in jobs:
            _build(job)
            bar.update()
    bar.close()
    for m in models:
        (staging / m.name).rename(out / m.name)
    staging.rmdir()
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return manifest


__all__ = ["PRESETS", "Physics", "SuiteSpec", "generate_suite", "preset", "draw_simulations",
           "particle_counts", "snapshot_time", "ahf_basename"]
