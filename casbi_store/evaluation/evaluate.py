"""Evaluation of trained models in three test conditions: the numbers the report shows.

Test conditions (``conditions_for``), side by side:

- ``in_distribution``: the set's validation split, new combinations of the training galaxies
  (the trainer chose its checkpoints on this split's loss, a mild selection); for a set whose
  validation halos come from simulations of their own (``val_split: simulations``) the
  training split itself (its halos evenly spaced), since the validation halos are unseen
  galaxies there;
- ``held_out``: ``split`` (the test split) of the same set, halos of held-out simulations;
- ``external``: the test split of another store's set (``against``), e.g. a mock suite with
  another seed extracted with the model's bin edges; a set binned otherwise is refused
  (``BinningMismatch``).

In each condition:

- every step-1 model (N_sub, NPE and classifier): accuracy of the mode, median ``|N_hat - N| / N``
  with N_hat the posterior median, highest-probability-set coverage (``hpd_coverage_*``), the
  confusion matrix, and the per-parameter figures below;
- every step-2 model conditioned on the **true** N_sub (judged on its own);
- the **two-step posterior** as ``infer`` returns it (``two_step``): N_sub drawn from the
  preferred step-1 model, theta of ranks 1..3 from the per-rank model conditioned on each draw
  (the mixture), sampled in batches across halos;
- the non-neural baselines (``casbi_store.evaluation.baselines``, fitted on at most ``baseline_rows``
  evenly spaced rows of the model's training split) as reference rows.

Per parameter (N_sub, theta of ranks 1..3): 68%/95% central-interval coverage, SBC uniformity
(KS p-value of the ranks), 1-d TARP, RMSE, bias, R^2 with the truth's spread, and the skill
against the prior (``casbi_store.learn.calibration``); the joint TARP over theta pools the (halo,
rank) rows. ``TARGETS`` are issue 23's; ``meets`` judges them per condition.

The two-step posterior and the step-1 models are sampled as ``infer`` samples them
(``casbi_store.apply.twostep``), halo by halo, each halo at its own seed (``halo_seeds``):
``infer`` at a halo's seed returns the very samples judged here. A halo whose samples almost
never fall inside the prior box (``infer`` refuses it) keeps samples outside; their share is
``outside_prior_fraction``. Step 2 on the true N_sub (``evaluate_theta``) measures the flow's
raw leakage, with ``posteriors.BatchedFlowSampler`` across halos (``ROWS_PER_PASS`` samples a
pass).

Same seed, same numbers: every random draw (N_sub draws, flow samples from a
``torch.Generator`` per pass, PIT tie-breaks, TARP references) comes from ``seed``, halos are
read in a fixed order, and timings are kept apart from the metrics (``timings``). The figures
can still differ in the last digits between machines or torch thread counts (float
reductions), never between two runs of one machine.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from casbi_store import CasbiError, InputError
from casbi_store.apply.posteriors import (
    BatchedFlowSampler,
    box_bounds,
    credible_set,
    load_posterior,
    seeded_generator,
)
from casbi_store.apply.support import flag_answer, flagged, model_blocks, support, supported_fraction
from casbi_store.apply.twostep import Mixture, halo_seed, mixture_samples, nsub_step
from casbi_store.compose.spec import VAL_ON_SIMULATIONS
from casbi_store.learn import calibration as cal
from casbi_store.learn.modelfolder import TrainedModel, load_model
from casbi_store.learn.tasks import block_parameters, by_preference
from casbi_store.store import schema as S
from casbi_store.store import trainingsets

from . import baselines as base

log = logging.getLogger(__name__)

# issue 8's targets (quoted, never tuned to), judged in every test condition; a condition's own
# threshold, where the issue gives one, in CONDITION_TARGETS
TARGETS: dict[str, tuple[str, float | tuple[float, float]]] = {
    # issue 23: targets a memorising network cannot meet. R^2 is against the truth's spread in
    # the condition judged (not the prior box: skill against the prior stays a column of the
    # per-parameter table); every RMSE of N_sub and ranks 1-3 is compared with ridge and GBR
    # fitted on the same training halos (the worst ratio is judged).
    "coverage_68_n_sub": ("within", (0.63, 0.73)),
    "coverage_68_log10_mstar_1": ("within", (0.63, 0.73)),
    "coverage_68_log10_mdm_1": ("within", (0.63, 0.73)),
    "coverage_68_tau_1": ("within", (0.63, 0.73)),
    "coverage_68_ranks_2_3_min": (">=", 0.60),  # every parameter of ranks 2-3 in 0.60-0.76
    "coverage_68_ranks_2_3_max": ("<=", 0.76),
    "tarp_max_deviation": ("<=", 0.05),
    "r2_log10_mstar_1": (">=", 0.8),
    "r2_log10_mdm_1": (">=", 0.6),
    "r2_tau_1": (">=", 0.4),
    "median_rel_error_n_sub": ("<=", 0.10),
    "rmse_over_ridge": ("<=", 1.0),  # never worse than the linear baseline (worst parameter)
    "rmse_over_gbr": ("<=", 1.0),  # nor than gradient boosting on the same summaries
}
CONDITION_TARGETS: dict[str, dict[str, tuple[str, float | tuple[float, float]]]] = {
    # in distribution: no worse than the models before issue 23 (R^2 0.9 and 0.65)
    "in_distribution": {"r2_log10_mstar_1": (">=", 0.9), "r2_tau_1": (">=", 0.65)},
}
CONDITIONS = ("in_distribution", "held_out", "external")
ROWS_PER_PASS = 2**17  # samples per batched flow pass (memory: ~0.5 GB at the seed's size)


class BinningMismatch(CasbiError, ValueError):
    """A test set binned with other edges than the model's training set."""


@dataclass
class SplitData:
    """Halos of one split: histograms, N_sub and store theta (M*, M_dm, tau per block)."""

    x: np.ndarray
    n_sub: np.ndarray
    theta: np.ndarray
    rows: np.ndarray
    source: str


@dataclass(frozen=True)
class Condition:
    """Where a condition's halos come from."""

    name: str
    store: str
    set: str
    version: str
    split: str

    @property
    def source(self) -> str:
        return f"{self.store}::{self.set}:{self.version}/{self.split}"


def read_split(store, name: str, version: str, split: str, max_halos: int = 300,
               storage_options: dict | None = None) -> SplitData:
    """An evenly spaced subset of ``max_halos`` halos of a split (deterministic)."""
    n = trainingsets.open_split_group(store, name, version, split, storage_options)[S.X.name].shape[0]
    rows = np.unique(np.linspace(0, n - 1, min(max_halos, n)).round().astype(int))
    got = trainingsets.read_rows(store, name, version, split, rows, storage_options=storage_options)
    return SplitData(got[S.X.name].astype(np.float32), got[S.N_SUB.name], got[S.THETA.name], rows,
                     f"{name}:{version}/{split}")


def check_binning(model: TrainedModel, store, name: str, version: str,
                  storage_options: dict | None = None) -> None:
    """Refuse a set whose bin edges differ from the ones the model was trained on."""
    binning = trainingsets.binning(store, name, version, storage_options)
    ours = (np.asarray(model.stats["feh_edges"]), np.asarray(model.stats["ofe_edges"]))
    theirs = (binning.feh_edges, binning.ofe_edges)
    if any(a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=1e-9)
           for a, b in zip(ours, theirs, strict=True)):
        show = lambda e: (f"[Fe/H] {e[0][0]:.4g}..{e[0][-1]:.4g}, [O/Fe] "  # noqa: E731
                          f"{e[1][0]:.4g}..{e[1][-1]:.4g} ({len(e[0]) - 1} bins)")
        raise BinningMismatch(
            f"{os.fspath(store)}: {name}:{version} is binned {show(theirs)}, but the model "
            f"{model.path} was trained on {model.meta['store']}::{model.meta['set']}:"
            f"{model.meta['version']}, binned {show(ours)}; extract the other store with the "
            "model's bin edges (binning method 'fixed' with these ranges)")


def _validation_on_own_simulations(store: str, meta: dict, storage_options: dict | None) -> bool:
    """Whether the model's set draws its validation halos from simulations of their own."""
    try:
        entry = trainingsets.versions(store, meta["set"], storage_options).get(meta["version"]) or {}
    except Exception:  # noqa: BLE001 - an unreadable registry: the default split
        return False
    return (entry.get("spec") or {}).get("val_split") in VAL_ON_SIMULATIONS


def conditions_for(model: TrainedModel, split: str = "test",
                   in_distribution_split: str | None = "val", against: tuple | None = None,
                   storage_options: dict | None = None
                   ) -> list[Condition]:
    """The conditions a model is judged in (``against``: ``(store, set or None, version or
    None)``, the model's set name and the latest version by default)."""
    meta = model.meta
    store = os.fspath(meta["store"])
    out = []
    if in_distribution_split == "val" and _validation_on_own_simulations(store, meta, storage_options):
        in_distribution_split = "train"  # its validation halos are unseen galaxies, not new mixes
    if in_distribution_split and in_distribution_split != split:
        try:
            rows = trainingsets.open_split_group(store, meta["set"], meta["version"],
                                                 in_distribution_split,
                                                 storage_options)[S.X.name].shape[0]
        except trainingsets.SplitNotFound:
            rows = 0
        if rows:
            out.append(Condition("in_distribution", store, meta["set"], meta["version"],
                                     in_distribution_split))
    out.append(Condition("held_out", store, meta["set"], meta["version"], split))
    if against:
        other, name, version = (tuple(against) + (None, None))[:3]
        name = name or meta["set"]
        version, _ = trainingsets.resolve_version(other, name, version or trainingsets.LATEST,
                                                  storage_options)
        check_binning(model, other, name, version, storage_options)
        out.append(Condition("external", os.fspath(other), name, version, split))
    return out


def _x(data: SplitData) -> torch.Tensor:
    return torch.as_tensor(data.x)[:, None]


def _rng(seed: int, *tags: int) -> np.random.Generator:
    """A generator of its own for each use of the seed (adding a metric moves no other)."""
    return np.random.default_rng([seed, *tags])


def halo_seeds(data: SplitData, seed: int) -> list[int]:
    """Each halo's seed (``twostep.halo_seed`` of its row): ``infer`` at a halo's seed returns
    the samples the evaluation judged for it."""
    return [halo_seed(seed, row) for row in data.rows]


def nsub_draws(model: TrainedModel, data: SplitData, n_samples: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, probs (halos, values), draws (samples, halos))`` of a step-1 model, as
    ``infer`` gives them for each halo at its seed (``twostep.NsubStep``)."""
    step, seeds = nsub_step(model), halo_seeds(data, seed)
    x = _x(data)
    return (step.values, step.probabilities(x, seeds),
            step.draws(x, n_samples, seeds, outside="keep"))


def nsub_prior_variance(model: TrainedModel) -> float:
    """Variance of the uniform prior over the training range of N_sub."""
    return cal.integer_uniform_variance(*model.meta["n_sub_range"])


def evaluate_nsub(model: TrainedModel, data: SplitData, n_samples: int = 500, seed: int = 0) -> dict:
    """Step-1 metrics and the arrays behind them (probabilities over N_sub values, draws)."""
    start = time.perf_counter()
    values, probs, draws = nsub_draws(model, data, n_samples, seed)
    seconds = time.perf_counter() - start
    truth = data.n_sub.astype(int)
    mode = values[np.argmax(probs, axis=1)]
    cdf = np.cumsum(probs, axis=1)
    median = values[np.argmax(cdf >= 0.5, axis=1)]
    inside = lambda level: credible_set(probs, level)[  # noqa: E731
        np.arange(len(truth)), np.clip(truth - values[0], 0, len(values) - 1)]
    in_range = (truth >= values[0]) & (truth <= values[-1])
    confusion = np.zeros((len(values), len(values)), dtype=np.int64)
    np.add.at(confusion, (np.clip(truth - values[0], 0, len(values) - 1), mode - values[0]), 1)
    metrics = {"accuracy": float(np.mean(mode == truth)),
               "median_rel_error": float(np.median(np.abs(median - truth) / truth)),
               "hpd_coverage_68": float(np.mean(inside(0.68) & in_range)),
               "hpd_coverage_95": float(np.mean(inside(0.95) & in_range)),
               "halos": int(len(truth))}
    per = cal.parameter_metrics(draws.astype(float), truth.astype(float),
                                nsub_prior_variance(model), _rng(seed, 2))
    metrics.update({k: v for k, v in per.items() if k != "rows"})
    return {"metrics": metrics, "timings": {"halos_per_second": len(truth) / seconds},
            "values": values, "probs": probs, "truth": truth, "mode": mode, "median": median,
            "confusion": confusion, "draws": draws}


def _flow_samples(posterior, cond: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``(n, rows, dims)`` flow samples (outside the prior box too: the leakage is measured) for
    many conditions, each embedded once, ``ROWS_PER_PASS`` samples per pass."""
    sampler = BatchedFlowSampler(posterior)
    per_pass = max(1, ROWS_PER_PASS // n)
    out = []
    for start in range(0, len(cond), per_pass):
        part = cond[start:start + per_pass]
        contexts = sampler.contexts(part)
        context_of = torch.arange(len(part)).repeat(n)  # sample-major
        s = sampler.sample(contexts, context_of, seeded_generator(seed, 20, start))
        out.append(s.reshape(n, len(part), -1))
    return torch.cat(out, dim=1)


def _prior_variances(model: TrainedModel) -> np.ndarray:
    low, high = box_bounds(model)
    return cal.uniform_variance(low.astype(np.float64), high.astype(np.float64))


def _theta_metrics(model: TrainedModel, samples: np.ndarray, truth: np.ndarray,
                   rank_of: np.ndarray, ranks: int, seed: int) -> dict:
    """Flat per-parameter metrics (``{metric}_{parameter}``), the pooled per-parameter SBC
    p-values and the joint TARP over the rows (samples (S, rows, dims), NaN where missing)."""
    prior_var = _prior_variances(model)
    metrics: dict = {"rows": int(len(truth))}
    for j, (name, sel, col) in enumerate(model.task_spec.metric_columns(model.parameters, rank_of,
                                                                        ranks)):
        per = cal.parameter_metrics(samples[:, sel, col], truth[sel, col], prior_var[col],
                                    _rng(seed, 10, j))
        metrics.update({f"{k}_{name}": v for k, v in per.items()})
    pits = [cal.pit(samples[..., k], truth[:, k], _rng(seed, 11, k)) for k in range(truth.shape[1])]
    metrics["sbc_ks_pvalues"] = [cal.uniformity_pvalue(p) for p in pits]
    ecp, alpha = cal.tarp(samples, truth, _rng(seed, 12))
    metrics.update(cal.tarp_summary(ecp, alpha))
    return {"metrics": metrics, "tarp": (ecp, alpha), "pit": np.stack(pits, axis=1)}


def evaluate_theta(model: TrainedModel, data: SplitData, n_samples: int = 200, ranks: int = 3,
                   seed: int = 0) -> dict:
    """Step 2 conditioned on the true N_sub: per-parameter metrics of the flow's samples."""
    theta, cond, rank_of = model.task_spec.evaluation_pairs(
        _x(data), torch.as_tensor(data.theta), ranks=ranks, joint_n_sub=model.joint_n_sub)
    if len(theta) < 10:
        raise InputError(f"{data.source}: only {len(theta)} halos usable by {model.path}")
    start = time.perf_counter()
    samples = _flow_samples(load_posterior(model), cond, n_samples, seed)
    seconds = time.perf_counter() - start
    truth = theta.double().numpy()
    out = _theta_metrics(model, samples.double().numpy(), truth, rank_of, ranks, seed)
    out["metrics"]["outside_prior_fraction"] = _outside(model, samples)
    out.update(truth=truth, mean=samples.mean(dim=0).numpy(), rank=rank_of,
               parameters=list(model.parameters), n_samples=n_samples,
               timings={"samples_per_second": n_samples * len(theta) / seconds})
    return out


def _outside(model: TrainedModel, samples: torch.Tensor) -> float:
    low, high = (torch.as_tensor(b) for b in box_bounds(model))
    finite = torch.isfinite(samples).all(dim=-1)
    inside = ((samples >= low) & (samples <= high)).all(dim=-1)
    return float(1 - inside[finite].float().mean()) if finite.any() else 0.0


def two_step_samples(step1: TrainedModel, step2: TrainedModel, data: SplitData,
                     n_samples: int = 200, ranks: int = 3, seed: int = 0,
                     draws: np.ndarray | None = None) -> tuple[np.ndarray, Mixture]:
    """The two-step posterior's samples of the split's halos, each halo's exactly ``infer``'s
    at its seed (``halo_seeds``): ``(N_sub draws (samples, halos), twostep.Mixture)``.
    ``draws``: step 1's, when already drawn. A halo whose flow samples almost never fall inside
    the prior box (``infer`` refuses it) keeps samples outside (``Mixture.outside``)."""
    seeds = halo_seeds(data, seed)
    if draws is None:
        draws = nsub_step(step1).draws(_x(data), n_samples, seeds, outside="keep")
    return draws, mixture_samples(step2, _x(data), draws, ranks, seeds, outside="keep",
                                  progress=f"two-step posterior, {data.source}")


def evaluate_two_step(step1: TrainedModel, step2: TrainedModel, data: SplitData,
                      n_samples: int = 200, ranks: int = 3, seed: int = 0,
                      nsub: dict | None = None) -> dict:
    """The full two-step posterior on the split's halos: N_sub from ``step1`` (its evaluation
    ``nsub`` reused when given), theta of ranks 1..``ranks`` the mixture over those draws."""
    start = time.perf_counter()
    if nsub is None:
        nsub = evaluate_nsub(step1, data, n_samples=n_samples, seed=seed)
    draws, mixture = two_step_samples(step1, step2, data, n_samples, ranks, seed,
                                      nsub["draws"] if len(nsub["draws"]) == n_samples else None)
    samples, first_inside = mixture.samples, mixture.first_inside
    outside = float(mixture.outside.sum() / max(mixture.rows.sum(), 1))
    truth_blocks = torch.as_tensor(data.theta)
    blocks = block_parameters(truth_blocks[:, :ranks]).double().numpy()  # (halos, ranks, 3)
    has = np.isfinite(blocks).all(axis=-1)  # the halo has a block of that rank
    halo_idx, rank_idx = np.nonzero(has)
    pooled = samples[:, halo_idx, rank_idx]  # (S, rows, 3), rows = (halo, rank) pairs
    truth = blocks[halo_idx, rank_idx]
    theta = _theta_metrics(step2, pooled, truth, rank_idx + 1, ranks, seed)
    metrics = {f"{k}_n_sub": v for k, v in nsub["metrics"].items()
               if k not in ("accuracy", "halos") and not k.startswith("hpd")}
    metrics.update(accuracy_n_sub=nsub["metrics"]["accuracy"], halos=len(data.x),
                   outside_prior_fraction=outside, **theta["metrics"])
    metrics.update(support_metrics(step2, samples[:, :, 0], blocks[:, 0], first_inside))
    seconds = time.perf_counter() - start
    return {"metrics": metrics, "tarp": theta["tarp"], "mean": np.nanmean(pooled, axis=0),
            "truth": truth, "rank": rank_idx + 1, "parameters": list(step2.parameters),
            "nsub_mean": np.nanmean(draws, axis=0), "models": (str(step1.path), str(step2.path)),
            "timings": {"seconds": seconds, "halos_per_second": len(data.x) / seconds}}


def support_metrics(model: TrainedModel, top_samples: np.ndarray, top_truth: np.ndarray,
                    first_inside: np.ndarray) -> dict:
    """How often the signal of ``apply.support`` (most of the flow's draws outside the training
    box, or most top-block samples far from every training galaxy) fires on a condition's halos
    (``first_inside``: each halo's share of first draws inside the box), and whether it fires
    where it should: on halos whose true top block has no training galaxy near it
    (``detection``) and on halos whose true log10 M*_1 lies outside the posterior's central 95%
    (``caught_misses``).
    ``top_samples``: (samples, halos, 3) rank-1 draws; ``top_truth``: (halos, 3)."""
    blocks = model_blocks(model.meta)
    if blocks is None:
        return {}
    flags = flag_answer(supported_fraction(blocks, top_samples), first_inside)
    thin_truth = flagged(support(blocks, top_truth))
    lo, hi = np.nanquantile(top_samples[..., 0], [0.025, 0.975], axis=0)
    miss = (top_truth[:, 0] < lo) | (top_truth[:, 0] > hi)
    rate = lambda mask: float(flags[mask].mean()) if mask.any() else float("nan")  # noqa: E731
    return {"support_flag_rate": float(flags.mean()), "support_thin_truth_rate": float(thin_truth.mean()),
            "support_detection": rate(thin_truth), "support_false_alarm": rate(~thin_truth),
            "support_caught_misses": rate(miss), "support_miss_rate_unflagged": (
                float(miss[~flags].mean()) if (~flags).any() else float("nan"))}


def training_summary(model: TrainedModel) -> dict:
    epochs = [len(h) for h in model.histories]
    return {"members": len(model.members), "epochs": epochs,
            "train_seconds": float(sum(r["seconds"] for h in model.histories for r in h)),
            "best_val_loss": [min((r["val_loss"] for r in h), default=float("nan"))
                              for h in model.histories],
            "weights": model.weights.tolist(),
            "temperature": model.calibration.get("temperature")}


def sampling_speed(model: TrainedModel, data: SplitData, n: int = 10_000) -> float:
    """Seconds for ``n`` posterior samples of one halo (the inference target: < 1 s)."""
    if model.task_spec.step == 1:
        step = nsub_step(model)
        start = time.perf_counter()
        step.draws(_x(data)[:1], n, [0], outside="keep")
        return time.perf_counter() - start
    posterior = load_posterior(model)
    cond = model.task_spec.condition(_x(data)[:1], torch.tensor([float(data.n_sub[0])]),
                                     torch.tensor([1.0]))
    start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():  # the leakage is measured elsewhere
        warnings.filterwarnings("ignore", message=r".*lie outside the prior support")
        posterior.sample((n,), x=cond, reject_outside_prior=False, show_progress_bars=False)
    return time.perf_counter() - start


def fit_baselines(model: TrainedModel, rows: int = 2000, ranks: int = 3, seed: int = 0,
                  storage_options: dict | None = None) -> base.Baselines:
    """The baselines fitted on at most ``rows`` evenly spaced rows of the model's training split."""
    meta = model.meta
    data = read_split(meta["store"], meta["set"], meta["version"], "train", rows, storage_options)
    return base.fit(data.x, data.n_sub, data.theta, ranks=ranks, seed=seed)


def baseline_rows(fitted: base.Baselines, data: SplitData, prior_var: dict[str, float],
                  ranks: int = 3) -> dict[str, dict[str, dict[str, float]]]:
    """kind -> parameter -> point metrics of the baselines (with the skill against the prior)."""
    scores = base.score(fitted, data.x, data.n_sub, data.theta, ranks=ranks)
    for per in scores.values():
        for name, row in per.items():
            v = prior_var.get(name, float("nan"))
            row["skill"] = 1 - row["rmse"] ** 2 / v if v > 0 else float("nan")
    return scores


def _prior_by_name(step1: TrainedModel | None, step2: TrainedModel | None,
                   ranks: int) -> dict[str, float]:
    out = {}
    if step1 is not None:
        out["n_sub"] = nsub_prior_variance(step1)
    if step2 is not None and step2.task_spec.needs_nsub:
        var = _prior_variances(step2)
        out.update({f"{p}_{r}": float(var[k]) for r in range(1, ranks + 1)
                    for k, p in enumerate(step2.parameters)})
    return out


def _rmse_over(metrics: dict, baseline: dict) -> float | None:
    """The worst RMSE ratio of the posterior to a baseline over the parameters both have."""
    ratios = [metrics[f"rmse_{name}"] / row["rmse"] for name, row in baseline.items()
              if f"rmse_{name}" in metrics and row["rmse"] > 0]
    return max(ratios) if ratios else None


def _rank_coverage_range(metrics: dict, ranks: tuple[int, ...] = (2, 3)) -> dict[str, float]:
    """The lowest and highest 68% coverage over the parameters of ``ranks``."""
    values = [v for k, v in metrics.items() if k.startswith("coverage_68_")
              and k.rsplit("_", 1)[-1].isdigit() and int(k.rsplit("_", 1)[-1]) in ranks]
    if not values:
        return {}
    return {"coverage_68_ranks_2_3_min": min(values), "coverage_68_ranks_2_3_max": max(values)}


def evaluate(model_dirs: list[str | os.PathLike], split: str = "test", max_halos: int = 300,
             n_samples: int = 200, seed: int = 0, storage_options: dict | None = None, *,
             in_distribution_split: str | None = "val", against: tuple | None = None,
             baseline_fit_rows: int = 2000, ranks: int = 3) -> dict:
    """Evaluate every model folder in every test condition (``conditions_for``).

    Returns ``{"models": {path: {"task", "set", "training", "conditions": {name: result},
    "metrics", ...the held-out result's arrays}}, "conditions": {name: {"source", "halos",
    "two_step", "baselines"}}, "data": {source: SplitData}, ...}``; ``casbi_store.evaluation.report`` turns
    it into a page and ``metrics.json``.
    """
    models = [load_model(m) for m in model_dirs]
    by_task = {m.task: m for m in models}
    step1 = next((by_task[t] for t in by_preference(by_task, 1)), None)
    step2 = next((by_task[t] for t in by_preference(by_task, 2)), None)
    driver = step2 or step1
    results: dict = {"models": {}, "data": {}, "conditions": {}, "split": split,
                     "max_halos": max_halos, "n_samples": n_samples, "seed": seed,
                     "against": [os.fspath(a) if a is not None else None for a in against or ()]}
    fitted: dict = {}
    for model in models:
        conditions = conditions_for(model, split, in_distribution_split, against, storage_options)
        entry = {"task": model.task, "set": f"{model.meta['set']}:{model.meta['version']}",
                 "model": model, "training": training_summary(model), "conditions": {},
                 "timings": {}}
        for cond in conditions:
            if cond.source not in results["data"]:
                results["data"][cond.source] = read_split(cond.store, cond.set, cond.version,
                                                          cond.split, max_halos, storage_options)
            data = results["data"][cond.source]
            log.info("evaluating %s (%s) on %d halos of %s (%s)", model.path, model.task,
                     len(data.x), data.source, cond.name)
            start = time.perf_counter()
            result = EVALUATORS[model.task_spec.step](model, data, n_samples=n_samples, seed=seed)
            result.update(source=cond.source, seconds=time.perf_counter() - start)
            entry["conditions"][cond.name] = result
            entry["timings"][cond.name] = {**result.pop("timings"), "seconds": result["seconds"]}
            if model is driver:
                results["conditions"][cond.name] = {"source": cond.source, "halos": len(data.x),
                                                    "set": f"{cond.set}:{cond.version}"}
        held = entry["conditions"]["held_out"]
        entry.update({k: v for k, v in held.items() if k not in entry})
        entry["timings"]["seconds_10k_samples"] = sampling_speed(model, results["data"][held["source"]])
        results["models"][str(model.path)] = entry
    prior_var = _prior_by_name(step1, step2, ranks)
    for name, cond in results["conditions"].items():
        data = results["data"][cond["source"]]
        if step1 is not None and step2 is not None and step2.task_spec.needs_nsub:
            nsub = results["models"][str(step1.path)]["conditions"][name]
            log.info("two-step posterior (%s -> %s) on %s", step1.task, step2.task, data.source)
            cond["two_step"] = evaluate_two_step(step1, step2, data, n_samples, ranks, seed, nsub)
        if baseline_fit_rows:
            if "fit" not in fitted:
                fitted["fit"] = fit_baselines(driver, baseline_fit_rows, ranks, seed, storage_options)
            cond["baselines"] = baseline_rows(fitted["fit"], data, prior_var, ranks)
        judged = judged_metrics(results, name)
        cond["targets"] = {metric: {"value": value, "target": target_for(metric, name),
                                    "met": meets(metric, value, name)}
                           for metric, value in judged.items()}
    return results


def judged_metrics(results: dict, condition: str) -> dict[str, float]:
    """The targets' metrics in one condition: the two-step posterior's (else the preferred
    step-1 and step-2 models' own), and the worst RMSE ratio to the ridge baseline."""
    cond = results["conditions"][condition]
    if "two_step" in cond:
        metrics = dict(cond["two_step"]["metrics"])
    else:
        by_task = {r["task"]: r["conditions"][condition]["metrics"]
                   for r in results["models"].values() if condition in r["conditions"]}
        metrics = {}
        for t in by_preference(by_task, 1)[:1]:
            metrics.update({f"{k}_n_sub": v for k, v in by_task[t].items()})
        for t in by_preference(by_task, 2)[:1]:
            metrics.update(by_task[t])
    metrics.update(_rank_coverage_range(metrics))
    for kind, row in cond.get("baselines", {}).items():
        ratio = _rmse_over(metrics, row)
        if ratio is not None:
            metrics[f"rmse_over_{kind}"] = ratio
    return {k: float(metrics[k]) for k in TARGETS if k in metrics}


def headline(results: dict, condition: str = "held_out") -> dict:
    """The targets' metrics in one condition (the held-out simulations by default)."""
    return judged_metrics(results, condition) if condition in results["conditions"] else {}


def _evaluate_step1(model: TrainedModel, data: SplitData, n_samples: int, seed: int) -> dict:
    return evaluate_nsub(model, data, n_samples=max(n_samples, 500), seed=seed)


def _evaluate_step2(model: TrainedModel, data: SplitData, n_samples: int, seed: int) -> dict:
    return evaluate_theta(model, data, n_samples=n_samples, seed=seed)


EVALUATORS = {1: _evaluate_step1, 2: _evaluate_step2}  # by the task's step


def target_for(metric: str, condition: str | None = None) -> tuple[str, float | tuple[float, float]]:
    """(kind, threshold) of a target in a condition."""
    return CONDITION_TARGETS.get(condition or "", {}).get(metric, TARGETS[metric])


def meets(metric: str, value: float, condition: str | None = None) -> bool:
    kind, target = target_for(metric, condition)
    if kind == "<=":
        return value <= target
    if kind == ">=":
        return value >= target
    return target[0] <= value <= target[1]
