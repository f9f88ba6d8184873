"""Issue 10 §2 and §4: the normalised representation (a model that sees the normalised histogram
and N_obs as a separate condition, not the total count) and mock survey tables of held-out halos
through observe -> infer, on a tiny observation-model set with models trained for one epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from astropy.table import Table

from casbi_store.apply.infer import infer, read_input
from casbi_store.apply.observe import observe_table
from casbi_store.apply.survey import make_survey_tables
from casbi_store.cli import main
from casbi_store.cli.config import ConfigError, load_pipeline
from casbi_store.learn.estimators import NsubClassifier, build_npe


@pytest.fixture(scope="module")
def trained(tiny_survey):
    """(store, [classifier, theta]) of the normalised representation on an observation-model
    set (``conftest.tiny_survey``, shared with the report's survey section)."""
    return tiny_survey


def test_normalised_networks_see_the_shape_and_log_n_obs_only():
    """Scaling a histogram by c changes the normalised networks' input only through log10 N_obs;
    the log1p (counts) networks see the scale in every pixel."""
    rng = np.random.default_rng(0)
    mean, std = rng.normal(0, 1, (64, 64)), rng.uniform(0.5, 2, (64, 64))
    extra = {"extra_mean": np.zeros(1), "extra_std": np.ones(1)}  # log10 N_obs as it is
    x = torch.as_tensor(rng.poisson(3.0, (2, 1, 64, 64)), dtype=torch.float32)
    shape = NsubClassifier(mean, std, 2, 9, channels=(4,), width=8, representation="normalised",
                           extra_stats=extra).eval()
    counts = NsubClassifier(mean, std, 2, 9, channels=(4,), width=8)
    image, n_obs = shape.representation(x)
    image7, n_obs7 = shape.representation(7 * x)
    assert torch.allclose(shape.net(image), shape.net(image7), atol=1e-5)  # the CNN: shape alone
    assert torch.allclose(n_obs7 - n_obs, torch.full((2, 1), np.log10(7.0)), atol=1e-5)
    assert not torch.allclose(counts.net[:-3].eval()(x), counts.net[:-3](7 * x), atol=1e-3)
    npe = build_npe(mean, std, rng.normal(size=(50, 1)), (1, 64, 64), hidden_features=8,
                    num_transforms=1, embedding_dim=8, conv_channels=(4,), seed=0,
                    representation="normalised", extra_stats=extra)
    features = npe.embedding_net.eval()
    a, b = features(x), features(7 * x)
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-5)  # the image features
    assert torch.allclose(b[:, -1] - a[:, -1], torch.full((2,), np.log10(7.0)), atol=1e-5)
    assert torch.allclose(a[:, -1], torch.log10(x.sum(dim=(1, 2, 3))))  # log10 N_obs


def test_representation_recorded_and_n_obs_refused_for_counts(trained):
    store, models = trained
    for m in models:
        assert json.loads((m.path / "config.json").read_text())["config"]["representation"] == "normalised"
        assert m.representation == "normalised"
    x = np.ones((64, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="n_obs must be a number >= 1"):
        infer(models, x, n_samples=10, n_obs=0)
    models[0].meta["config"]["representation"] = "log1p"
    try:
        with pytest.raises(ValueError, match="normalised representation only"):
            infer(models, x, n_samples=10, n_obs=500)
    finally:
        models[0].meta["config"]["representation"] = "normalised"


def _interval(samples, name: str, level: float) -> tuple[float, float]:
    var = samples[name]
    values = var.sel(rank=1).values if "rank" in var.dims else var.values
    values = values[np.isfinite(values)]
    return tuple(np.percentile(values, [50 * (1 - level), 100 - 50 * (1 - level)]))


def test_same_halo_at_300_and_3000_stars_gives_consistent_posteriors(trained, tmp_path):
    store, models = trained
    posteriors = {}
    for n in (300, 3000):
        table = make_survey_tables(store, "sky", "v1", tmp_path / str(n), n_tables=1, seed=5,
                                   observation=dict(n_obs=n, feh_err=0.05, ofe_err=0.03))[0]
        assert table.n_obs == n  # the halo has the stars: N_obs is not capped
        obs = read_input(table.path, models[0])
        assert obs.attrs["n_obs"] == obs.counts.sum() > 0.95 * n
        posteriors[n] = infer(models, obs, n_samples=1000, seed=1, ranks=1)
    assert posteriors[300].attrs["representations"] == '["normalised", "normalised"]'
    for name in ("n_sub", "log10_mstar", "log10_mdm", "tau"):
        lo_a, hi_a = _interval(posteriors[300], name, 0.68)
        lo_b, hi_b = _interval(posteriors[3000], name, 0.68)
        assert lo_a <= hi_b and lo_b <= hi_a, name  # the 68% intervals overlap
        wide_a = np.subtract(*_interval(posteriors[300], name, 0.95)[::-1])
        wide_b = np.subtract(*_interval(posteriors[3000], name, 0.95)[::-1])
        assert wide_b <= 1.25 * wide_a + 1e-9, name  # more stars: narrower or about as wide

    # at fixed N_obs the histogram's scale does not matter: a density (sum 1) with n_obs=N
    # gives the posterior of the counts of N stars
    counts = obs.counts
    n_obs = float(counts.sum())
    direct = infer(models, counts, n_samples=200, seed=2, ranks=1)
    for scaled in (counts / n_obs, 13 * counts):
        again = infer(models, scaled, n_samples=200, seed=2, ranks=1, n_obs=n_obs)
        for name in direct.data_vars:
            np.testing.assert_allclose(again[name].values, direct[name].values, atol=2e-3,
                                       err_msg=name)


def test_survey_tables_of_held_out_halos_through_observe_and_infer(trained, tiny_survey_run,
                                                                   tmp_path):
    """``casbi-store survey`` (``conftest.tiny_survey_run``: 2 tables, 100 samples, 2 ranks):
    tables of test halos (FITS with error columns, the truth beside them) -> observe -> infer,
    and the coverage summary agrees with its per-table rows."""
    store, models = trained
    out, printed = tiny_survey_run
    assert "truth inside the central credible intervals over 2 survey tables" in printed
    assert (out / "observation.nc").is_file() and (out / "posterior.png").is_file()
    truth = json.loads((out / "tables" / "truth.json").read_text())
    assert truth["observation"]["n_obs_max"] == 3000 and len(truth["tables"]) == 2
    test = xr.open_zarr(store, group="training_sets/sky/v1/test", consolidated=True)
    for t in truth["tables"]:
        fits = Table.read(t["path"])
        assert fits.colnames == ["FE_H", "O_FE", "FE_H_ERR", "O_FE_ERR"]
        assert len(fits) == t["n_obs"] and 100 <= t["n_obs"] <= 3000
        assert (np.asarray(fits["FE_H_ERR"]) > 0).all()
        theta = test.theta.values[t["halo"]]
        assert t["n_sub"] == int(test.n_sub.values[t["halo"]]) == len(t["theta"])
        np.testing.assert_allclose(np.asarray(t["theta"])[:, 0], np.log10(theta[:t["n_sub"], 0]))
        obs = observe_table(t["path"], models[0].path)  # the error columns are found by name
        assert obs.columns["feh_err"] == "FE_H_ERR"
        assert obs.n_obs + obs.dropped["outside_range"] == t["n_obs"]
    result = json.loads((out / "posteriors" / "coverage.json").read_text())
    cov = result["coverage"]
    assert result["n_tables"] == 2 and {"n_sub", "log10_mstar_1", "tau_2"} <= set(cov)
    assert "tau_3" not in cov  # --ranks 2
    for label, c in cov.items():  # the summary is the rows' truth-in-interval fractions
        rows = [r[label] for r in result["tables"] if label in r]
        assert c["n"] == len(rows) >= 1
        assert c["0.68"] == np.mean([r[1] <= r[0] <= r[2] for r in rows])
        assert c["0.95"] == np.mean([r[3] <= r[0] <= r[4] for r in rows])
        assert all(r[3] <= r[1] <= r[2] <= r[4] for r in rows)  # 95% holds the 68% interval
    assert len(list((out / "posteriors").glob("survey-*.nc"))) == 2
    for r in result["tables"]:  # each table's score is its posterior's; the count sums them
        attrs = xr.open_dataset(out / "posteriors" / (Path(r["path"]).stem + ".nc")).attrs
        assert r["misspecification_score"] == pytest.approx(attrs["misspecification_score"])
        assert r["misspecification_flagged"] == bool(attrs["misspecification_flagged"])
    assert result["misspecification_flagged"] == sum(r["misspecification_flagged"]
                                                     for r in result["tables"])
    assert f"misspecification: {result['misspecification_flagged']} of 2 tables" in printed
    n_test = test.sizes["halo"]
    with pytest.raises(ValueError, match=f"has {n_test} halos, fewer than the {n_test + 1} tables"):
        make_survey_tables(store, "sky", "v1", tmp_path / "many", n_tables=n_test + 1)


@pytest.mark.parametrize("stage, message", [
    ("{set: sky}", "set must be NAME:VERSION"),
    ("{set: 'sky:v1', models: [m], observation: {n_obs: 10, sigma: 1}}", r"unknown key\(s\) \['sigma'\]"),
    ("{set: 'sky:v1', models: [m], tables: 0}", "tables, samples and ranks must be >= 1"),
])
def test_survey_stage_is_validated(tmp_path, stage, message):
    p = tmp_path / "p.yaml"
    p.write_text(f"extract: {{suite: s}}\nsurvey: {stage}\n")
    with pytest.raises(ConfigError, match=rf"p.yaml: survey: .*{message}"):
        load_pipeline(p)


@pytest.mark.filterwarnings("ignore::casbi_store.learn.misspecification.MisspecificationWarning")
def test_n_obs_outside_the_training_range_warns_in_infer_and_observe(trained, tmp_path,
                                                                      capsys):
    """A normalised model knows the N_obs range of its training halos (config.json, recorded at
    training; the set's observation model for older folders); infer and observe warn outside
    it: a NObsRangeWarning from Python, one line and rc 0 from the commands."""
    import warnings

    import zarr

    from casbi_store.apply.observe import NObsRangeWarning
    from casbi_store.learn.modelfolder import N_OBS_RANGE, n_obs_range

    store, models = trained
    x = zarr.open_array(store, path="training_sets/sky/v1/train/x", mode="r")
    totals = np.asarray(x[:]).sum(axis=(1, 2))  # independent: every training halo's star count
    lo, hi, origin = n_obs_range(models[1].meta)  # widened to the set's spec, 100..3000
    assert (lo, hi) == (min(totals.min(), 100), max(totals.max(), 3000))
    assert "training halos and observation model of sky:v1" in origin
    older = {**models[1].meta}
    del older[N_OBS_RANGE]  # a folder from before the range was recorded: the set's spec
    assert n_obs_range(older)[:2] == (100, 3000) and "observation model" in n_obs_range(older)[2]
    log1p = {**models[1].meta, "config": {**models[1].meta["config"], "representation": "log1p"}}
    assert n_obs_range(log1p) is None  # the total is the N_obs: no separate condition

    table = make_survey_tables(store, "sky", "v1", tmp_path / "t", n_tables=1, seed=5,
                               observation=dict(n_obs=int(lo) // 3, feh_err=0.05))[0]
    obs = read_input(table.path, models[0])  # read_input leaves the warning to infer
    with pytest.warns(NObsRangeWarning, match=rf"N_obs {obs.counts.sum():g} lies outside the "
                                              rf"N_obs range {lo:g}..{hi:g} that .*nsub_classifier was"):
        infer(models, obs, n_samples=20, ranks=1)
    with pytest.warns(NObsRangeWarning, match=f"N_obs {10 * hi:g} lies outside"):
        infer(models, obs, n_samples=20, ranks=1, n_obs=10 * hi)
    with pytest.warns(NObsRangeWarning, match="outside the N_obs range"):
        observe_table(table.path, models[1].path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NObsRangeWarning)  # inside the range: silent
        infer(models, obs, n_samples=20, ranks=1, n_obs=(lo + hi) / 2)

    for command in (["observe", table.path, "--binning", str(models[1].path), "--out",
                     str(tmp_path / "obs.nc")],
                    ["infer", *(str(m.path) for m in models), "--histogram",
                     str(tmp_path / "obs.nc"), "--samples", "20", "--ranks", "1",
                     "--out", str(tmp_path / "post.nc")]):
        assert main(command) == 0
        stderr = capsys.readouterr().err
        lines = [ln for ln in stderr.splitlines() if "warning: N_obs" in ln]
        assert len(lines) == 1 and lines[0].startswith("casbi-store: warning: N_obs "), stderr
        assert f"{lo:g}..{hi:g}" in lines[0] and "Traceback" not in stderr
