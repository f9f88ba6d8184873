"""Composition sources (real, surrogate, mixed) and the survey observation model, on the tiny
store with a tiny surrogate trained in seconds (real flow, real Zarr, real Dask)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import xarray as xr
from scipy import sparse

from casbi_store import open_stars, open_store
from casbi_store.compose import ComposeError, ComposeSpec, compose
from casbi_store.compose.halos import BlockData, halo_stars
from casbi_store.compose.sources import SYNTHETIC, get_source, source_names
from casbi_store.store.binning import Binning
from casbi_store.store.io import store_attrs
from casbi_store.store.validate import validate_store
from casbi_store.surrogate.model import SurrogateConfig, train_surrogate

TINY_SURROGATE = dict(epochs=2, stars_per_galaxy=64, batch_size=256, transforms=1,
                      hidden_features=8, bins=4, theta_noise=0.1, holdout_fraction=0.2, seed=3)
SMALL = dict(name="s", version="v1", n_sub_min=2, n_sub_max=3, train_per_n=10, test_per_n=4, seed=7)
# the checksum of SMALL_REAL composed by compose.py before sources existed (commit 54285f5)
SMALL_REAL = dict(name="a", version="v1", n_sub_min=3, n_sub_max=8, train_per_n=120, test_per_n=20,
                  seed=11)
SMALL_REAL_CHECKSUM = "251d2cad8a4b08389d0fbf44460bdd86227a9a620a97aec23d33c619c2eae2e8"


@pytest.fixture(scope="module")
def model(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("sources") / "surrogate"
    train_surrogate(tiny_store[0], out, SurrogateConfig(**TINY_SURROGATE), progress=False)
    return out


@pytest.fixture
def store(tiny_store, tmp_path):
    path = tmp_path / "store.zarr"
    shutil.copytree(tiny_store[0], path)
    return path


def split(store, name, part, version="v1"):
    return xr.open_zarr(store, group=f"training_sets/{name}/{version}/{part}", consolidated=True).load()


def test_registry_names_the_three_sources():
    assert set(source_names()) >= {"real", "surrogate", "mixed"}
    with pytest.raises(ComposeError, match="unknown composition source 'sky'"):
        get_source("sky")


def test_real_source_unchanged(store):
    spec = ComposeSpec(**SMALL_REAL)
    assert set(spec.identity()) == {  # the identity real sets always had: no new keys
        "name", "version", "scheme", "seed", "split_by", "test_fraction", "val_fraction", "n_sub_min",
        "n_sub_max", "train_per_n", "test_per_n", "alpha", "budget", "n_train", "n_test",
        "noise_feh", "noise_ofe"}
    entry = compose(store, spec, progress=False)
    assert entry["checksum"] == SMALL_REAL_CHECKSUM and "source" not in entry
    assert ComposeSpec(**SMALL_REAL, source="real").identity() == spec.identity()


def test_surrogate_set_shapes_provenance_and_determinism(store, model, tmp_path):
    spec = ComposeSpec(**SMALL, source="surrogate", surrogate=str(model))
    other = tmp_path / "other.zarr"
    shutil.copytree(store, other)
    a = compose(store, spec, progress=False)
    b = compose(other, spec, progress=False)
    assert a["checksum"] == b["checksum"]  # two composes, one set
    assert a["counts"] == {"train": 16, "val": 4, "test": 8}
    meta = json.loads((model / "config.json").read_text())
    sur = a["surrogate"]
    assert sur["folder"] == str(model.resolve()) and sur["training_store"] == meta["store"]
    assert len(sur["config_sha256"]) == 64 and len(sur["model_sha256"]) == 64
    prior = json.loads((model / "prior.json").read_text())
    assert sur["prior"]["low"] == prior["low"] and sur["prior"]["n_points"] == len(prior["points"])
    assert a["source"]["kind"] == "surrogate" and a["spec"]["source"] == "surrogate"
    binning = Binning.from_dict(store_attrs(str(store))["binning"])
    for part in ("train", "val", "test"):
        ds = split(store, "s", part)
        m, n_sub, theta = ds.members.values, ds.n_sub.values, ds.theta.values
        assert ds.x.shape == (a["counts"][part], 64, 64)
        assert set(np.unique(m)) <= {SYNTHETIC, -1}
        assert np.array_equal((m == SYNTHETIC).sum(axis=1), n_sub) and set(n_sub) <= {2, 3}
        assert a["source"]["synthetic_blocks"][part] == n_sub.sum()
        blocks = theta[m == SYNTHETIC]
        log_theta = np.column_stack([np.log10(blocks[:, 0]), np.log10(blocks[:, 1]), blocks[:, 2]])
        assert np.all((log_theta >= prior["low"]) & (log_theta <= prior["high"]))
        assert np.isnan(theta[m == -1]).all()
        assert np.all(np.diff(np.where(m == SYNTHETIC, theta[..., 0], -np.inf), axis=1) <= 0)
        assert np.all(ds.x.values.sum(axis=(1, 2)) > 0)
        assert ds.x.shape[1:] == (binning.spec.n_bins, binning.spec.n_bins)
    assert validate_store(store) == []


def test_mixed_set_has_the_fraction_and_the_real_sums(store, model):
    spec = ComposeSpec(**SMALL, source="mixed", surrogate=str(model), surrogate_fraction=0.3)
    entry = compose(store, spec, progress=False)
    gal = open_store(store).load()
    for part in ("train", "val", "test"):
        ds = split(store, "s", part)
        m = ds.members.values
        blocks = int((m != -1).sum())
        assert (m == SYNTHETIC).sum() == round(0.3 * blocks) == entry["source"]["synthetic_blocks"][part]
        real = np.stack([gal.counts.values[r[r >= 0]].sum(axis=0) for r in m])
        extra = ds.x.values - real  # what the surrogate blocks added
        assert (extra >= 0).all()
        assert np.array_equal(extra.sum(axis=(1, 2)) > 0, (m == SYNTHETIC).any(axis=1))
        np.testing.assert_array_equal(ds.theta.values[m >= 0][:, 0], gal.mstar.values[m[m >= 0]])
    other = compose(store, ComposeSpec(**{**SMALL, "version": "v2"}, source="mixed",
                                       surrogate=str(model), surrogate_fraction=0.3), progress=False)
    assert other["checksum"] == entry["checksum"]  # deterministic
    assert validate_store(store) == []


def test_a_set_larger_than_the_library_reuses_its_entries(store, model):
    """40 surrogate blocks from a library of 5: every halo sums distinct entries, each entry's
    plane is the one the library samples on its own (the same seed), and the entry counts."""
    from casbi_store.compose.sources.library import BlockLibrary
    from casbi_store.surrogate import load_surrogate

    spec = ComposeSpec(**SMALL, source="surrogate", surrogate=str(model), surrogate_library=5)
    entry = compose(store, spec, progress=False)
    assert entry["source"]["library"]["size"] == 5 and entry["source"]["library"]["sampled"] == 5
    binning = Binning.from_dict(store_attrs(str(store))["binning"])
    library = BlockLibrary.draw(load_surrogate(model), 5, spec.seed)
    library.sample(np.arange(5), binning)
    planes = library.counts.toarray().reshape(5, 64, 64)
    used = set()
    for part in ("train", "val", "test"):
        ds = split(store, "s", part)
        for members, theta, x in zip(ds.members.values, ds.theta.values, ds.x.values, strict=True):
            rows = theta[members == SYNTHETIC]
            k = [int(np.flatnonzero((library.theta == r).all(axis=1))[0]) for r in rows]
            assert len(set(k)) == len(k)  # distinct entries within a halo
            np.testing.assert_array_equal(x, planes[k].sum(axis=0))
            used.update(k)
    assert used == set(range(5))


OBSERVATION = dict(n_obs_min=20, n_obs_max=200, feh_err=0.05, feh_err_spread=0.3, ofe_err=0.03,
                   ofe_err_spread=0.3)


def _block_data(store, spec):
    ds = open_store(store)
    stars = {k: open_stars(store)[k].values.astype(np.float64) for k in ("feh", "ofe", "mass")}
    binning = Binning.from_dict(store_attrs(str(store))["binning"])
    return BlockData(sparse.csr_matrix((1, 1)), binning, spec, stars, ds.star_offset.values,
                     ds.n_star.values), stars, ds


def test_observation_counts_are_n_obs_less_the_stars_outside(store):
    spec = ComposeSpec(**SMALL, observation=OBSERVATION)
    entry = compose(store, spec, progress=False)
    assert entry["source"]["observation"]["n_obs_max"] == 200
    data, stars, ds = _block_data(store, spec)
    n_star = ds.n_star.values
    for k, part in enumerate(("train", "val", "test")):
        out = split(store, "s", part)
        n_obs, m = out.n_obs.values, out.members.values
        have = np.array([n_star[r[r >= 0]].sum() for r in m])
        assert np.all(n_obs == np.minimum(n_obs, have)) and np.all(n_obs <= 200)
        assert np.all((n_obs >= 20) | (n_obs == have))
        # replay the chunk's observed stars, bin them independently with numpy
        observed = list(halo_stars(m, None, data, [spec.seed, k, 0]))
        edges = data.binning.feh_edges, data.binning.ofe_edges
        for i, (feh, ofe, _) in enumerate(observed):
            assert len(feh) == n_obs[i]
            feh32, ofe32 = feh.astype(np.float32), ofe.astype(np.float32)
            outside = ((feh32 < edges[0][0]) | (feh32 > edges[0][-1])
                       | (ofe32 < edges[1][0]) | (ofe32 > edges[1][-1])).sum()
            assert out.x.values[i].sum() == n_obs[i] - outside
            direct, _, _ = np.histogram2d(feh32, ofe32, bins=[edges[0].astype(np.float32),
                                                              edges[1].astype(np.float32)])
            assert abs(direct.sum() - out.x.values[i].sum()) <= 2  # float32 edges at the rims
    assert len(set(split(store, "s", "train").n_obs.values)) > 3  # N_obs varies
    assert validate_store(store) == []


def test_observation_errors_widen_marginals_by_sigma_squared(store):
    gal = open_store(store).load()
    big = int(np.argmax(gal.n_star.values))
    median, spread = 0.2, 0.4
    spec = ComposeSpec(**SMALL, observation=dict(n_obs=10**7, feh_err=median, feh_err_spread=spread,
                                                 ofe_err=median, ofe_err_spread=spread))
    data, stars, _ = _block_data(store, spec)
    members = np.array([[big, -1]])
    (feh, ofe, _), = halo_stars(members, None, data, [1, 2, 3])
    lo, n = gal.star_offset.values[big], gal.n_star.values[big]
    assert len(feh) == n  # N_obs capped at the halo's stars: every star once
    expected = median**2 * np.exp(2 * spread**2)  # E[sigma^2] of the log-normal errors
    for observed, true in ((feh, stars["feh"][lo:lo + n]), (ofe, stars["ofe"][lo:lo + n])):
        grown = observed.var() - true.var()
        assert grown == pytest.approx(expected, rel=0.15), (grown, expected, n)


def test_observation_selection_and_mass_weighting(store):
    gal = open_store(store).load()
    big = int(np.argmax(gal.n_star.values))
    data, stars, _ = _block_data(store, ComposeSpec(**SMALL))
    lo, n = gal.star_offset.values[big], gal.n_star.values[big]
    cut = float(np.median(stars["feh"][lo:lo + n]))
    members = np.array([[big]])
    spec = ComposeSpec(**SMALL, observation=dict(n_obs=50, feh_min=cut))
    data = BlockData(data.hist_csr, data.binning, spec, data.stars, data.offsets, data.n_star)
    (feh, _, _), = halo_stars(members, None, data, [0])
    assert len(feh) == 50 and feh.min() >= cut
    # one block of 1000 stars, half of mass 1, half of mass 99: a mass-weighted draw of 100
    # takes about 99% heavy stars (without replacement: a little less), a number draw about 50%
    toy = {"feh": np.linspace(-1, 0, 1000), "ofe": np.zeros(1000),
           "mass": np.where(np.arange(1000) % 2 == 0, 1.0, 99.0)}
    share = {}
    for weight in ("mass", "number"):
        spec = ComposeSpec(**SMALL, observation=dict(n_obs=100, weight=weight))
        toy_data = BlockData(data.hist_csr, data.binning, spec, toy, np.array([0]), np.array([1000]))
        (_, _, mass), = halo_stars(np.array([[0]]), None, toy_data, [0])
        assert len(mass) == 100
        share[weight] = (mass == 99.0).mean()
    assert share["mass"] > 0.95 and 0.35 < share["number"] < 0.65


def test_observation_set_with_selection_is_empty_below_the_cut(store):
    spec = ComposeSpec(**SMALL, observation=dict(n_obs=100, feh_min=-1.0))
    compose(store, spec, progress=False)
    out = split(store, "s", "train")
    edges = Binning.from_dict(store_attrs(str(store))["binning"]).feh_edges
    below = edges[1:] < -1.0  # [Fe/H] bins wholly below the selection
    assert below.any() and out.x.values[:, below].sum() == 0


def test_mixed_with_observation_is_deterministic(store, model, tmp_path):
    spec = dict(SMALL, source="mixed", surrogate=str(model), surrogate_fraction=0.5,
                observation=dict(n_obs_min=10, n_obs_max=100, feh_err=0.1))
    a = compose(store, ComposeSpec(**spec), progress=False)
    b = compose(store, ComposeSpec(**{**spec, "version": "v2"}), progress=False)
    assert a["checksum"] == b["checksum"]
    out = split(store, "s", "test")
    assert (out.n_obs.values >= 10).all() and (out.n_obs.values <= 100).all()


@pytest.mark.parametrize("text, message", [
    ("observation: {n_obs: -5}", "observation: need 1 <= n_obs_min <= n_obs_max, not -5, -5"),
    ("observation: {n_obs_min: 10}", "observation: missing n_obs"),
    ("observation: {n_obs: 10, feh_err: -0.1}", "feh_err must be >= 0"),
    ("observation: {n_obs: 10, weight: light}", "weight must be one of"),
    ("observation: {n_obs: 10, feh_min: 0, feh_max: -1}", "need feh_min < feh_max"),
    ("observation: {n_obs: 10, sigma: 1}", "unknown key(s) ['sigma']"),
    ("observation: 12", "observation: must be a mapping"),
    ("source: mixed\nsurrogate: MODEL\nsurrogate_fraction: 1.5", "surrogate_fraction must be in [0, 1]"),
    ("source: mixed\nsurrogate: MODEL\nsurrogate_fraction: -0.1", "surrogate_fraction must be in [0, 1]"),
    ("surrogate_fraction: 0.2", "surrogate_fraction applies to sources that mix"),
    ("source: surrogate", "needs surrogate: the surrogate model folder"),
    ("source: surrogate\nsurrogate: /nowhere/model",
     "surrogate: no surrogate model folder at /nowhere/model"),
    ("source: sky", "source must be one of"),
    ("source: surrogate\nsurrogate: MODEL\nn_sub_max: 50\nsurrogate_library: 20",
     "surrogate_library (20) must be >= n_sub_max (50)"),
    ("source: mixed\nsurrogate: MODEL\nsurrogate_library: 0", "surrogate_library must be >= 1"),
    ("surrogate_library: 10", "surrogate_library applies to sources surrogate and mixed"),
])
def test_spec_errors_name_the_file_and_key(tmp_path, model, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text("name: a\nversion: v1\n" + text.replace("MODEL", str(model)) + "\n")
    with pytest.raises(ComposeError) as err:
        ComposeSpec.from_yaml(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_an_incomplete_surrogate_folder_is_refused_naming_it(store, model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    (broken / "model.pt").unlink()
    with pytest.raises(ComposeError, match="broken"):
        compose(store, ComposeSpec(**SMALL, source="surrogate", surrogate=str(broken)), progress=False)
