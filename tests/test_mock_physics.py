"""The mock's chemical-evolution options: defaults unchanged byte for byte, and each option moves
the generated stars' chemistry the way the physics says."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tipsy_reader import main_halo_stars

from casbi_store.cli import main
from casbi_store.mock import Physics, generate_suite, preset
from casbi_store.mock.chemical_evolution import Y_FE_CC, Y_O_CC
from casbi_store.store.abundances import XSOL_FE, XSOL_O, abundance_ratios

GOLDEN = Path(__file__).parent / "data" / "mock_tiny_seed1_defects.sha256.json"


def test_fiducial_physics_writes_the_same_files_as_before_the_options(tiny_suite):
    """SHA-256 of every file of the conftest suite (tiny, seed 1, defects), recorded with the
    generator as it was before the physics options existed. A deliberate change of the default
    mock regenerates this file; anything else failing here changed the default suite by accident."""
    golden = json.loads(GOLDEN.read_text())
    got = {str(p.relative_to(tiny_suite)): hashlib.sha256(p.read_bytes()).hexdigest()
           for p in sorted(tiny_suite.rglob("*")) if p.is_file()}
    assert sorted(got) == sorted(golden)
    assert [k for k in golden if got[k] != golden[k]] == []


def _z0_stars(folder: Path, physics: Physics) -> tuple[np.ndarray, np.ndarray]:
    """[Fe/H], [O/Fe] of the z = 0 stars of one massive dwarf, read straight from the files."""
    spec = preset("tiny", seed=3, n_simulations=1, steps=(1024,), log_mhalo_range=(10.3, 10.8),
                  n_star_max=3000, physics=physics)
    manifest = generate_suite(folder, spec, workers=1, progress=False)
    sim = manifest["simulations"][0]["name"]
    s = main_halo_stars(str(folder / sim / f"{sim}.01024"))
    feh, ofe, ok = abundance_ratios(s["fe"], s["ox"], s["metals"])
    assert ok.sum() > 2500
    return feh[ok], ofe[ok]


def _knee(feh: np.ndarray, ofe: np.ndarray, threshold: float) -> float:
    """[Fe/H] where, in a running window of 50 stars ordered by [Fe/H], fewer than half the stars
    still lie above ``threshold`` (0.1 dex below the core-collapse plateau)."""
    order = np.argsort(feh)
    above = (ofe[order] > threshold).astype(float)
    running = np.convolve(above, np.ones(50) / 50, mode="valid")
    return float(feh[order][np.flatnonzero(running < 0.5)[0] + 25])


@pytest.fixture(scope="module")
def physics_stars(tmp_path_factory):
    folder = tmp_path_factory.mktemp("physics")
    variants = {"fiducial": Physics(), "late_ia": Physics(ia_min_delay=1.0),
                "double_o": Physics(y_o_cc=2 * Y_O_CC), "no_ia": Physics(y_fe_ia=0.0)}
    return {k: _z0_stars(folder / k, p) for k, p in variants.items()}


def test_longer_ia_delay_moves_the_knee_to_higher_feh(physics_stars):
    plateau = np.log10((Y_O_CC / Y_FE_CC) / (XSOL_O / XSOL_FE))  # +0.27 dex
    fiducial = _knee(*physics_stars["fiducial"], plateau - 0.1)
    late = _knee(*physics_stars["late_ia"], plateau - 0.1)
    assert late > fiducial + 0.1, (fiducial, late)


def test_yields_set_the_plateau_and_scale_oxygen(physics_stars):
    feh, ofe = physics_stars["fiducial"]
    feh2, ofe2 = physics_stars["double_o"]
    # oxygen comes from core-collapse alone and is linear in its yield: every star's [O/Fe]
    # rises by log10(2), through the same random draws (float32 files: ~1e-7 relative)
    np.testing.assert_allclose(ofe2 - ofe, np.log10(2), atol=2e-6)
    assert np.abs(feh2 - feh).max() < 0.01  # [Fe/H] moves only through hydrogen (Z is larger)
    # without SN Ia every star sits on the core-collapse plateau (0.05 dex scatter per element)
    _, flat = physics_stars["no_ia"]
    plateau = np.log10((Y_O_CC / Y_FE_CC) / (XSOL_O / XSOL_FE))
    assert np.median(flat) == pytest.approx(plateau, abs=0.01)
    assert np.median(ofe) < plateau - 0.2  # with SN Ia most stars are far below it


def test_cli_physics_options_are_recorded_and_validated(tmp_path, capsys):
    common = ["--preset", "tiny", "--n-simulations", "1", "--workers", "1", "-q"]
    assert main(["mock", str(tmp_path / "a"), *common, "--ia-delay", "0.8",
                 "--yield-fe-ia", "0.0025", "--sfe", "2"]) == 0
    spec = yaml.safe_load((tmp_path / "a" / "mock_suite.yaml").read_text())["spec"]
    assert spec["physics"] == {**Physics().__dict__, "ia_min_delay": 0.8, "y_fe_ia": 0.0025,
                               "sfe": 2.0}
    sims = yaml.safe_load((tmp_path / "a" / "mock_suite.yaml").read_text())["simulations"]
    assert all(s["chemistry"]["ia_min_delay"] == 0.8 for s in sims)
    # the same command again is a no-op; other physics into the same folder is refused
    assert main(["mock", str(tmp_path / "a"), *common, "--ia-delay", "0.8",
                 "--yield-fe-ia", "0.0025", "--sfe", "2"]) == 0
    assert main(["mock", str(tmp_path / "a"), *common, "--ia-delay", "0.5"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["mock", str(tmp_path / "b"), *common, "--ia-delay", "0"]) == 2
    assert "ia_min_delay must lie in" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="dtd_slope"):
        Physics(dtd_slope=0.5)
    assert Physics().changes() == {} and Physics(sfe=2).changes() == {"sfe": 2}
