"""Extraction on real files with a real Dask cluster, checked against numpy on the files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import assert_same_arrays, consolidate_whole_store, copy_suite, store_arrays
from kill_harness import stage_everything
from tipsy_reader import main_halo_stars

from casbi_store import galaxy_stars, open_errors, open_store
from casbi_store.mock import generate_suite, preset
from casbi_store.store.extract import ErrorKind, ExtractionSettings, SnapshotError, extract_snapshot
from casbi_store.store.extraction_run import extract_suite
from casbi_store.store.io import StoreError
from casbi_store.store.snapshots import find_snapshots
from casbi_store.store.validate import validate_store

# Independent [Fe/H], [O/Fe]: pynbody's documented tipsy solar values, written out here again.
SOLAR_FE, SOLAR_O, SOLAR_H = 1.25e-3, 8.4e-3, 0.706

EXPECTED_DEFECTS = {
    "truncated": ErrorKind.LOAD,
    "before_star_formation": ErrorKind.NO_STARS,
    "missing_FeMassFrac": ErrorKind.MISSING_ARRAY,
    "missing_halo_catalogue": ErrorKind.NO_HALOS,
    "above_stellar_mass_limit": ErrorKind.EXCLUDED_MASS,
}


def independent(snapshot: str) -> dict:
    """Main-halo stars straight from the files, with numpy only."""
    raw = main_halo_stars(snapshot)
    fe, ox, z = (raw[k].astype(np.float64) for k in ("fe", "ox", "metals"))
    keep = (fe > 0) & (ox > 0)
    hydrogen = 1 - z - (0.236 + 2.1 * z)
    feh = np.log10(fe[keep] / hydrogen[keep]) - np.log10(SOLAR_FE / SOLAR_H)
    ofe = np.log10(ox[keep] / fe[keep]) - np.log10(SOLAR_O / SOLAR_FE)
    return {"mstar": raw["star_mass_msun"].sum(), "mdm": raw["dm_mass_msun_total"],
            "n_star": int(keep.sum()), "n_dropped": int((~keep).sum()),
            "feh": feh.astype(np.float32), "ofe": ofe.astype(np.float32),
            "mass": raw["star_mass_msun"][keep]}


def test_every_galaxy_matches_the_files(tiny_suite, tiny_store):
    store, summary = tiny_store
    ds = open_store(store).load()
    assert summary.ok == ds.sizes["galaxy"] > 0
    fe_edges, of_edges = ds.feh_edges.values, ds.ofe_edges.values
    all_feh, all_ofe = [], []
    for name in ds.galaxy.values:
        g = ds.sel(galaxy=name)
        ref = independent(str(tiny_suite / str(g.source_path.values)))
        assert int(g.n_star) == ref["n_star"]
        assert int(g.n_star_dropped) == ref["n_dropped"]
        assert float(g.mstar) == pytest.approx(ref["mstar"], rel=1e-6)
        assert float(g.mdm) == pytest.approx(ref["mdm"], rel=1e-6)
        counts, _, _ = np.histogram2d(ref["feh"], ref["ofe"], bins=[fe_edges, of_edges])
        assert np.array_equal(g.counts.values, counts.astype(np.int32)), name
        weighted, _, _ = np.histogram2d(ref["feh"], ref["ofe"], bins=[fe_edges, of_edges],
                                        weights=ref["mass"])
        np.testing.assert_allclose(g.mass_weighted.values, weighted, rtol=1e-5)
        inside = ((ref["feh"] >= fe_edges[0]) & (ref["feh"] <= fe_edges[-1])
                  & (ref["ofe"] >= of_edges[0]) & (ref["ofe"] <= of_edges[-1]))
        assert int(g.counts.sum()) == int(inside.sum())
        stars = galaxy_stars(store, str(name))
        np.testing.assert_array_equal(stars.feh.values, ref["feh"])
        all_feh.append(ref["feh"])
        all_ofe.append(ref["ofe"])
    # the ranges are the 0.01/99.99 percentiles of all kept stars
    lo, hi = np.percentile(np.concatenate(all_feh).astype(np.float64), [0.01, 99.99])
    assert (fe_edges[0], fe_edges[-1]) == pytest.approx((lo, hi), abs=1e-12)
    lo, hi = np.percentile(np.concatenate(all_ofe).astype(np.float64), [0.01, 99.99])
    assert (of_edges[0], of_edges[-1]) == pytest.approx((lo, hi), abs=1e-12)
    # some pristine (zero-metal) stars exist and were dropped, not clamped
    assert int(ds.n_star_dropped.sum()) > 0
    assert float(ds.time.min()) > 3 and float(ds.time.max()) == pytest.approx(13.8, abs=0.1)


def test_defects_recorded_with_their_kind_and_nothing_lost(tiny_suite, tiny_store):
    import yaml

    store, summary = tiny_store
    manifest = yaml.safe_load((tiny_suite / "mock_suite.yaml").read_text())
    defect_of = {s["name"]: s["defect"] for s in manifest["simulations"] if s["defect"]}
    errors = open_errors(store)
    kinds = {str(n): str(k) for n, k in zip(errors.name.values, errors.kind.values, strict=True)}
    status = {str(n): str(s) for n, s in zip(errors.name.values, errors.status.values, strict=True)}
    by_sim = {}
    for name, kind in kinds.items():
        by_sim.setdefault(name.rsplit(".", 1)[0], set()).add(kind)
    assert set(by_sim) == set(defect_of)
    for sim, defect in defect_of.items():
        assert by_sim[sim] == {str(EXPECTED_DEFECTS[defect])}, sim
    assert {status[n] for n in kinds if kinds[n] == "excluded_mass"} == {"excluded"}
    assert {status[n] for n in kinds if kinds[n] != "excluded_mass"} == {"failed"}
    for message, path in zip(errors.message.values, errors.path.values, strict=True):
        assert str(path) in str(message)  # the message names the file
    galaxies = set(open_store(store).galaxy.values.tolist())
    every = {r.name for r in find_snapshots(tiny_suite)}
    assert galaxies | set(kinds) == every and not galaxies & set(kinds)
    # the LMC-like dwarf's early snapshot is below the limit and kept
    assert any(g.startswith("g3.16e11") for g in galaxies)


def test_extraction_never_writes_into_the_suite(tiny_suite, tiny_store, dask_client):
    def listing():
        return sorted((str(p.relative_to(tiny_suite)), p.stat().st_size, p.stat().st_mtime_ns)
                      for p in tiny_suite.rglob("*"))
    before = listing()
    store = tiny_store[0].parent / "again.zarr"
    extract_suite(tiny_suite, store, client=dask_client, progress=False)
    assert listing() == before
    assert not list(tiny_suite.rglob("*fpos*"))


def test_rerun_adds_nothing_and_one_worker_equals_two(tiny_suite, tiny_store, dask_client,
                                                     tmp_path):
    store, _ = tiny_store
    before = store_arrays(store)
    summary = extract_suite(tiny_suite, store, client=dask_client, progress=False)
    assert summary.ok == summary.failed == summary.excluded == 0
    assert summary.skipped == summary.n_snapshots
    assert_same_arrays(before, store_arrays(store))
    one = tmp_path / "one.zarr"
    extract_suite(tiny_suite, one, n_workers=1, progress=False)
    assert_same_arrays(before, store_arrays(one))


def test_adding_a_simulation_appends_exactly_its_snapshots(tiny_suite, dask_client, tmp_path):
    suite = copy_suite(tiny_suite, tmp_path / "suite")
    store = tmp_path / "grow.zarr"
    extract_suite(suite, store, client=dask_client, progress=False)
    before = open_store(store).load()
    version_before = before.attrs["binning"]["version"]
    extra = tmp_path / "extra"
    generate_suite(extra, preset("tiny", seed=99, n_simulations=1), progress=False)
    (sim,) = [p for p in extra.iterdir() if p.is_dir()]
    shutil.copytree(sim, suite / sim.name)
    summary = extract_suite(suite, store, client=dask_client, progress=False)
    after = open_store(store).load()
    added = [str(n) for n in after.galaxy.values[before.sizes["galaxy"]:]]
    assert added == sorted(p.name for p in (suite / sim.name).iterdir()
                           if p.name.count(".") == 2 and p.name.split(".")[-1].isdigit())
    assert summary.ok == len(added) and summary.skipped == before.sizes["galaxy"] + 7
    assert list(after.galaxy.values[: before.sizes["galaxy"]]) == list(before.galaxy.values)
    # ranges moved, so every histogram was rebuilt: equal to a fresh extraction, row by row
    assert after.attrs["binning"]["version"] == version_before + 1
    fresh = tmp_path / "fresh.zarr"
    extract_suite(suite, fresh, client=dask_client, progress=False)
    ref = open_store(fresh).load()
    assert after.attrs["binning"]["feh_range"] == ref.attrs["binning"]["feh_range"]
    for name in ref.galaxy.values:
        assert np.array_equal(after.counts.sel(galaxy=name), ref.counts.sel(galaxy=name))


def test_interrupted_commit_is_repaired(tiny_suite, tiny_store, dask_client, tmp_path):
    """What a writer killed mid-append leaves: galaxy columns of different lengths, stars past the
    last galaxy, a pending rebuild. Readers see the last commit; the next run rolls it back."""
    store = tmp_path / "torn.zarr"
    shutil.copytree(tiny_store[0], store)
    reference = store_arrays(store)
    root = zarr.open_group(store, mode="a", zarr_format=2, use_consolidated=False)
    for name in ("feh", "ofe", "mass", "tform"):
        arr = root["stars"][name]
        arr.resize((arr.shape[0] + 500,))
    for name in ("name", "simulation", "mstar"):  # one array at a time, as the old writer did
        arr = root["galaxies"][name]
        arr.resize((arr.shape[0] + 3,))
    root["histograms"]["counts"].resize((3, 64, 64))
    root["histograms"].attrs["binning_version"] = -1
    assert_same_arrays(reference, store_arrays(store))  # readers: the committed store
    summary = extract_suite(tiny_suite, store, client=dask_client, progress=False)
    assert summary.repaired and summary.ok == 0
    assert_same_arrays(reference, store_arrays(store))
    on_disk = zarr.open_group(store, mode="r", zarr_format=2, use_consolidated=False)
    assert on_disk["galaxies/name"].shape == on_disk["galaxies/mstar"].shape


def test_staged_results_are_reused_after_a_kill(tiny_suite, dask_client, tmp_path):
    from casbi_store.store.extraction_run import Staging
    from casbi_store.store.snapshots import fingerprint

    store = tmp_path / "staged.zarr"
    refs = find_snapshots(tiny_suite)
    # What a killed run leaves behind: outcomes staged on disk, nothing committed. One is marked
    # so that we can tell whether it was reused or extracted again.
    staging = Staging(str(store))
    marked = refs[0]
    staging.put(marked.name, fingerprint(marked.path(tiny_suite)),
                {"status": "failed", "kind": "unexpected", "message": "STAGED-MARKER"})
    summary = extract_suite(tiny_suite, store, client=dask_client, progress=False)
    errors = open_errors(store)
    messages = dict(zip(map(str, errors.name.values), map(str, errors.message.values), strict=True))
    assert messages[marked.name] == "STAGED-MARKER"
    assert summary.ok + summary.failed + summary.excluded == len(refs)
    assert not os.path.exists(f"{store}.staging")
    # a staged outcome for an older version of a file is not reused
    staging.put(marked.name, "0" * 32, {"status": "failed", "kind": "unexpected",
                                         "message": "STALE"})
    extract_suite(tiny_suite, tmp_path / "other.zarr", client=dask_client, progress=False)
    assert "STALE" not in map(str, open_errors(tmp_path / "other.zarr").message.values)


def test_extract_snapshot_errors_and_main_halo_rule(tiny_suite):
    refs = {r.name: r for r in find_snapshots(tiny_suite)}
    good = str(refs["g1.18e10.01024"].path(tiny_suite))
    first = extract_snapshot(good, ExtractionSettings(main_halo="first"))
    massive = extract_snapshot(good, ExtractionSettings(main_halo="most_massive"))
    assert first["halo_number"] == massive["halo_number"] == 0
    assert np.array_equal(first["feh"], massive["feh"])
    with pytest.raises(SnapshotError) as info:
        extract_snapshot(good, ExtractionSettings(mstar_limit=1e3))
    assert info.value.kind == ErrorKind.EXCLUDED_MASS and info.value.status == "excluded"
    assert good in str(info.value)
    with pytest.raises(ValueError, match="main_halo"):
        ExtractionSettings(main_halo="biggest")


def test_store_refuses_other_settings(tiny_suite, tiny_store, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(tiny_store[0], store)
    with pytest.raises(StoreError, match="extracted with"):
        extract_suite(tiny_suite, store, settings=ExtractionSettings(mstar_limit=1e9),
                      n_workers=1, progress=False)


def test_open_store_dataset_shape(tiny_store):
    ds = open_store(tiny_store[0])
    assert ds.counts.dims == ("galaxy", "feh_bin", "ofe_bin")
    assert ds.counts.shape[1:] == (64, 64) and ds.feh_edges.shape == (65,)
    assert ds.mstar.attrs["units"] == "Msol" and ds.time.attrs["units"] == "Gyr"
    assert isinstance(ds.counts.data, object) and not isinstance(ds.counts.data, np.ndarray)
    assert xr.open_zarr(tiny_store[0], group="galaxies", consolidated=True).sizes["galaxy"] == \
        ds.sizes["galaxy"]


def test_memoized_unit_projection_equals_pynbody():
    import subprocess
    import sys

    code = """
import numpy as np
from pynbody import units
cases = [("2e4 kpc a", ["km", "km s^-1", "Msol", "a", "h"]), ("Msol", ["kpc", "Msol", "a", "h"]),
         ("km s^-1 a", ["kpc a", "km s^-1 a", "9.99e14 Msol", "a", "h"]), ("Gyr", ["kpc", "km s^-1"]),
         ("K", ["kpc", "km s^-1", "Msol", "K", "a", "h"])]
def run():
    return [units.Unit(u).dimensional_project(b) for u, b in cases]
plain = run()
from casbi_store.store.extract import memoize_unit_projection
memoize_unit_projection(); memoize_unit_projection()
cached_first, cached_again = run(), run()
cached_again[0][0] = 99  # callers may mutate what they get back
for a, b, c in zip(plain, cached_first, run()):
    assert list(a) == list(b) == list(c), (a, b, c)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


# ---- stars outside a fixed binning (issue 22) ---------------------------------------------------

def _fixed(feh_range: tuple[float, float], ofe_range: tuple[float, float]):
    from casbi_store.cli.extract import binning_from_options

    return binning_from_options((0.01, 99.99), feh_range, ofe_range, 64)


def _sims(suite: Path, to: Path, *simulations: str) -> Path:
    """A suite of some of ``suite``'s simulations (added to ``to`` if it exists): fewer
    snapshots to extract."""
    for sim in simulations:
        shutil.copytree(suite / sim, to / sim)
    return to


def _ls(store) -> str:
    """What `casbi-store ls` prints (``cli.ls`` prints this; importing every command is slow)."""
    from casbi_store.store.io import describe_store

    return describe_store(store)


def _kinds(store) -> dict[str, tuple[str, str]]:
    err = open_errors(store)
    return {str(n): (str(k), str(m)) for n, k, m in zip(err.name.values, err.kind.values,
                                                          err.message.values, strict=True)}


def test_fixed_ranges_that_miss_every_star_are_outside_binning_not_ok(tiny_suite, tiny_store,
                                                                      dask_client, tmp_path):
    """The issue's case: an [O/Fe] range far above the suite's stars. No snapshot passes as ok
    with an empty histogram: each is an error of its own kind, saying the ranges and its stars'."""
    from casbi_store.store.validate import validate_store

    suite = _sims(tiny_suite, tmp_path / "suite", "g1.80e09", "g9.45e09")
    store = tmp_path / "missed.zarr"
    summary = extract_suite(suite, store, binning=_fixed((-2.6, 0.2), (1.6, 2.3)),
                            client=dask_client, progress=False)
    galaxies = {g for g in open_store(tiny_store[0]).galaxy.values if g.startswith(("g1.8", "g9.45"))}
    assert summary.ok == 0 and summary.n_stars == 0 and summary.failed == 2 + len(galaxies) == 9
    assert (f"WARNING        {len(galaxies)} snapshots have every star outside the fixed binning "
            "ranges (outside_binning)") in summary.as_text()
    kinds = _kinds(store)
    outside = {n for n, (k, _) in kinds.items() if k == ErrorKind.OUTSIDE_BINNING}
    assert outside == galaxies
    message = kinds["g1.80e09.00256"][1]
    assert message.startswith(str(suite / "g1.80e09" / "g1.80e09.00256"))
    assert "[Fe/H] -2.6..0.2, [O/Fe] 1.6..2.3 (its stars: [Fe/H] -1.97..-0.97, [O/Fe] -0.33..0.31)" \
        in message
    listing = _ls(store)
    assert "galaxies     none" in listing and "outside_binning" in listing
    assert validate_store(store) == []


def test_fixed_ranges_that_cut_the_suite_count_and_warn(tiny_suite, dask_client, tmp_path):
    """[Fe/H] from -0.9 cuts the suite: the stars left out are counted per galaxy (as numpy
    counts them on the stored stars), the summary and `ls` warn, a galaxy wholly below is
    outside_binning; a store written before n_star_outside opens, lists and validates, and the
    next run (new rows, same binning) stores it for every galaxy."""
    suite = _sims(tiny_suite, tmp_path / "suite", "g1.80e09")
    store = tmp_path / "cut.zarr"
    binning = _fixed((-0.9, 0.5), (-1.0, 0.5))
    summary = extract_suite(suite, store, binning=binning, client=dask_client, progress=False)

    def check(ds) -> tuple[int, int]:
        stars = zarr.open_consolidated(store, mode="r", zarr_format=2)["stars"]
        feh, ofe = (stars[k][:].astype(np.float64) for k in ("feh", "ofe"))
        inside = (feh >= -0.9) & (feh <= 0.5) & (ofe >= -1.0) & (ofe <= 0.5)
        for k, name in enumerate(ds.galaxy.values):
            rows = slice(int(ds.star_offset[k]), int(ds.star_offset[k] + ds.n_star[k]))
            assert int(ds.n_star_outside[k]) == int((~inside[rows]).sum()), name
            assert int(ds.n_star_outside[k]) == int(ds.n_star[k] - ds.counts[k].sum()), name
        return int((~inside).sum()), len(feh)

    ds = open_store(store).load()
    out, total = check(ds)
    assert out > 0.01 * total and "g1.80e09.00256" not in ds.galaxy.values
    assert _kinds(store)["g1.80e09.00256"][0] == ErrorKind.OUTSIDE_BINNING
    text = summary.as_text()
    line = (f"outside        {out:,} of {total:,} stars ({out / total:.2%}) in "
            f"{int((ds.n_star_outside > 0).sum())} of {ds.sizes['galaxy']} galaxies fall outside")
    assert line in text
    assert "WARNING        " in text and "have more than half of their stars outside" in text
    assert "g1.80e09.00512 (" in text and "(more than 1%)" in text
    listing = _ls(store)
    assert line.replace("outside        ", "outside      ") in listing
    assert "of the stars fall outside the binning ranges (more than 1%)" in listing

    # as a store written before n_star_outside existed
    shutil.rmtree(store / "histograms" / "n_star_outside")
    consolidate_whole_store(store)
    assert "n_star_outside" not in open_store(store)
    assert line.replace("outside        ", "outside      ") in _ls(store)
    assert validate_store(store) == []
    _sims(tiny_suite, suite, "g9.43e10")
    summary = extract_suite(suite, store, binning=binning, client=dask_client, progress=False)
    assert summary.ok == 3 and summary.binning_version == 1
    check(open_store(store).load())
    assert validate_store(store) == []


def test_workers_write_the_chunks_and_the_client_only_metadata(tiny_suite, dask_client, tmp_path,
                                                               monkeypatch):
    """Issue 20 §2: the star and histogram chunks of a commit are written by the workers (their
    writes are not this process's); the client writes metadata, galaxy rows and small per-galaxy
    arrays. The store equals one committed by this process alone (no cluster), bit for bit."""
    from casbi_store.store import commit

    log = tmp_path / "client-writes.log"
    monkeypatch.setenv(commit.LOG_ENV, str(log))  # this process only: the workers started before
    store = tmp_path / "workers.zarr"
    extract_suite(tiny_suite, store, client=dask_client, progress=False)
    written = [line.split()[1] for line in log.read_text().splitlines()]
    big = [k for k in written if k.startswith(("stars/", "histograms/counts/",
                                               "histograms/mass_weighted/"))]
    assert big and all(k.rsplit("/", 1)[-1] in commit.META_FILES for k in big), big
    assert validate_store(store) == []
    chunks = [p.name for p in (store / "stars" / "feh").iterdir() if not p.name.startswith(".")]
    assert chunks == ["0"]
    # the same outcomes committed by this process alone, writing every chunk itself
    here = tmp_path / "here.zarr"
    stage_everything(tiny_suite, Path(f"{here}.staging"), ExtractionSettings())
    monkeypatch.delenv(commit.LOG_ENV)
    extract_suite(tiny_suite, here, staged_only=True, progress=False)
    assert_same_arrays(store_arrays(store), store_arrays(here))
    digests = [commit.committed_digests(s) for s in (store, here)]
    assert digests[0] == digests[1] and digests[0]["stars/feh"]
