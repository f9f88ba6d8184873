"""The mock NIHAO suite: faithful files (pynbody reads them cleanly) and plausible physics."""

import filecmp
import warnings
from pathlib import Path

import numpy as np
import pynbody
import pytest
from tipsy_reader import main_halo_stars, read_aux, read_header

from casbi_store.mock import draw_simulations, generate_suite, preset
from casbi_store.mock.chemical_evolution import Z_PER_FE, Z_PER_O, evolve
from casbi_store.mock.suite import age_today, nihao_name, snapshot_time
from casbi_store.store.abundances import XSOL_FE, XSOL_H, XSOL_O, hydrogen_fraction
from casbi_store.store.snapshots import find_snapshots


def test_nihao_names():
    assert nihao_name(1.05e10) == "g1.05e10"
    assert nihao_name(6.31e9) == "g6.31e09"


def test_layout_and_clean_pynbody_load(tiny_suite):
    sims = sorted(p.name for p in tiny_suite.iterdir() if p.is_dir())
    assert len(sims) == 5  # 4 dwarfs + the too-massive one
    snap = tiny_suite / sims[0] / f"{sims[0]}.01024"
    for suffix in ("FeMassFrac", "OxMassFrac", "metals", "massform", "iord"):
        assert Path(f"{snap}.{suffix}").exists(), suffix
    assert (tiny_suite / sims[0] / f"{sims[0]}.param").exists()
    assert len(list(snap.parent.glob(snap.name + ".z0.000.AHF_*"))) == 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = pynbody.load(str(snap))
        s.physical_units()
        h = s.halos(write_fpos=False)
        main = h[0]
        assert len(main.s) > 0 and len(h) == 3
        t = float(s.properties["time"].in_units("Gyr"))
    assert not [w for w in caught if "pynbody" in str(w.filename)], [str(w.message) for w in caught]
    assert t == pytest.approx(snapshot_time(1024), rel=1e-3)
    assert t == pytest.approx(13.8, abs=0.1)
    # the snapshot holds particles outside the main halo (neighbour, background)
    assert len(main) < len(s)


def test_generation_is_deterministic(tmp_path):
    spec = preset("tiny", seed=7, n_simulations=2, n_star_max=300)
    generate_suite(tmp_path / "a", spec, progress=False)
    generate_suite(tmp_path / "b", spec, progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files
    for rel in files:
        assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False), rel
    other = preset("tiny", seed=8, n_simulations=2, n_star_max=300)
    assert draw_simulations(other) != draw_simulations(spec)


def test_stars_accumulate_with_time(tiny_suite):
    refs = [r for r in find_snapshots(tiny_suite) if r.simulation == "g9.45e09"]
    formed = []
    for r in refs:
        hdr = read_header(str(r.path(tiny_suite)))
        if hdr["nstar"] == 0:  # Gasoline writes no star-only arrays before the first star
            formed.append(0.0)
            continue
        massform = read_aux(f"{r.path(tiny_suite)}.massform", hdr["n"])
        formed.append(massform[hdr["n"] - hdr["nstar"]:].astype(float).sum())
    assert formed[0] == 0  # the defect snapshot before star formation
    assert np.all(np.diff(formed) > 0)


def _knee_feh(model) -> float:
    """[Fe/H] of the gas when [O/Fe] has dropped 0.1 dex below its plateau."""
    h = evolve(model.chemistry)
    ok = (h.x_fe > 0) & (h.time > model.chemistry.t_start + 0.01)
    z = Z_PER_O * h.x_o[ok] + Z_PER_FE * h.x_fe[ok]
    feh = np.log10(h.x_fe[ok] / hydrogen_fraction(z)) - np.log10(XSOL_FE / XSOL_H)
    ofe = np.log10(h.x_o[ok] / h.x_fe[ok]) - np.log10(XSOL_O / XSOL_FE)
    below = np.flatnonzero(ofe < ofe.max() - 0.1)
    return float(feh[below[0]])


def _rank_corr(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_physics_trends_mass_metallicity_and_knee():
    models = draw_simulations(preset("demo", seed=3))
    log_mstar = np.log10([m.mstar_final for m in models])
    final_feh, knee = [], []
    for m in models:
        h = evolve(m.chemistry)
        z = Z_PER_O * h.x_o + Z_PER_FE * h.x_fe
        w = h.sfr / h.sfr.sum()  # mass-weighted mean over the stars formed
        good = h.x_fe > 0
        feh = np.log10(h.x_fe[good] / hydrogen_fraction(z[good])) - np.log10(XSOL_FE / XSOL_H)
        final_feh.append(np.sum(w[good] * feh) / w[good].sum())
        knee.append(_knee_feh(m))
    assert _rank_corr(log_mstar, final_feh) > 0.7  # mass-metallicity relation
    assert _rank_corr(log_mstar, knee) > 0.5  # the knee moves to higher [Fe/H] in bigger dwarfs
    # the core-collapse plateau sits at log((0.015/0.0012)/(8.4e-3/1.25e-3)) = +0.27 dex
    h = evolve(models[0].chemistry)
    early = (h.time > models[0].chemistry.t_start + 0.01) & (h.time < models[0].chemistry.t_start
                                                            + models[0].chemistry.ia_min_delay)
    ofe = np.log10(h.x_o[early] / h.x_fe[early]) - np.log10(XSOL_O / XSOL_FE)
    np.testing.assert_allclose(ofe, 0.27, atol=0.01)
    assert age_today() == pytest.approx(13.8, abs=0.1)


def test_reader_agrees_with_file_sizes(tiny_suite):
    snap = next(r for r in find_snapshots(tiny_suite) if r.simulation == "g1.18e10").path(tiny_suite)
    got = main_halo_stars(str(snap))
    assert got["n_star"] == len(got["star_mass_msun"]) > 0


def test_nihao_preset_is_nihao_sized():
    """The `nihao` preset as README.md and bench/README.md describe it (nothing generated):
    100 simulations x 64 snapshots every 16 steps, the largest galaxies ~1e6 star particles."""
    from casbi_store.mock.suite import PRESETS

    spec = preset("nihao")
    assert spec is not PRESETS["nihao"] and spec == PRESETS["nihao"]
    assert spec.n_simulations == 100
    assert spec.steps == tuple(range(16, 1025, 16)) and len(spec.steps) == 64
    stars = np.array([m.n_star_final for m in draw_simulations(spec)])
    assert len(stars) == 100 and stars.max() == 1_000_000
    assert (stars >= 500_000).sum() >= 5  # several galaxies of ~1e6 stars, not one outlier
    assert round(stars.sum() / 1e6, 1) == 15.3  # README: 15.3 M star particles at z = 0
    assert stars.min() < 1000  # dwarfs too: the whole mass range


def test_particle_counts_match_the_written_files(tiny_suite):
    """``particle_counts`` (what the scale bench models a suite with) gives every snapshot's
    tipsy header counts without writing it: checked against the tiny suite's files."""
    from casbi_store.mock.suite import particle_counts

    spec = preset("tiny", seed=1, defects=True)
    checked = 0
    for model in draw_simulations(spec):
        for row in particle_counts(model, spec):
            header = read_header(str(tiny_suite / model.name / f"{model.name}.{row['step']:05d}"))
            assert (header["n"], header["nstar"], header["ndark"], header["ngas"]) == (
                row["n_particles"], row["n_star_file"], row["n_dm"], row["n_gas"]), row
            checked += 1
    assert checked == 21  # 5 simulations x 4 snapshots + one before star formation
