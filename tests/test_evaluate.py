"""Evaluation and report: metrics against independent computations, a self-contained page."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import store_with_set

from casbi_store.apply.posteriors import credible_set
from casbi_store.evaluation.evaluate import TARGETS
from casbi_store.learn.trainer import TrainConfig, train

TINY = TrainConfig(epochs=2, batch_size=64, hidden_features=16, num_transforms=2,
                   embedding_dim=16, conv_channels=(4, 8), learning_rate=2e-3, patience=10)


@pytest.fixture(scope="module")
def models(tiny_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate")
    store = store_with_set(tiny_store[0], folder, name="t", n_sub_min=3, n_sub_max=8,
                           train_per_n=100, test_per_n=20, seed=5)
    out = {}
    for task in ("nsub", "nsub_classifier", "theta"):
        train(store, "t", "v1", task, folder / task, TINY)
        out[task] = folder / task
    return store, out


def test_credible_set_is_the_smallest_set_reaching_the_level():
    p = np.array([[0.1, 0.5, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25]])
    np.testing.assert_array_equal(credible_set(p, 0.68), [[0, 1, 1, 0], [1, 1, 1, 0]])
    np.testing.assert_array_equal(credible_set(p, 0.5), [[0, 1, 0, 0], [1, 1, 0, 0]])


def test_nsub_metrics_match_a_direct_computation(models):
    from casbi_store.evaluation.evaluate import evaluate_nsub, read_split
    from casbi_store.learn.modelfolder import load_model

    store, paths = models
    model = load_model(paths["nsub_classifier"])
    data = read_split(store, "t", "v1", "test", max_halos=1000)
    assert len(data.x) == len(np.unique(data.rows)) and set(np.unique(data.n_sub)) <= set(range(3, 9))
    result = evaluate_nsub(model, data)
    # independent: the single member's softmax at the temperature training stored, by hand
    temperature = json.loads((paths["nsub_classifier"] / "calibration.json").read_text())["temperature"]
    with torch.no_grad():
        logits = model.members[0].logits(torch.as_tensor(data.x)[:, None])
        probs = torch.softmax(logits / temperature, 1).numpy()
    np.testing.assert_allclose(result["probs"], probs, rtol=1e-5, atol=1e-7)
    mode = np.argmax(probs, axis=1) + 3
    assert result["metrics"]["accuracy"] == pytest.approx(np.mean(mode == data.n_sub))
    covered = []
    for p, n in zip(probs, data.n_sub, strict=True):
        order = np.argsort(-p)
        k = np.searchsorted(np.cumsum(p[order]), 0.68) + 1
        covered.append(n - 3 in order[:k])
    assert result["metrics"]["hpd_coverage_68"] == pytest.approx(np.mean(covered))
    assert result["confusion"].sum() == len(data.x)
    assert np.array_equal(result["confusion"].sum(axis=1), np.bincount(data.n_sub - 3, minlength=6))


def test_report_page_embeds_every_image(models, tiny_survey_run, tmp_path):
    store, paths = models
    survey = tiny_survey_run[0]  # a `casbi-store survey` folder, as the pipeline's survey stage
    proc = subprocess.run([sys.executable, "-m", "casbi_store.cli", "evaluate",
                           *(str(p) for p in paths.values()), "--out", str(tmp_path / "rep"),
                           "--halos", "120", "--samples", "60", "--survey", str(survey)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr
    assert "report" in proc.stdout and "tarp_max_deviation" in proc.stdout
    page = (tmp_path / "rep" / "report.html").read_text()
    sources = re.findall(r'<img[^>]*src="([^"]*)"', page)
    # halos, training, N_sub, theta means + TARP + SBC, two-step TARP, corner; the survey
    # section's observed plane and corner plot
    assert len(sources) == 10
    _assert_survey_section(page, survey)
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.findall(r'(?:href|src)="(?!data:)[^"#]+"', page)  # nothing outside the page
    assert "✔" in page or "✘" in page
    text = (tmp_path / "rep" / "metrics.json").read_text()
    metrics = json.loads(text)
    theta = next(m for m in metrics["models"].values() if m["task"] == "theta")["metrics"]
    assert -1 <= theta["tarp_atc"] <= 1 and len(theta["sbc_ks_pvalues"]) == 3
    assert set(metrics["headline"]) == set(TARGETS)
    assert list(metrics["conditions"]) == ["in_distribution", "held_out"]
    for cond in metrics["conditions"].values():
        assert set(cond["targets"]) == set(TARGETS)
        assert {"ridge", "gbr"} <= set(cond["baselines"])
        two = cond["two_step"]
        for name in ("n_sub", "log10_mstar_1", "log10_mdm_2", "tau_3"):
            for metric in ("coverage_68", "coverage_95", "sbc_ks_pvalue", "tarp_max_deviation",
                           "rmse", "bias", "r2", "truth_std", "skill"):
                assert np.isfinite(two[f"{metric}_{name}"]), (metric, name)
    # same seeds, same numbers: a second evaluation (another process, as a user re-running it)
    # writes the same file byte for byte
    again = subprocess.run([sys.executable, "-m", "casbi_store.cli", "evaluate",
                            *(str(p) for p in paths.values()), "--out", str(tmp_path / "again"),
                            "--halos", "120", "--samples", "60"],
                           capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "metrics.json").read_text() == text
    assert "Survey-style inference" not in (tmp_path / "again" / "report.html").read_text()


def _assert_survey_section(page: str, survey) -> None:
    """The survey section shows what the survey folder holds: N_obs, the drops observe counted,
    the misspecification score and threshold of the posterior, the coverage table."""
    import html

    import xarray as xr

    from casbi_store.evaluation.report import SURVEY_TITLE
    from casbi_store.learn.misspecification import Assessment

    section = page.split(f"<h2>{html.escape(SURVEY_TITLE)}</h2>")[1].split("<h2>")[0]
    with xr.open_dataset(survey / "posterior.nc") as ds:
        attrs = dict(ds.attrs)
    a = Assessment.from_attrs(attrs)
    assert a.available and f"misspecification score {a.score:.3f}" in section
    assert f"threshold {a.threshold:.3f}" in section
    assert ("flagged" if a.flagged else "not flagged") in section
    assert f"N_obs = {attrs['n_obs']:g}</b>" in section
    dropped = json.loads(attrs["dropped"])
    assert "dropped: " + ", ".join(f"{k} {v}" for k, v in dropped.items()) in section
    assert section.count("<img") == 2 and "over 2 such tables" in section
    coverage = json.loads((survey / "posteriors" / "coverage.json").read_text())["coverage"]
    assert f"<td>n_sub</td><td>2</td><td>{coverage['n_sub']['0.68']:.2f}</td>" in section


def test_survey_section_says_what_is_missing(tmp_path):
    from casbi_store.evaluation.report import survey_section

    title, parts = survey_section(tmp_path / "nothing", tmp_path / "figures")
    assert title.startswith("Survey-style inference") and len(parts) == 1
    assert "No survey-style inference to show" in parts[0] and "observation.nc" in parts[0]


def test_two_step_mixture_conditions_each_draw_on_its_n_sub(models):
    from casbi_store.apply.posteriors import load_posterior
    from casbi_store.apply.twostep import mixture_samples
    from casbi_store.evaluation.evaluate import read_split
    from casbi_store.learn.modelfolder import load_model

    store, paths = models
    model = load_model(paths["theta"])
    data = read_split(store, "t", "v1", "test", max_halos=3)
    draws = np.array([[3, 5, 8], [5, 3, 8], [3, 5, 4], [5, 5, 8]] * 100)  # (samples, halos)
    samples = mixture_samples(model, torch.as_tensor(data.x)[:, None], draws, 3, [0, 1, 2]).samples
    assert samples.shape == (400, 3, 3, 3) and np.isfinite(samples).all()  # every draw >= 3
    # the draws of N_sub = 5 for halo 1: their rank-1 samples against the flow's own at (x, 5, 1)
    got = samples[draws[:, 1] == 5, 1, 0]
    cond = model.task_spec.condition(torch.as_tensor(data.x[1:2]).reshape(1, -1),
                                     torch.tensor([5.0]), torch.tensor([1.0]))
    with torch.no_grad():
        direct = load_posterior(model).sample((4000,), x=cond, reject_outside_prior=False,
                                              show_progress_bars=False).numpy()
    se = np.sqrt(direct.var(axis=0) / len(got) + direct.var(axis=0) / len(direct))
    assert np.all(np.abs(got.mean(axis=0) - direct.mean(axis=0)) < 5 * se)
    few = np.array([[2, 3]] * 50)  # rank 3 does not exist for N_sub = 2
    samples = mixture_samples(model, torch.as_tensor(data.x[:2])[:, None], few, 3, [0, 1]).samples
    assert np.isnan(samples[:, 0, 2]).all() and np.isfinite(samples[:, 0, :2]).all()
    assert np.isfinite(samples[:, 1]).all()


def test_evaluate_judges_exactly_what_infer_returns(models):
    """The two-step samples evaluate judges for a halo are infer's at the halo's seed, number
    for number, with the classifier or the rounded N_sub NPE as step 1."""
    import warnings

    from casbi_store.apply.infer import infer
    from casbi_store.evaluation.evaluate import (
        evaluate_two_step,
        halo_seeds,
        read_split,
        two_step_samples,
    )
    from casbi_store.learn.modelfolder import load_model

    store, paths = models
    data = read_split(store, "t", "v1", "test", max_halos=3)
    step2 = load_model(paths["theta"])
    seeds = halo_seeds(data, 3)
    assert len(set(seeds)) == 3
    for task in ("nsub_classifier", "nsub"):
        step1 = load_model(paths[task])
        draws, mixture = two_step_samples(step1, step2, data, n_samples=40, seed=3)
        assert draws.shape == (40, 3) and mixture.samples.shape == (40, 3, 3, 3)
        for h in range(3):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # misspecification, thin support: not the point
                got = infer([step1, step2], data.x[h], n_samples=40, seed=seeds[h])
            np.testing.assert_array_equal(got["n_sub"].values, draws[:, h])
            for k, name in enumerate(step2.parameters):
                np.testing.assert_array_equal(got[name].values, mixture.samples[:, h, :, k])
            assert got.attrs["support_box_inside"] == mixture.first_inside[h]
        # and what evaluate_two_step reports is computed from these very samples
        result = evaluate_two_step(step1, step2, data, n_samples=40, seed=3,
                                   nsub={"draws": draws, "metrics": {"accuracy": 0.0}})
        np.testing.assert_array_equal(result["nsub_mean"], draws.mean(axis=0))
        assert not np.array_equal(draws[:, 0], draws[:, 1])  # halos of their own seeds


def test_batched_sampler_inverts_the_flow_as_nflows_does(models):
    """The sampler's flow inverse (context terms computed once per condition) maps noise to
    nflows' own samples, to float rounding: for the 1-d N_sub NPE (sbi's ContextSplineMap) and
    the per-rank theta flow (ResidualNet conditioners)."""
    from casbi_store.apply.posteriors import BatchedFlowSampler, flow_inverse, load_posterior
    from casbi_store.evaluation.evaluate import read_split
    from casbi_store.learn.modelfolder import load_model

    store, paths = models
    data = read_split(store, "t", "v1", "test", max_halos=5)
    x = torch.as_tensor(data.x)[:, None]
    theta = load_model(paths["theta"])
    conditions = {"nsub": x, "theta": theta.task_spec.condition(
        x.reshape(5, -1), torch.tensor([3.0, 4, 5, 6, 8]), torch.tensor([1.0, 2, 3, 1, 2]))}
    for task, cond in conditions.items():
        sampler = BatchedFlowSampler(load_posterior(paths[task]))
        flow, context_of = sampler.flows[0], torch.arange(5).repeat(40)
        noise = torch.randn(200, sampler.dims, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            contexts = flow._embedding_net(cond)
            ours = flow_inverse(flow._transform, contexts)(noise, context_of)
            theirs = flow._transform.inverse(noise, context=contexts[context_of])[0]
        assert ours.shape == theirs.shape and not torch.equal(ours[:5], ours[5:10])
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # the per-rank contexts kept factored (the CNN once per image) sample as the full ones
    n_sub, rank = cond[:, -2], cond[:, -1]
    factored = sampler.ranked_contexts(x, np.arange(5), n_sub, rank)
    draw = lambda c: sampler.sample(c, context_of, torch.Generator().manual_seed(1))  # noqa: E731
    torch.testing.assert_close(draw(factored), draw(sampler.contexts(cond)), rtol=1e-4, atol=1e-4)


def test_batched_sampler_draws_each_sample_s_member_from_the_weights(models):
    """An ensemble's member is drawn per sample (sbi's sample_batched orders samples by member),
    and rows outside the prior box are redrawn."""
    import copy

    from sbi.inference import EnsemblePosterior

    from casbi_store.apply.posteriors import (
        BatchedFlowSampler,
        box_bounds,
        load_posterior,
        sample_rows_in_prior,
    )
    from casbi_store.evaluation.evaluate import read_split
    from casbi_store.learn.modelfolder import load_model

    store, paths = models
    model = load_model(paths["theta"])
    single = load_posterior(model)
    shifted = copy.deepcopy(single)  # a second member whose samples lie 10 above the first's
    affine = shifted.posterior_estimator.net._transform._transforms[0]  # sbi's z-score of theta
    affine._shift = affine._shift - 10 * affine._scale
    sampler = BatchedFlowSampler(EnsemblePosterior([single, shifted], weights=[0.25, 0.75]))
    data = read_split(store, "t", "v1", "test", max_halos=2)
    cond = model.task_spec.condition(torch.as_tensor(data.x[:2]).reshape(2, -1),
                                     torch.tensor([5.0, 5.0]), torch.tensor([1.0, 2.0]))
    low, high = (torch.as_tensor(b) for b in box_bounds(model))
    assert float(high[0] - low[0]) < 10  # log M*: the two members' samples do not overlap
    contexts = sampler.contexts(cond)
    context_of = torch.arange(2).repeat(2000)
    s = sampler.sample(contexts, context_of, torch.Generator().manual_seed(0))
    second = s[:, 0] > (low[0] + high[0]) / 2 + 5
    for c in (0, 1):  # within each condition, 3 of 4 samples from the second member
        assert abs(float(second[context_of == c].float().mean()) - 0.75) < 0.05
    again = sampler.sample(contexts, context_of, torch.Generator().manual_seed(0))
    assert torch.equal(s, again)  # the generator is the only randomness
    before = float((~((s >= low) & (s <= high)).all(dim=-1)).float().mean())  # >= 0.75
    stats: dict = {}
    s = sample_rows_in_prior(sampler, model, contexts, context_of, torch.Generator().manual_seed(1),
                             stats=stats)
    assert before >= 0.7 and ((s >= low) & (s <= high)).all()  # every row redrawn until inside
    assert abs(stats["first_inside"] - (1 - before)) < 0.05


def test_external_store_is_a_third_condition_and_other_bin_edges_are_refused(
        models, tiny_suite, tiny_store, dask_client, tmp_path):
    from casbi_store.compose import ComposeSpec, compose
    from casbi_store.evaluation.evaluate import BinningMismatch, evaluate
    from casbi_store.learn.modelfolder import load_model
    from casbi_store.store.binning import BinningSpec
    from casbi_store.store.extraction_run import extract_suite

    store, paths = models
    other = store_with_set(tiny_store[0], tmp_path / "other", name="t", n_sub_min=3, n_sub_max=8,
                           train_per_n=20, test_per_n=10, seed=6)
    used = [paths["nsub_classifier"], paths["theta"]]
    results = evaluate(used, max_halos=40, n_samples=40, against=(other, None, None),
                       in_distribution_split=None, baseline_fit_rows=200)
    assert list(results["conditions"]) == ["held_out", "external"]
    ext = results["conditions"]["external"]
    assert ext["source"].startswith(str(other)) and ext["halos"] == 40
    # the skill of step 2 on the true N_sub, independently: 1 - MSE / Var(U(box))
    theta = results["models"][str(paths["theta"])]["conditions"]["external"]
    model = load_model(paths["theta"])
    example = model.stats["theta_example"]
    low, high = example.min(axis=0), example.max(axis=0)
    sel = theta["rank"] == 1
    mse = np.mean((theta["mean"][sel, 0] - theta["truth"][sel, 0]) ** 2)
    assert theta["metrics"]["skill_log10_mstar_1"] == pytest.approx(
        1 - mse / ((high[0] - low[0]) ** 2 / 12), rel=1e-4)

    rebinned = tmp_path / "rebinned.zarr"
    import shutil

    shutil.copytree(tiny_store[0], rebinned)
    extract_suite(tiny_suite, rebinned, client=dask_client, progress=False,
                  binning=BinningSpec(percentiles=(1.0, 99.0)))
    compose(rebinned, ComposeSpec(name="t", version="v1", n_sub_min=3, n_sub_max=8,
                                  train_per_n=20, test_per_n=10, seed=6), progress=False)
    with pytest.raises(BinningMismatch) as err:
        evaluate(used, against=(rebinned, "t", "v1"))
    assert str(rebinned) in str(err.value) and str(store) in str(err.value)
    assert "[Fe/H]" in str(err.value)
