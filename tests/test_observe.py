"""``casbi-store observe``: survey tables (CSV, FITS) binned exactly like the store, the drops
counted per reason, the quality-cut grammar, alpha proxies, and every refusal named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from astropy.table import MaskedColumn, Table
from conftest import store_with_set

from casbi_store.apply.infer import read_histogram
from casbi_store.apply.observe import (
    FEW_STARS_FACTOR,
    MIN_STARS,
    ColumnNames,
    ObservationError,
    load_binning_source,
    observe_table,
    ofe_mapping,
    read_observation,
    write_observation,
)
from casbi_store.apply.quality import QualityExpressionError, parse_quality
from casbi_store.cli import main
from casbi_store.learn.trainer import TrainConfig, train
from casbi_store.store import schema as S
from casbi_store.store.binning import Binning
from casbi_store.store.io import store_attrs

DOC = (Path(__file__).resolve().parents[1] / "docs" / "STORE.md").read_text()


def survey(n: int = 2000, seed: int = 0, binning: Binning | None = None) -> Table:
    """An APOGEE-like table: NaNs, masked values, flags, a signal-to-noise column, stars outside
    the range and stars exactly on bin edges (including the last edge, which np.histogram2d keeps)."""
    rng = np.random.default_rng(seed)
    feh = rng.normal(-1.0, 0.8, n)
    ofe = rng.normal(0.1, 0.25, n)
    if binning is not None:
        fe, of = binning.feh_edges, binning.ofe_edges
        feh[:64], ofe[:64] = rng.choice(fe, 64), rng.choice(of, 64)
        feh[64], ofe[64] = fe[-1], of[-1]
        feh[65], ofe[65] = fe[0], of[0]
    feh[70:80] = np.nan
    ofe[80:85] = np.inf
    t = Table({"FE_H": feh, "O_FE": ofe, "FE_H_ERR": rng.uniform(0.01, 0.08, n),
               "O_FE_ERR": rng.uniform(0.02, 0.12, n), "SNR": rng.uniform(10, 300, n),
               "TEFF": rng.uniform(4000, 6500, n), "ASPCAPFLAG": (rng.uniform(size=n) < 0.08) * 4})
    t["O_FE"] = MaskedColumn(t["O_FE"], mask=np.arange(n) % 97 == 5)  # missing values
    return t


def clean(n: int, binning: Binning, seed: int = 1) -> Table:
    """``n`` good stars, all inside the binning's ranges."""
    rng = np.random.default_rng(seed)
    return Table({"FE_H": rng.uniform(*binning.feh_range, n),
                  "O_FE": rng.uniform(*binning.ofe_range, n)})


def expected(t: Table, binning: Binning, where) -> tuple[np.ndarray, dict]:
    """The histogram and drops computed independently with plain numpy."""
    feh = np.asarray(t["FE_H"], dtype=float)
    ofe = np.ma.filled(t["O_FE"].astype(float), np.nan)
    finite = np.isfinite(feh) & np.isfinite(ofe)
    good = np.asarray(t["ASPCAPFLAG"]) == 0
    passed = where(t)
    kept = finite & good & passed
    # stars are compared with the edges at the store's float32 precision (binning.bin_stars)
    f32 = lambda v: v.astype(np.float32).astype(np.float64)  # noqa: E731
    hist, _, _ = np.histogram2d(f32(feh[kept]), f32(ofe[kept]),
                                bins=[binning.feh_edges, binning.ofe_edges])
    dropped = {"not_finite": int((~finite).sum()), "flagged": int((finite & ~good).sum()),
               "quality_cut": int((finite & good & ~passed).sum()),
               "outside_range": int(kept.sum() - hist.sum())}
    return hist, dropped


@pytest.fixture(scope="module")
def store_binning(tiny_store) -> tuple[Path, Binning]:
    store = tiny_store[0]
    return store, Binning.from_dict(store_attrs(str(store))[S.ATTR_BINNING])


@pytest.fixture(scope="module")
def model(tiny_store, tmp_path_factory) -> Path:
    """A real (one-epoch) nsub model trained on a composed set of the tiny store."""
    folder = tmp_path_factory.mktemp("observe_model")
    store = store_with_set(tiny_store[0], folder, name="t", n_sub_min=3, n_sub_max=6,
                           train_per_n=40, test_per_n=5, seed=2)
    cfg = TrainConfig(epochs=1, batch_size=64, hidden_features=8, num_transforms=1,
                      embedding_dim=8, conv_channels=(4,), patience=5)
    train(store, "t", "v1", "nsub", folder / "nsub", cfg)
    return folder / "nsub"


@pytest.mark.parametrize("suffix", [".csv", ".fits"])
def test_table_round_trip_equals_numpy_histogram2d(store_binning, tmp_path, capsys, suffix):
    store, binning = store_binning
    t = survey(binning=binning)
    table = tmp_path / f"stars{suffix}"
    t.write(table)
    out = tmp_path / "obs.nc"
    assert main(["observe", str(table), "--binning", str(store), "--out", str(out),
                 "--flag-col", "ASPCAPFLAG", "--where", "SNR > 50 and not (TEFF >= 6000)"]) == 0
    hist, dropped = expected(t, binning, lambda t: (np.asarray(t["SNR"]) > 50)
                             & ~(np.asarray(t["TEFF"]) >= 6000))
    x, attrs = read_observation(out)
    np.testing.assert_array_equal(x, hist)
    np.testing.assert_array_equal(read_histogram(out), hist)  # infer reads it as a histogram
    assert attrs["dropped"] == dropped and sum(dropped.values()) + hist.sum() == len(t)
    assert min(dropped.values()) > 0  # every reason occurs in this table
    assert attrs["columns"] == {"feh": "FE_H", "ofe": "O_FE", "feh_err": "FE_H_ERR",
                                "ofe_err": "O_FE_ERR", "flag": "ASPCAPFLAG"}
    assert attrs["quality_expression"] == "SNR > 50 and not (TEFF >= 6000)"
    assert attrs["binning_source"]["kind"] == "store"
    assert attrs["binning_source"]["binning"] == binning.to_dict()
    assert attrs["ofe_mapping"] == "[O/Fe]" and attrs["ofe_caveat"] == ""
    assert attrs["n_rows"] == len(t) and len(attrs["table_sha256"]) == 64
    assert attrs["provenance"]["versions"]["astropy"] != "not installed"
    ds = xr.open_dataset(out)
    assert int(ds[S.OBS_N.name]) == hist.sum() == ds.sizes[S.DIM_STAR]
    np.testing.assert_array_equal(ds[S.FEH_CENTERS.name], (binning.feh_edges[1:]
                                                           + binning.feh_edges[:-1]) / 2)
    # error summary: percentiles of the binned stars' errors, independently
    feh_b = ds["star_feh"].values
    assert np.all((feh_b >= binning.feh_range[0]) & (feh_b <= binning.feh_range[1]))
    pct = ds[S.OBS_ERROR_PERCENTILES.name].sel(abundance="feh").values
    np.testing.assert_allclose(pct, np.percentile(ds["star_feh_err"].values.astype(float),
                                                  [5, 16, 50, 84, 95]))
    printed = capsys.readouterr().out
    assert f"not finite {dropped['not_finite']}" in printed and "quality cut" in printed
    assert not list(tmp_path.glob("*.partial"))


def test_model_binning_and_the_training_star_counts(model, tmp_path):
    source = load_binning_source(model)
    edges = np.load(model / "transform.npz")
    np.testing.assert_array_equal(source.binning.feh_edges, edges["feh_edges"])
    np.testing.assert_array_equal(source.binning.ofe_edges, edges["ofe_edges"])
    meta = json.loads((model / "config.json").read_text())
    x = zarr.open_array(meta["store"], path="training_sets/t/v1/train/x", mode="r", zarr_format=2)
    totals = np.asarray(x[:]).sum(axis=(1, 2))  # a small set: every halo is read
    assert source.training_stars["halos_read"] == len(totals)
    assert source.training_stars["p5"] == pytest.approx(np.percentile(totals, 5))
    assert source.training_stars["median"] == pytest.approx(np.median(totals))

    t = survey(n=3000, binning=source.binning)
    t.write(tmp_path / "stars.fits")
    obs = observe_table(tmp_path / "stars.fits", source, ColumnNames(flag="ASPCAPFLAG"))
    hist, _ = expected(t, source.binning, lambda t: np.ones(len(t), bool))
    np.testing.assert_array_equal(obs.counts, hist)
    needed = max(MIN_STARS, int(np.ceil(np.percentile(totals, 5) / FEW_STARS_FACTOR)))
    assert obs.min_stars[0] == needed and "t:v1" in obs.min_stars[1]

    clean(needed - 1, source.binning).write(tmp_path / "few.csv")
    with pytest.raises(ObservationError, match="far too few") as err:
        observe_table(tmp_path / "few.csv", source)
    assert "few.csv" in str(err.value) and "t:v1" in str(err.value)
    assert f"{np.percentile(totals, 5):.0f}" in str(err.value)
    assert observe_table(tmp_path / "few.csv", source, min_stars=5).n_obs == needed - 1
    # the model's binning recorded; a model of another binning refuses the observation
    out = write_observation(obs, tmp_path / "obs.nc")
    _, attrs = read_observation(out, edges["feh_edges"], edges["ofe_edges"])
    assert attrs["binning_source"]["kind"] == "model"
    with pytest.raises(ObservationError, match="other feh_edges"):
        read_observation(out, edges["feh_edges"] + 0.1, edges["ofe_edges"])


def test_alpha_proxy_is_recorded_with_its_caveat(store_binning, tmp_path, capsys):
    store, binning = store_binning
    t = survey()
    t.rename_columns(["O_FE", "O_FE_ERR"], ["MG_FE", "MG_FE_ERR"])
    t.write(tmp_path / "apogee.fits")
    out = tmp_path / "obs.nc"
    assert main(["observe", str(tmp_path / "apogee.fits"), "--binning", str(store),
                 "--ofe-col", "mg_fe", "--out", str(out)]) == 0
    _, attrs = read_observation(out)
    assert attrs["columns"]["ofe"] == "MG_FE" and attrs["columns"]["ofe_err"] == "MG_FE_ERR"
    assert attrs["ofe_mapping"].startswith("[Mg/Fe] (column MG_FE) stands in for [O/Fe]")
    assert "0.1 dex" in attrs["ofe_caveat"]
    assert "caveat:" in capsys.readouterr().out
    t.rename_column("MG_FE", "alpha_fe")
    t.write(tmp_path / "galah.csv")
    obs = observe_table(tmp_path / "galah.csv", store, ColumnNames(ofe="alpha_fe"))
    assert obs.ofe_mapping.startswith("[alpha/Fe]") and obs.ofe_caveat
    assert ofe_mapping("ALPHA_M")[0].startswith("[alpha/M]") and "[X/M]" in ofe_mapping("ALPHA_M")[1]
    assert ofe_mapping("C_FE") == ("[C/Fe] (column C_FE) taken as [O/Fe]", ofe_mapping("C_FE")[1])
    assert "neither O nor an alpha element" in ofe_mapping("C_FE")[1]
    assert ofe_mapping("o_fe") == ofe_mapping("[O/Fe]") == ("[O/Fe]", "")


def test_refusals_name_the_file_and_the_problem(store_binning, tmp_path, capsys):
    store, binning = store_binning
    t = survey()
    t.write(tmp_path / "s.csv")
    cases = {
        "missing column": (["--ofe-col", "MG_FE"], "no column 'MG_FE'.*FE_H, O_FE, FE_H_ERR"),
        "missing flag": (["--flag-col", "STARFLAG"], "no column 'STARFLAG'"),
        "missing cut column": (["--where", "snr_k > 3"], "no column 'snr_k'"),
        "empty after cuts": (["--where", "SNR > 1e6"], "no star left after the cuts"),
        "bad grammar": (["--where", "__import__('os').system('touch HACKED')"], "not allowed"),
        "not NetCDF": (["--where", "SNR > 1e6"], "name it \\*.nc"),
    }
    for name, (options, message) in cases.items():
        out = tmp_path / (f"{name}.nc" if name != "not NetCDF" else "obs.h5")
        rc = main(["observe", str(tmp_path / "s.csv"), "--binning", str(store),
                   "--out", str(out), *options])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, name
        assert err.startswith("casbi-store: error:"), name
        assert re.search(message, err), (name, err)
        if name not in ("bad grammar", "not NetCDF"):
            assert "s.csv" in err, name
        assert not out.exists()
    assert not Path("HACKED").exists() and not (tmp_path / "HACKED").exists()

    def refused(table: Table, match: str, file: str = "x.csv", **kw) -> None:
        table.write(tmp_path / file, overwrite=True)
        with pytest.raises(ObservationError, match=match) as err:
            observe_table(tmp_path / file, store, **kw)
        assert file in str(err.value)

    linear = survey()
    linear["FE_H"] = 1.25e-3 * 10 ** np.clip(np.nan_to_num(linear["FE_H"]), -5, 1)  # X_Fe
    refused(linear, r"looks like linear abundances.*\(0, 0.1\)")
    log_eps = survey()
    log_eps["FE_H"] = 7.5 + np.asarray(log_eps["FE_H"])  # A(Fe) = 12 + log N_Fe/N_H
    refused(log_eps, r"median 6\.\d+, far outside \[-5.0, 1.0\]")
    ratio = survey()
    ratio["O_FE"] = 10 ** np.ma.filled(ratio["O_FE"], 0.0) * 6.72  # linear O/Fe mass ratio
    refused(ratio, r"'O_FE' \(\[O/Fe\]\) has median")
    refused(survey()[:0], "the table has no rows")
    refused(clean(MIN_STARS - 1, binning), "far too few.*at least 10 required")
    outside = survey()
    outside["FE_H"] = binning.feh_range[1] + 0.5
    refused(outside, "none of the .* stars left after the cuts lies inside the binning ranges")
    text = survey()
    text["SNR"] = np.array(["high"] * len(text))
    refused(text, "column 'SNR' is not numeric", where="SNR > 5")
    refused(survey(), "no column 'OFE_X' for \\[O/Fe\\]", columns=ColumnNames(ofe="OFE_X"))
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  = nonsense" * 10)
    with pytest.raises(ObservationError, match="broken.fits: not readable as a fits table"):
        observe_table(tmp_path / "broken.fits", store)
    (tmp_path / "s.parquet").write_bytes(b"")
    with pytest.raises(ObservationError, match="s.parquet: unsupported table format"):
        observe_table(tmp_path / "s.parquet", store)
    with pytest.raises(ObservationError, match="neither a model folder"):
        observe_table(tmp_path / "s.csv", tmp_path)
    with pytest.raises(ObservationError, match="not an observation file"):
        xr.Dataset({"counts": (("a", "b"), np.zeros((64, 64)))}).to_netcdf(tmp_path / "h.nc")
        read_observation(tmp_path / "h.nc")


def test_quality_grammar_accepts_comparisons_and_refuses_code():
    cols = {"snr": np.array([10.0, 60.0, np.nan, 80.0, 200.0]),
            "TEFF": np.array([4000.0, 5000.0, 5000.0, 6000.0, 4500.0]),
            "[M/H]": np.array([-1.0, -0.5, 0.0, -2.5, 0.1])}

    def run(text: str) -> list[bool]:
        q = parse_quality(text)
        return q.evaluate(lambda n: cols[n], 5).tolist()

    assert run("snr > 50") == [False, True, False, True, True]
    assert run("snr != 60") == [True, False, False, True, True]  # NaN fails every comparison
    assert run("50 < snr <= 100") == [False, True, False, True, False]
    assert run("snr > 50 and (TEFF < 5500 or `[M/H]` < -2)") == [False, True, False, True, True]
    assert run("not snr > 50 or TEFF == 4.5e3") == [True, False, True, False, True]
    assert run("`[M/H]` >= -1") == [True, True, True, False, True]
    assert parse_quality("snr > 3 and `[M/H]` < 0").columns == ("snr", "[M/H]")
    for bad in ("__import__('os')", "__import__('os').system('true') == 0", "snr.real > 1",
                "snr + 1 > 2", "snr > '5'", "snr", "snr > 5 and TEFF", "1 < 2", "snr in [1]",
                "cols['snr'] > 1", "(lambda: 1)() > 0", "snr > 5 if TEFF else 1", "snr >",
                "snr > `", "snr is None", "snr > True"):
        with pytest.raises(QualityExpressionError):
            parse_quality(bad)


def test_observation_names_are_documented():
    names = [f.name for f in S.OBSERVATION_FIELDS] + list(S.OBSERVATION_ATTRS)
    names += [S.ATTR_OBSERVATION_VERSION, S.DIM_ABUNDANCE, S.DIM_PERCENTILE]
    assert [n for n in names if f"`{n}`" not in DOC] == []
