"""The surrogate simulator on the tiny store: a real flow trained in seconds on real stars."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from scipy.spatial.distance import jensenshannon
from scipy.stats import gaussian_kde, wasserstein_distance

from casbi_store.cli import main
from casbi_store.store.io import as_strings, galaxy_stars, open_stars, open_store
from casbi_store.surrogate.data import holdout_simulations, read_galaxies, read_star_rows, sample_rows
from casbi_store.surrogate.metrics import (
    binned_median,
    classifier_auc,
    js_divergence,
    knee_feh,
    nearest_theta,
    wasserstein_1d,
)
from casbi_store.surrogate.model import SurrogateConfig, load_surrogate, train_surrogate
from casbi_store.surrogate.prior import OutsideSupportError, ThetaPrior
from casbi_store.surrogate.validation import figure_paths, validate_surrogate

TINY = dict(epochs=4, stars_per_galaxy=128, batch_size=256, transforms=2, hidden_features=16,
            bins=4, theta_noise=0.1, holdout_fraction=0.2, seed=3)


@pytest.fixture(scope="module")
def tiny_model(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("surrogate") / "model"
    train_surrogate(tiny_store[0], out, SurrogateConfig(**TINY), progress=False)
    return out


def _centres(edges):
    return (edges[1:] + edges[:-1]) / 2


def test_star_rows_stream_chunk_by_chunk_and_weigh_galaxies_equally(tiny_store):
    store = tiny_store[0]
    gal = read_galaxies(store)
    rows = sample_rows(gal.n_star, gal.star_offset, 50, np.random.default_rng(0))
    per_galaxy = rows.reshape(len(gal), 50)
    assert np.all(per_galaxy >= gal.star_offset[:, None])
    assert np.all(per_galaxy < (gal.star_offset + gal.n_star)[:, None])
    stars = open_stars(store).load()
    got = read_star_rows(store, rows, chunk=1000)  # many chunks, rows in random order
    assert np.array_equal(got[:, 0], stars["feh"].values[rows])
    assert np.array_equal(got[:, 1], stars["ofe"].values[rows])
    name = str(gal.name[2])
    own = galaxy_stars(store, name)
    assert set(got[100:150, 0]) <= set(own["feh"].values)  # galaxy 2's draws are its own stars


def test_holdout_is_by_simulation_seeded_and_checked(tiny_store):
    gal = read_galaxies(tiny_store[0])
    a = holdout_simulations(gal.simulation, 0.4, seed=5)
    assert a == holdout_simulations(gal.simulation, 0.4, seed=5)
    assert len(a) == 2 and set(a) <= set(gal.simulation)
    assert holdout_simulations(gal.simulation, 0.5, 0, explicit=(str(gal.simulation[0]),)) == [
        str(gal.simulation[0])]
    with pytest.raises(ValueError, match="not in the store"):
        holdout_simulations(gal.simulation, 0.2, 0, explicit=("g0.00e00",))
    with pytest.raises(ValueError, match="none to train on"):
        holdout_simulations(gal.simulation, 0, 0, explicit=tuple(set(gal.simulation)))


def test_model_folder_and_fitted_star_count_relation(tiny_model, tiny_store):
    meta = json.loads((tiny_model / "config.json").read_text())
    assert {"config.json", "prior.json", "model.pt", "checkpoint.pt", "history.json"} <= {
        p.name for p in tiny_model.iterdir()}
    state = torch.load(tiny_model / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    ds = open_store(tiny_store[0])
    assert meta["binning"]["feh_edges"] == ds["feh_edges"].values.tolist()
    assert meta["binning"]["version"] == ds.attrs["binning"]["version"]
    train = np.isin(np.asarray(as_strings(ds["simulation"].values)), meta["train_simulations"])
    assert not set(meta["train_simulations"]) & set(meta["holdout_simulations"])
    slope, intercept = np.polyfit(np.log10(ds["mstar"].values[train]),
                                  np.log10(ds["n_star"].values[train]), 1)
    assert meta["star_count"]["slope"] == pytest.approx(slope)
    assert meta["star_count"]["intercept"] == pytest.approx(intercept)
    history = json.loads((tiny_model / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["heldout_loss"]) for h in history)


def test_sampled_planes_have_shape_counts_and_mass_scaling(tiny_model):
    sur = load_surrogate(tiny_model)
    theta = np.array([[6.0, 9.6, 8.0], [8.5, 10.6, 8.0]])
    n = sur.n_stars(theta)
    rel = sur.meta["star_count"]
    assert np.array_equal(n, np.rint(10 ** (rel["intercept"] + rel["slope"] * theta[:, 0])))
    assert n[1] > n[0]  # more massive theta -> more stars
    hist = sur.sample_histograms(theta, np.random.default_rng(7))
    assert hist.shape == (2, 64, 64) and hist.dtype == np.int32 and hist.min() >= 0
    # the same draws binned independently with numpy: the store's edges, np.histogram2d semantics
    stars = sur.sample_stars(theta, n, np.random.default_rng(7))
    assert len(stars) == n.sum()
    fe, of = np.asarray(sur.meta["binning"]["feh_edges"]), np.asarray(sur.meta["binning"]["ofe_edges"])
    for k, (a, b) in enumerate(zip(np.r_[0, n.cumsum()[:-1]], n.cumsum(), strict=True)):
        ref, _, _ = np.histogram2d(stars[a:b, 0].astype(np.float64), stars[a:b, 1], bins=[fe, of])
        assert np.array_equal(hist[k], ref)
    # binned counts follow the relation: at most n, and most of the stars land in the plane
    assert np.all(hist.sum(axis=(1, 2)) <= n)
    assert np.all(hist.sum(axis=(1, 2)) >= 0.5 * n)
    again = sur.sample_histograms(theta, np.random.default_rng(7))
    other = sur.sample_histograms(theta, np.random.default_rng(8))
    assert np.array_equal(hist, again) and not np.array_equal(hist, other)
    fixed = sur.sample_histograms(theta[:1], 0, n_stars=1000)
    assert fixed.sum() <= 1000


def test_resume_after_interruption_equals_an_uninterrupted_run(tiny_store, tmp_path):
    store = tiny_store[0]
    cfg = dict(TINY, epochs=3)
    train_surrogate(store, tmp_path / "whole", SurrogateConfig(**cfg), progress=False)
    train_surrogate(store, tmp_path / "cut", SurrogateConfig(**dict(cfg, epochs=1)), progress=False)
    # a crash while writing the next checkpoint leaves a partial temporary file behind
    (tmp_path / "cut" / "checkpoint.tmp").write_bytes(b"\x00partial")
    (tmp_path / "cut" / "model.pt").unlink()  # as if killed before the end
    with pytest.raises(FileNotFoundError, match="incomplete.*model.pt.*epoch 1"):
        load_surrogate(tmp_path / "cut")
    train_surrogate(store, tmp_path / "cut", SurrogateConfig(**cfg), progress=False)
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((tmp_path / "whole" / "history.json").read_text())
    hb = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [(h["train_loss"], h["heldout_loss"]) for h in ha] == [
        (h["train_loss"], h["heldout_loss"]) for h in hb]
    with pytest.raises(ValueError, match="other transforms"):
        train_surrogate(store, tmp_path / "cut", SurrogateConfig(**dict(cfg, transforms=3)),
                        progress=False)


def test_metrics_against_scipy():
    rng = np.random.default_rng(0)
    edges = np.linspace(-2.5, 0.5, 65)
    for _ in range(5):
        p = rng.poisson(rng.uniform(0, 5, (64, 64)))
        q = rng.poisson(rng.uniform(0, 5, (64, 64)))
        assert js_divergence(p, q) == pytest.approx(
            jensenshannon(p.ravel(), q.ravel(), base=2) ** 2, rel=1e-9)
        c = _centres(edges)
        assert wasserstein_1d(p.sum(1), q.sum(1), edges) == pytest.approx(
            wasserstein_distance(c, c, p.sum(1), q.sum(1)), rel=1e-9)
    assert js_divergence(p, p) == pytest.approx(0)
    a, b = np.zeros((64, 64)), np.zeros((64, 64))
    a[0, 0], b[5, 5] = 3, 7
    assert js_divergence(a, b) == pytest.approx(1.0)
    assert wasserstein_1d(a.sum(1), b.sum(1), edges) == pytest.approx(5 * (edges[1] - edges[0]))


def test_knee_found_where_the_plateau_bends():
    fe, of = np.linspace(-3, 0, 65), np.linspace(-0.5, 0.5, 65)
    fc, oc = _centres(fe), _centres(of)
    plane = np.zeros((64, 64))
    for i, x in enumerate(fc):
        y = 0.3 if x < -1.5 else 0.3 - 0.5 * (x + 1.5)
        plane[i, np.argmin(abs(oc - y))] = 10
    knee = knee_feh(plane, fe, of)
    assert -1.5 < knee < -1.1  # where [O/Fe] has fallen 0.1 dex below 0.3
    flat = np.zeros((64, 64))
    flat[:, 50] = 10
    assert np.isnan(knee_feh(flat, fe, of))
    # the last plateau column already below the level and as low as the next: the knee is that
    # column, finite and without a division by zero (the demo's surrogate stage warned of one)
    from casbi_store.surrogate.metrics import PLATEAU_COLUMNS

    step = np.zeros((64, 64))
    low = np.argmin(abs(oc - 0.0))
    for i in range(64):
        step[i, np.argmin(abs(oc - 0.3)) if i < PLATEAU_COLUMNS - 1 else low] = 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert knee_feh(step, fe, of) == pytest.approx(fc[PLATEAU_COLUMNS - 1])


def test_nearest_theta_standardises_on_a_constructed_case():
    # log M* spreads 0.14 dex, tau 3.5 Gyr: in raw units the query is nearest to row 2 (0.2 dex
    # and 1.5 Gyr away), standardised to row 0 (same M*, 3.5 Gyr = one standard deviation away)
    train = np.array([[6.0, 10.0, 2.0], [6.0, 10.0, 12.0], [6.2, 10.0, 7.0], [5.8, 10.0, 7.0]])
    query = np.array([[6.0, 10.0, 5.5]])
    std = train.std(0)
    std[std == 0] = 1
    raw = np.argmin(((train - query) ** 2).sum(1))
    scaled = np.argmin((((train - query) / std) ** 2).sum(1))
    assert (raw, scaled) == (2, 0)  # the case tells the two rules apart
    assert nearest_theta(train, query)[0] == 0
    assert nearest_theta(train, query, scale=np.ones(3))[0] == 2


def test_prior_is_a_truncated_kde_with_scotts_rule(tiny_store):
    theta = read_galaxies(tiny_store[0]).theta
    prior = ThetaPrior.fit(theta, seed=0)
    kde = gaussian_kde(theta.T)
    assert prior.factor == pytest.approx(len(theta) ** (-1 / 7))
    draws = prior.sample(500, np.random.default_rng(1))
    assert draws.shape == (500, 3) and prior.in_support(draws).all()
    assert np.array_equal(draws, prior.sample(500, np.random.default_rng(1)))
    inside = draws[:10]
    assert np.allclose(prior.log_prob(inside), kde.logpdf(inside.T) - prior.log_mass_inside)
    assert prior.log_mass_inside <= 0
    far = np.array([[12.0, 13.0, 5.0]])
    assert prior.log_prob(far)[0] == -np.inf
    with pytest.raises(OutsideSupportError, match="outside the prior's support"):
        prior.check(far)
    assert prior.check(far, allow_outside=True)
    again = ThetaPrior.from_dict(json.loads(json.dumps(prior.to_dict())))
    assert np.allclose(again.log_prob(inside), prior.log_prob(inside))


def test_validation_metrics_baseline_and_figures(tiny_model, tiny_store, tmp_path):
    result = validate_surrogate(tiny_model, tmp_path / "val", seed=0, density_stars=2000, n_figure=2)
    saved = json.loads((tmp_path / "val" / "validation.json").read_text())
    assert saved["summary"] == result["summary"]
    ds = open_store(tiny_store[0]).load()
    meta = json.loads((tiny_model / "config.json").read_text())
    sims = np.asarray(as_strings(ds["simulation"].values))
    train = np.flatnonzero(np.isin(sims, meta["train_simulations"]))
    held = np.flatnonzero(np.isin(sims, meta["holdout_simulations"]))
    assert result["n_heldout_snapshots"] == len(held) > 0
    theta = np.stack([np.log10(ds["mstar"].values), np.log10(ds["mdm"].values), ds["time"].values], 1)
    std = theta[train].std(0)
    fe, of = ds["feh_edges"].values, ds["ofe_edges"].values
    names = np.asarray(as_strings(ds["galaxy"].values))
    for row, g in zip(result["snapshots"], held, strict=True):
        d = [np.sqrt((((theta[t] - theta[g]) / std) ** 2).sum()) for t in train]
        best = train[int(np.argmin(d))]
        assert row["galaxy"] == names[g] and row["baseline_galaxy"] == names[best]
        p, q = ds["counts"].values[g], ds["counts"].values[best]
        assert row["baseline"]["jsd"] == pytest.approx(jensenshannon(p.ravel(), q.ravel(), base=2) ** 2)
        c = _centres(fe)
        assert row["baseline"]["w1_feh"] == pytest.approx(
            wasserstein_distance(c, c, p.sum(1), q.sum(1)))
        co = _centres(of)
        assert row["baseline"]["w1_ofe"] == pytest.approx(
            wasserstein_distance(co, co, p.sum(0), q.sum(0)))
        assert row["n_star_true"] == p.sum()
    jsd = result["summary"]["jsd"]
    assert jsd["median_baseline"] == pytest.approx(
        np.median([r["baseline"]["jsd"] for r in result["snapshots"]]))
    assert 0 <= jsd["win_fraction_surrogate"] <= 1
    strip = result["interpolation_strip"]
    assert len(strip["theta"]) == 7 and len(strip["consecutive_jsd"]) == 6
    paths = figure_paths(tmp_path / "val")
    assert set(paths) == {"planes", "strip", "physics"}
    assert all(p.stat().st_size > 1000 for p in paths.values())


def test_cli_sample_and_its_errors(tiny_model, tiny_store, tmp_path, capsys):
    out = tmp_path / "blocks.nc"
    assert main(["surrogate", "sample", str(tiny_model), "--theta", "7.0", "10.0", "8.0", "--n", "3",
                 "--out", str(out)]) == 0
    with xr.open_dataset(out) as ds:
        assert ds["counts"].shape == (3, 64, 64)
        assert np.allclose(ds["theta"].values, [[7.0, 10.0, 8.0]] * 3)
    assert main(["surrogate", "sample", str(tiny_model), "--from-prior", "4", "--out", str(out)]) == 0
    with xr.open_dataset(out) as ds:
        assert ds["counts"].shape == (4, 64, 64) and ds.attrs["theta_source"] == "prior"
    capsys.readouterr()
    assert main(["surrogate", "sample", str(tiny_model), "--theta", "12", "13", "8",
                 "--out", str(out)]) == 2
    assert "outside the prior's support" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "prior.json").unlink()
    assert main(["surrogate", "sample", str(broken), "--from-prior", "1", "--out", str(out)]) == 2
    assert "incomplete surrogate model folder, missing prior.json" in capsys.readouterr().err
    assert main(["surrogate", "train", str(tmp_path / "nowhere.zarr"), "--out",
                 str(tmp_path / "m")]) == 2
    assert "nowhere.zarr" in capsys.readouterr().err


def test_classifier_two_sample_test_tells_apart_only_different_planes():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 4)
    rate = np.full((64, 64), 0.05)
    rate[20:30, 20:30] = 3.0
    shifted = np.roll(rate, 6, axis=0)
    a = rng.poisson(rate, (40, 64, 64))
    same = classifier_auc(a, rng.poisson(rate, (40, 64, 64)), groups)
    different = classifier_auc(a, rng.poisson(shifted, (40, 64, 64)), groups)
    assert different["auc"] > 0.95 and different["folds"] == 5
    assert 0.2 < same["auc"] < 0.8
    assert classifier_auc(a[:4], a[:4], np.zeros(4))["auc"] is None  # one simulation: no test


def test_binned_median_interpolates_within_the_bin():
    rng = np.random.default_rng(2)
    edges = np.linspace(-3, 1, 65)
    stars = rng.normal(-1.2, 0.4, 200_000)
    hist, _ = np.histogram(stars, edges)
    assert binned_median(hist, edges) == pytest.approx(np.median(stars), abs=0.005)
    assert binned_median(np.r_[0, 2, 0, 0], np.arange(5.0)) == pytest.approx(1.5)
    assert np.isnan(binned_median(np.zeros(4), np.arange(5.0)))
