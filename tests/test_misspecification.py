"""The misspecification score: calibrated at the end of train, computed as documented, reported
with every inference, warned about above the threshold, refused when damaged; it passes halos of
the training physics and flags halos of another chemical evolution (a mock of other yields)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import TINY_SEED, store_with_set
from tipsy_reader import main_halo_stars

from casbi_store.apply.infer import infer
from casbi_store.cli import main
from casbi_store.learn.misspecification import (
    CALIBRATION,
    MisspecificationWarning,
    calibrate,
    read_calibration,
    write_calibration,
)
from casbi_store.learn.modelfolder import ModelFolderError
from casbi_store.learn.trainer import TrainConfig, train
from casbi_store.mock import Physics, generate_suite, preset
from casbi_store.mock.chemical_evolution import Y_O_CC
from casbi_store.store.abundances import abundance_ratios

TINY = TrainConfig(epochs=1, batch_size=64, hidden_features=16, num_transforms=2,
                   embedding_dim=16, conv_channels=(4, 8), learning_rate=2e-3, patience=10)


@pytest.fixture(scope="module")
def model(tiny_store, tmp_path_factory) -> dict:
    """A one-epoch classifier on a tiny set (train calibrates its score) and the set's splits."""
    folder = tmp_path_factory.mktemp("misspec")
    store = store_with_set(tiny_store[0], folder, name="m", n_sub_min=3, n_sub_max=6,
                           train_per_n=50, test_per_n=10, seed=2)
    train(store, "m", "v1", "nsub_classifier", folder / "model", TINY)
    splits = {s: xr.open_zarr(store, group=f"training_sets/m/v1/{s}", consolidated=True).x.values
              for s in ("train", "val", "test")}
    return {"store": store, "folder": folder, "model": folder / "model", **splits}


def _hellinger_knn(x: np.ndarray, reference: np.ndarray, k: int,
                   cell: tuple[int, int] = (4, 4)) -> np.ndarray:
    """Independent score: mean over the k nearest reference halos of sqrt(2) x the Hellinger
    distance of the normalised planes summed over cells of ``cell`` ([Fe/H], [O/Fe]) bins
    (loops over cells, no shared code)."""
    a, b = cell

    def coarse(h):
        c = np.array([[h[a * i:a * i + a, b * j:b * j + b].sum() for j in range(64 // b)]
                      for i in range(64 // a)], dtype=float)
        return c / c.sum()
    ref = [coarse(r) for r in reference]
    out = []
    for h in x:
        p = coarse(h)
        d = sorted(np.sqrt(((np.sqrt(p) - np.sqrt(q)) ** 2).sum()) for q in ref)
        out.append(np.mean(d[:k]))
    return np.array(out)


def _components(x: np.ndarray, reference: np.ndarray) -> list[np.ndarray]:
    """The default score's two distances, independently: the 16x16 plane's and the 8-bin
    [O/Fe] distribution's (cells of 64x8 bins)."""
    return [_hellinger_knn(x, reference, 5, cell) for cell in ((4, 4), (64, 8))]


def test_train_calibrates_the_score_on_the_validation_split(model):
    cal = read_calibration(model["model"])
    assert cal is not None and cal.meta["set"] == "m" and cal.meta["k"] == 5
    assert cal.meta["format_version"] == 2 and cal.pools == [(4, 4), (64, 8)]
    # every training halo is the reference (fewer than max_reference), every validation halo
    # is scored against it; each component's scale is the 99th percentile of its distances,
    # the score the larger distance over scale, the threshold the 99th percentile of scores
    assert len(cal.reference) == len(model["train"]) and len(cal.scores) == len(model["val"])
    val = _components(model["val"], model["train"])
    scales = [np.quantile(d, 0.99) for d in val]
    np.testing.assert_allclose(cal.scales, scales, rtol=1e-5)
    expected = np.maximum(val[0] / scales[0], val[1] / scales[1])
    np.testing.assert_allclose(cal.scores, np.sort(expected), rtol=1e-5)
    assert cal.threshold == pytest.approx(np.quantile(expected, 0.99), rel=1e-5)
    test = model["test"][:5]
    d = _components(test, model["train"])
    np.testing.assert_allclose(cal.score(test), np.maximum(d[0] / scales[0], d[1] / scales[1]),
                               rtol=1e-5)
    # the score ignores the star count: a halo observed with 10x the stars scores the same
    np.testing.assert_allclose(cal.score(10 * test), cal.score(test), rtol=1e-5)
    # p-value: share of calibration halos scoring at least as high
    assert cal.p_value(cal.scores.max() + 1) == pytest.approx(1 / (len(cal.scores) + 1))
    assert cal.p_value(0.0) == 1.0
    # a set split by combination calibrates on its validation split; the test split on request
    assert cal.meta["calibration_split"] == "val"
    on_test = calibrate(model["store"], "m", "v1", split="test")
    assert on_test.meta["calibration_split"] == "test" and len(on_test.scores) == len(model["test"])
    # the CLI re-calibrates it identically (seeded)
    first = (model["model"] / CALIBRATION).read_bytes()
    assert main(["calibrate-ood", str(model["model"])]) == 0
    again = read_calibration(model["model"])
    np.testing.assert_array_equal(again.scores, cal.scores)
    assert len(first) > 0


def test_a_format_1_calibration_still_scores_as_it_was_calibrated(model, tmp_path):
    """Folders calibrated before format 2 (one component: the plane in 4x4 cells, ``pool`` one
    integer, the distance itself the score) keep their score; a format this version does not
    know is refused naming the file."""
    folder = tmp_path / "model"
    shutil.copytree(model["model"], folder)
    old = calibrate(model["store"], "m", "v1", pools=[4])
    write_calibration(folder, old)
    raw = old.scales[0]  # format 1 stored raw distances
    v1 = {**{k: v for k, v in old.meta.items() if k != "components"}, "format_version": 1,
          "pool": 4, "threshold": old.threshold * raw}
    _rewrite(folder / CALIBRATION, scores=old.scores * raw, meta=np.array(json.dumps(v1)))
    cal = read_calibration(folder)
    assert cal.reference.shape[1] == 256
    test = model["test"][:5]
    np.testing.assert_allclose(cal.score(test), _hellinger_knn(test, model["train"], 5, (4, 4)),
                               rtol=1e-5)
    np.testing.assert_allclose(cal.scores, np.sort(
        _hellinger_knn(model["val"], model["train"], 5, (4, 4))), rtol=1e-5)
    for meta, says in (({**old.meta, "format_version": 3}, "calibration format 3"),
                       ({**v1, "pool": [4, 4]}, "inconsistent calibration"),
                       ({**old.meta, "components": [{"pool": [4, 4], "scale": -1.0}]},
                        "inconsistent calibration")):
        _rewrite(folder / CALIBRATION, meta=np.array(json.dumps(meta)))
        with pytest.raises(ModelFolderError, match=says) as info:
            read_calibration(folder)
        assert str(folder / CALIBRATION) in str(info.value)
    with pytest.raises(ValueError, match="do not divide"):
        calibrate(model["store"], "m", "v1", pools=[(4, 4), (5, 4)])
    assert main(["calibrate-ood", str(folder), "--pools", "4by4"]) == 2


def _halos_from_files(suite: Path, snapshots: list[str], edges: tuple, picks: list) -> np.ndarray:
    """Halos summing the blocks ``picks`` of the ``snapshots`` (paths relative to ``suite``),
    read with the independent tipsy reader and binned with ``edges`` by np.histogram2d (not the
    store's code)."""
    blocks = []
    for path in snapshots:
        s = main_halo_stars(str(suite / path))
        feh, ofe, ok = abundance_ratios(s["fe"], s["ox"], s["metals"])
        blocks.append(np.histogram2d(feh[ok], ofe[ok], bins=edges)[0])
    return np.stack([np.sum([blocks[i] for i in p], axis=0) for p in picks])


def test_flags_other_physics_and_passes_the_same_physics(model, tiny_store, tiny_suite,
                                                         tmp_path):
    cal = read_calibration(model["model"])
    edges = (cal.feh_edges, cal.ofe_edges)
    # held-out halos of the training physics: few above the 99th-percentile threshold
    assert (cal.score(model["test"]) > cal.threshold).mean() <= 0.1
    # halos of 3-6 of the store's galaxies, read from the conftest suite's files (the training
    # physics) and from a suite of the same dwarfs with 1.5x the core-collapse O yield (every
    # star's [O/Fe] +0.18 dex)
    galaxies = [str(g) for g in xr.open_zarr(tiny_store[0], group="galaxies",
                                             consolidated=True).source_path.values]
    rng = np.random.default_rng(0)
    picks = [rng.choice(len(galaxies), size=rng.integers(3, 7), replace=False) for _ in range(30)]
    other = tmp_path / "other"
    generate_suite(other, preset("tiny", seed=TINY_SEED, defects=True,
                                        physics=Physics(y_o_cc=1.5 * Y_O_CC)),
                   workers=2, progress=False)
    same = cal.score(_halos_from_files(tiny_suite, galaxies, edges, picks))
    flagged = cal.score(_halos_from_files(other, galaxies, edges, picks))
    assert (same > cal.threshold).mean() <= 0.1
    assert (flagged > cal.threshold).mean() >= 0.9


def _corner_halo(x: np.ndarray) -> np.ndarray:
    """Every star of ``x`` in the plane's top-left corner: no training halo looks like it."""
    out = np.zeros_like(x, dtype=np.float32)
    out[:4, -4:] = x.sum() / 16
    return out


def test_every_inference_reports_the_score_and_warns_above_the_threshold(model, tmp_path,
                                                                          capsys):
    cal = read_calibration(model["model"])
    x = model["test"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MisspecificationWarning)  # no warning below threshold
        samples = infer([model["model"]], x, n_samples=50)
    assert samples.attrs["misspecification_score"] == pytest.approx(float(cal.score(x)[0]))
    assert samples.attrs["misspecification_threshold"] == pytest.approx(cal.threshold)
    assert samples.attrs["misspecification_flagged"] == 0
    record = json.loads(samples.attrs["misspecification"])
    assert record["available"] and record["model"] == str(model["model"])
    odd = _corner_halo(x)
    with pytest.warns(MisspecificationWarning, match="unlike the halos"):
        flagged = infer([model["model"]], odd, n_samples=50)
    assert flagged.attrs["misspecification_flagged"] == 1
    assert flagged.attrs["misspecification_score"] > cal.threshold
    # the CLI: a one-line warning, no traceback, the score in the summary and the NetCDF
    np.save(tmp_path / "odd.npy", odd)
    rc = main(["infer", str(model["model"]), "--histogram", str(tmp_path / "odd.npy"),
               "--out", str(tmp_path / "p.nc"), "--samples", "50"])
    out, err = capsys.readouterr()
    assert rc == 0 and "Traceback" not in err
    assert "casbi-store: warning: the observation is unlike the halos" in err
    assert "ABOVE the threshold" in out and (tmp_path / "p.png").stat().st_size > 0
    with xr.open_dataset(tmp_path / "p.nc") as saved:
        assert saved.attrs["misspecification_flagged"] == 1


def test_observe_reports_the_score_of_a_star_table(model, tmp_path, capsys):
    cal = read_calibration(model["model"])
    x = model["test"][1]
    centres = [(e[:-1] + e[1:]) / 2 for e in (cal.feh_edges, cal.ofe_edges)]
    i, j = np.unravel_index(np.repeat(np.arange(x.size), x.ravel()), x.shape)  # a star per count
    table = tmp_path / "stars.csv"
    np.savetxt(table, np.column_stack([centres[0][i], centres[1][j]]), delimiter=",",
               header="FE_H,O_FE", comments="")
    assert main(["observe", str(table), "--binning", str(model["model"]),
                 "--out", str(tmp_path / "o.nc")]) == 0
    out = capsys.readouterr().out
    assert f"misspecification score {float(cal.score(x)[0]):.3f}" in out  # the same histogram
    assert main(["observe", str(table), "--binning", str(model["store"]),
                 "--out", str(tmp_path / "s.nc")]) == 0
    assert "misspecification score: unavailable (binned with a store's binning" in \
        capsys.readouterr().out


def _rewrite(path: Path, **changes) -> None:
    with np.load(path, allow_pickle=False) as f:
        arrays = {**dict(f), **changes}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_without_calibration_the_score_is_unavailable_and_a_damaged_one_is_refused(
        model, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(model["model"], folder)
    (folder / CALIBRATION).unlink()
    samples = infer([folder], model["test"][0], n_samples=20)
    record = json.loads(samples.attrs["misspecification"])
    assert not record["available"] and "calibrate-ood" in record["note"]
    assert np.isnan(samples.attrs["misspecification_score"])
    args = ["infer", str(folder), "--histogram", str(tmp_path / "x.npy"), "--out",
            str(tmp_path / "p.nc"), "--samples", "20"]
    np.save(tmp_path / "x.npy", model["test"][0])
    assert main(args) == 0
    assert "misspecification score: unavailable (no misspecification.npz" in capsys.readouterr().out
    damage = {
        "truncated": lambda p: p.write_bytes(p.read_bytes()[:200]),
        "other edges": lambda p: _rewrite(p, feh_edges=np.linspace(-3, 1, 65)),
        "no meta": lambda p: _rewrite(p, meta=np.array("[]")),
    }
    says = {"truncated": "not readable", "other edges": "made for other feh_edges",
            "no meta": "missing"}
    for kind, hurt in damage.items():
        shutil.copy(model["model"] / CALIBRATION, folder / CALIBRATION)
        hurt(folder / CALIBRATION)
        with pytest.raises(ModelFolderError, match=says[kind]) as info:
            read_calibration(folder)
        assert str(folder / CALIBRATION) in str(info.value)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert says[kind] in err and "Traceback" not in err, kind
