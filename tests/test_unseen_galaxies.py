"""Issue 23's protocol: choices made on unseen simulations, halos whose top block varies, and the
external condition as a pipeline stage."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import xarray as xr

from casbi_store import open_store
from casbi_store.cli.config import ConfigError, load_pipeline
from casbi_store.compose import ComposeError, ComposeSpec, compose
from casbi_store.compose.sources.real import draw_uniform_varied


@pytest.fixture
def store(tiny_store, tmp_path):
    path = tmp_path / "store.zarr"
    shutil.copytree(tiny_store[0], path)
    return path


def _members(store, name, part):
    ds = xr.open_zarr(store, group=f"training_sets/{name}/v1/{part}", consolidated=True).load()
    m = ds.members.values
    return set(m[m >= 0].tolist())


def test_validation_on_simulations_of_its_own(store):
    """val_split simulations: train, validation and test halos come from three disjoint sets of
    simulations, and the halo counts are those of the halo split."""
    base = dict(name="vs", version="v1", n_sub_min=2, n_sub_max=3, train_per_n=20, test_per_n=5,
                seed=3, split_by="simulation", test_fraction=0.3, val_fraction=0.3)
    entry = compose(store, ComposeSpec(**base, val_split="simulations"))
    halo_split = compose(store, ComposeSpec(**{**base, "name": "vh"}))
    assert entry["counts"] == halo_split["counts"] == {"train": 28, "val": 12, "test": 10}
    sims = np.asarray([str(s) for s in open_store(store).simulation.values])
    used = {part: set(sims[list(_members(store, "vs", part))]) for part in ("train", "val", "test")}
    assert used["train"] and used["val"] and used["test"]
    assert not used["train"] & used["val"] and not used["train"] & used["test"]
    assert not used["val"] & used["test"]
    # the halo split's validation galaxies are training galaxies (new combinations of them)
    assert _members(store, "vh", "val") <= _members(store, "vh", "train") | _members(store, "vh", "val")
    assert set(sims[list(_members(store, "vh", "val"))]) & set(sims[list(_members(store, "vh", "train"))])


def test_validation_simulations_by_mass_span_the_range(store):
    """val_split simulations_by_mass: the validation simulations are one per stratum of the
    training simulations ordered by their most massive galaxy (a random draw can take only
    dwarfs), still disjoint from training and test; the halo counts are unchanged."""
    base = dict(name="vm", version="v1", n_sub_min=2, n_sub_max=3, train_per_n=20, test_per_n=5,
                seed=3, split_by="simulation", test_fraction=0.2, val_fraction=0.5)
    entry = compose(store, ComposeSpec(**base, val_split="simulations_by_mass"))
    assert entry["counts"] == compose(store, ComposeSpec(**{**base, "name": "vr"}))["counts"]
    ds = open_store(store)
    sims = np.asarray([str(s) for s in ds.simulation.values])
    mstar = ds.mstar.values
    used = {part: set(sims[list(_members(store, "vm", part))]) for part in ("train", "val", "test")}
    assert not used["train"] & used["val"] and not used["val"] & used["test"]
    pool = sorted(used["train"] | used["val"], key=lambda s: mstar[sims == s].max())
    n_val = len(used["val"])
    assert n_val == max(1, round(0.5 * len(pool))) >= 2
    step = len(pool) / n_val
    strata = sorted(int(pool.index(s) // step) for s in used["val"])
    assert strata == list(range(n_val))  # one from each stratum: the lightest and the heaviest
    assert ComposeSpec(**base, val_split="simulations_by_mass").identity()["val_split"] == \
        "simulations_by_mass"


def test_spec_options_validate_and_defaults_keep_the_identity():
    spec = ComposeSpec(name="a", version="v1")
    assert "val_split" not in spec.identity() and "simulation_dropout" not in spec.identity()
    assert ComposeSpec(name="a", version="v1", split_by="simulation",
                       val_split="simulations").identity()["val_split"] == "simulations"
    with pytest.raises(ComposeError, match="val_split simulations needs split_by simulation"):
        ComposeSpec(name="a", version="v1", val_split="simulations")
    with pytest.raises(ComposeError, match="val_split must be one of"):
        ComposeSpec(name="a", version="v1", val_split="sims")
    with pytest.raises(ComposeError, match="simulation_dropout must be in"):
        ComposeSpec(name="a", version="v1", simulation_dropout=1.0)
    with pytest.raises(ComposeError, match="applies to scheme uniform"):
        ComposeSpec(name="a", version="v1", scheme="mass_budget", simulation_dropout=0.5)


def test_dropping_simulations_varies_the_top_block():
    """With dropout, a halo's blocks come from the simulations it kept (where they suffice), so
    the suite's largest simulation no longer tops nearly every halo."""
    sims = np.repeat(np.arange(10), 8)  # 10 simulations x 8 snapshots
    pool = np.arange(80)
    rng = np.random.default_rng(0)
    plain = np.stack([np.isin(9, sims[h]) for h in
                      np.random.default_rng(0).permuted(np.tile(pool, (2000, 1)), axis=1)[:, :30]])
    dropped = draw_uniform_varied(pool, sims, np.zeros(80), 30, 2000, 0.5, 0.0, rng)
    assert dropped.shape == (2000, 30)
    assert all(len(set(h)) == 30 for h in dropped)  # distinct blocks
    has_last = np.array([9 in sims[h] for h in dropped])
    assert plain.mean() > 0.95 and 0.4 < has_last.mean() < 0.75  # ~1/2 kept, more to fill in
    # where the kept simulations hold enough galaxies, only they are used
    n_sims = np.array([len(set(sims[h])) for h in dropped])
    assert np.median(n_sims) < 8
    with pytest.raises(ComposeError, match="needs 90 building blocks"):
        draw_uniform_varied(pool, sims, np.zeros(80), 90, 5, 0.5, 0.0, rng)


def test_external_stage_validates(tmp_path):
    good = tmp_path / "p.yaml"
    good.write_text("""
workdir: w
mock: {preset: tiny, seed: 1}
extract: {store: store.zarr}
external:
  mock: {preset: tiny, seed: 2}
  set: {name: ext, version: v1, n_sub_min: 2, n_sub_max: 3, train_per_n: 1, test_per_n: 2}
""")
    pipe = load_pipeline(good)
    assert pipe.external.set.name == "ext" and pipe.external.mock.seed == 2
    assert pipe.external.against(pipe.workdir) == (pipe.workdir / "external" / "store.zarr", "ext", "v1")
    for text, message in [
        ("external: {mock: {preset: tiny}}", "expected keys 'mock' and 'set'"),
        ("external: {mock: {preset: huge}, set: {name: e, version: v1}}", "preset must be one of"),
        ("external: {mock: {preset: tiny}, set: {name: e, version: x}}", "version 'x'"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"workdir: w\nmock: {{preset: tiny}}\nextract: {{store: s.zarr}}\n{text}\n")
        with pytest.raises(ConfigError, match=message) as err:
            load_pipeline(bad)
        assert str(bad) in str(err.value)


def test_folds_hold_every_simulation_out_once(store):
    held = []
    for fold in range(2):
        compose(store, ComposeSpec(name=f"fold{fold}", version="v1", n_sub_min=2, n_sub_max=2,
                                   train_per_n=4, test_per_n=2, seed=1, split_by="simulation",
                                   folds=2, fold=fold))
        sims = np.asarray([str(s) for s in open_store(store).simulation.values])
        test = set(sims[list(_members(store, f"fold{fold}", "test"))])
        train = set(sims[list(_members(store, f"fold{fold}", "train"))])
        assert test and not test & train
        held.append(test)
    assert not held[0] & held[1]
    assert held[0] | held[1] == set(sims[list(_members(store, "fold0", "train") | _members(
        store, "fold0", "test") | _members(store, "fold0", "val"))])
    with pytest.raises(ComposeError, match="folds needs split_by simulation"):
        ComposeSpec(name="a", version="v1", folds=3, fold=3, split_by="simulation")


def test_tilted_halos_lean_light_or_heavy():
    """mass_tilt: per halo, heavier (or lighter) blocks are favoured; on average no lean."""
    log_mstar = np.linspace(5, 9, 200)
    pool, sims = np.arange(200), np.arange(200)
    rng = np.random.default_rng(1)
    halos = draw_uniform_varied(pool, sims, log_mstar, 20, 3000, 0.0, 1.0, rng)
    assert all(len(set(h)) == 20 for h in halos)
    mean_mass = log_mstar[halos].mean(axis=1)
    plain = log_mstar[draw_uniform_varied(pool, sims, log_mstar, 20, 3000, 0.0, 0.0, rng)].mean(axis=1)
    assert mean_mass.std() > 3 * plain.std()  # populations vary from halo to halo
    assert abs(mean_mass.mean() - plain.mean()) < 0.1
    with pytest.raises(ComposeError, match="mass_tilt must be in"):
        ComposeSpec(name="a", version="v1", mass_tilt=-1)


def test_classifier_on_the_marginals_reads_nothing_else():
    """embedding mlp: the N_sub classifier sees the marginals and the total, not the 2-d plane:
    two planes with the same marginals get the same logits, and it has no convolution."""
    import torch

    from casbi_store.learn.estimators import NsubClassifier

    nb = 8
    stats = {"mean": np.zeros((nb, nb)), "std": np.ones((nb, nb)),
             "extra_mean": np.zeros(2 * nb + 1), "extra_std": np.ones(2 * nb + 1)}
    net = NsubClassifier(stats["mean"], stats["std"], 2, 10, representation="log1p_marginals",
                         extra_stats={k: stats[k] for k in ("extra_mean", "extra_std")},
                         image=False)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    a = torch.zeros(1, 1, nb, nb)
    a[0, 0, 1, 2] = a[0, 0, 3, 5] = 7
    b = torch.zeros(1, 1, nb, nb)  # the same row and column sums, other pixels
    b[0, 0, 1, 5] = b[0, 0, 3, 2] = 7
    assert torch.equal(net.logits(a), net.logits(b)) and net.logits(a).shape == (1, 9)
    with pytest.raises(ValueError, match="needs a representation with extras"):
        NsubClassifier(stats["mean"], stats["std"], 2, 10, image=False)


def test_support_counts_the_simulations_near_an_answer(store):
    """support: distinct training simulations with a block within 0.1 dex in M*,
    checked by hand; the blocks of a real set are the store galaxies its train split uses."""
    from casbi_store.apply.support import (
        TrainingBlocks,
        flagged,
        support,
        supported_fraction,
        training_blocks,
        unsupported,
    )
    from casbi_store.store import trainingsets

    blocks = TrainingBlocks(theta=np.array([[8.0, 10.0, 5.0], [8.05, 10.0, 5.5], [8.0, 10.0, 5.2],
                                            [9.0, 11.0, 2.0]]), simulation=np.array([0, 1, 1, 2]))
    got = support(blocks, np.array([[8.0, 10.0, 5.0], [9.0, 11.0, 2.9], [9.0, 11.0, 3.1],
                                    [np.nan, 1, 1], [7.0, 9.0, 5.0]]))
    assert got.tolist() == [2, 1, 1, 0, 0]  # M* alone: 9.0 has sim 2 whatever tau
    assert flagged(got).tolist() == [False, False, False, True, True]
    near, far = np.array([8.0, 10.0, 5.1]), np.array([8.5, 10.0, 5.1])
    samples = np.stack([near] * 3 + [far] * 5 + [[np.nan] * 3] * 2)  # (10, 3): 3 of 8 finite near
    assert supported_fraction(blocks, samples) == pytest.approx(3 / 8)
    assert unsupported(supported_fraction(blocks, samples))
    both = supported_fraction(blocks, np.stack([samples, np.stack([near] * 10)], axis=1))
    assert both.tolist() == pytest.approx([3 / 8, 1.0])
    compose(store, ComposeSpec(name="s", version="v1", n_sub_min=2, n_sub_max=3, train_per_n=10,
                               test_per_n=2, seed=1, split_by="simulation"))
    real = training_blocks(str(store), "s", "v1")
    members = np.asarray(trainingsets.open_split_group(str(store), "s", "v1", "train")["members"][:])
    used = np.unique(members[members >= 0])
    assert len(real.theta) == len(used)
    gal = open_store(store)
    np.testing.assert_allclose(np.sort(real.theta[:, 0]), np.sort(np.log10(gal.mstar.values[used])))
    assert support(real, real.theta).min() >= 1  # every training block supports itself
