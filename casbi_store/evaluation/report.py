"""The evaluation report: figures and one self-contained ``report.html`` (images embedded).

Sections: the issue's targets judged in every test condition (✔/✘), the per-parameter figures
of the two-step posterior in every condition side by side with the baselines' reference rows
(the truth's spread beside every R^2) and its TARP curves, example composed halos' chemical
planes, training curves, N_sub (step 1: confusion matrices and intervals, NPE and classifier
side by side), theta (step 2 on the true N_sub: posterior means against the truth, TARP, SBC),
a corner plot of one test halo with the truth marked, the surrogate's validation and a
survey-style inference (``survey_section``: a ``casbi-store survey`` folder's first table through
observe -> infer, with its misspecification score) when given, and every model's metrics per
condition.
Figures are also written as PNG next to the page, the numbers as ``metrics.json`` (the same
for the same seeds) and the timings as ``timings.json``. Section titles and which section a
model goes to come from its task (``casbi_store.learn.tasks``: title, step).
"""

from __future__ import annotations

import base64
import html
import json
import os
import warnings
from pathlib import Path

import numpy as np
from markupsafe import Markup

from casbi_store.learn.tasks import BLOCK_PARAMETERS, by_preference, get_task
from casbi_store.plots.common import plane as draw_plane
from casbi_store.plots.common import pyplot, save

from .evaluate import CONDITIONS, TARGETS, headline, target_for


def _title(task: str) -> str:
    return get_task(task).title


def _step(result: dict) -> int:
    return get_task(result["task"]).step


def plot_example_halos(data, edges: tuple[np.ndarray, np.ndarray], path: Path, n: int = 4) -> Path:
    """Chemical planes (log counts) of test halos spanning the N_sub range."""
    plt = pyplot()
    order = np.argsort(data.n_sub, kind="stable")
    pick = order[np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int)]
    fig, axes = plt.subplots(1, len(pick), figsize=(3.3 * len(pick), 3.0), squeeze=False,
                             constrained_layout=True)
    for ax, k in zip(axes[0], pick, strict=True):
        _plane(ax, data.x[k], edges,
               f"N_sub = {data.n_sub[k]}, M*_1 = {data.theta[k, 0, 0]:.2g} Msol")
    axes[0, 0].set_ylabel("[O/Fe]")
    return save(fig, path)


def _plane(ax, counts: np.ndarray, edges: tuple[np.ndarray, np.ndarray], title: str) -> None:
    """One chemical plane, log counts per ([Fe/H], [O/Fe]) bin."""
    draw_plane(ax, counts, edges[0], edges[1], title=title)


def plot_training_curves(results: dict, path: Path) -> Path:
    plt = pyplot()
    items = list(results["models"].values())
    fig, axes = plt.subplots(1, len(items), figsize=(3.6 * len(items), 3.0), squeeze=False,
                             constrained_layout=True)
    for ax, r in zip(axes[0], items, strict=True):
        for k, history in enumerate(r["model"].histories):
            epochs = [h["epoch"] for h in history]
            ax.plot(epochs, [h["train_loss"] for h in history], color=f"C{k}", lw=1)
            ax.plot(epochs, [h["val_loss"] for h in history], color=f"C{k}", lw=1, ls="--")
        ax.set_title(_title(r["task"]), fontsize=9)
        ax.set_xlabel("epoch")
    axes[0, 0].set_ylabel("loss (solid: train, dashed: validation)")
    return save(fig, path)


def plot_nsub(results: dict, path: Path) -> Path:
    """Per step-1 model: confusion matrix (mode vs truth) and median with 68% interval."""
    plt = pyplot()
    from matplotlib.colors import LogNorm

    items = [r for r in results["models"].values() if _step(r) == 1]
    fig, axes = plt.subplots(2, len(items), figsize=(4.2 * len(items), 7.6), squeeze=False,
                             constrained_layout=True)
    for col, r in enumerate(items):
        v = r["values"]
        ax = axes[0, col]
        ax.pcolormesh(np.r_[v - 0.5, v[-1] + 0.5], np.r_[v - 0.5, v[-1] + 0.5], r["confusion"].T,
                      norm=LogNorm(vmin=1, vmax=max(r["confusion"].max(), 2)), cmap="Blues")
        ax.plot(v, v, color="0.5", lw=0.8)
        ax.set(title=f"{_title(r['task'])}: confusion", xlabel="true N_sub",
               ylabel="posterior mode")
        ax = axes[1, col]
        cdf = np.cumsum(r["probs"], axis=1)
        lo = v[np.argmax(cdf >= 0.16, axis=1)]
        hi = v[np.argmax(cdf >= 0.84, axis=1)]
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(r["truth"]))
        ax.errorbar(r["truth"] + jitter, r["median"], yerr=[r["median"] - lo, hi - r["median"]],
                    fmt=".", ms=3, lw=0.5, alpha=0.6)
        ax.plot(v, v, color="0.3", lw=0.8)
        m = r["metrics"]
        ax.set(title=f"68% cov. {m['coverage_68']:.2f}, med. rel. err. {m['median_rel_error']:.2f}",
               xlabel="true N_sub", ylabel="posterior median (16-84%)")
    return save(fig, path)


def plot_theta(result: dict, path: Path) -> Path:
    """Posterior means against the truth for each parameter (ranks 1..3 coloured)."""
    plt = pyplot()
    truth, mean, rank = result["truth"], result["mean"], result["rank"]
    n_par = truth.shape[1]
    fig, axes = plt.subplots(1, n_par, figsize=(3.6 * n_par, 3.4), squeeze=False,
                             constrained_layout=True)
    names = result["parameters"]
    for k, ax in enumerate(axes[0]):
        for r in np.unique(rank):
            sel = rank == r
            ax.scatter(truth[sel, k], mean[sel, k], s=5, alpha=0.6,
                       label=f"rank {r}" if r else None)
        lo, hi = np.nanmin(truth[:, k]), np.nanmax(truth[:, k])
        ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8)
        units = get_task(result["task"]).units(names[k])
        ax.set(xlabel=f"true {names[k]} [{units}]", ylabel="posterior mean")
    if rank.max() > 0:
        axes[0, 0].legend(fontsize=8)
    return save(fig, path)


def plot_tarp(result: dict, path: Path) -> Path:
    plt = pyplot()
    ecp, alpha = result["tarp"]
    fig, ax = plt.subplots(figsize=(3.8, 3.6), constrained_layout=True)
    ax.plot(alpha, ecp, color="C3", label="TARP ECP")
    ax.plot([0, 1], [0, 1], color="0.3", ls="--", lw=0.8, label="calibrated")
    ax.fill_between([0, 1], [-0.05, 0.95], [0.05, 1.05], color="0.85", label="±0.05")
    m = result["metrics"]
    ax.set(xlabel="credibility level", ylabel="expected coverage", xlim=(0, 1), ylim=(0, 1),
           title=f"max |ECP - α| = {m['tarp_max_deviation']:.3f}")
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_sbc(result: dict, path: Path) -> Path:
    """Histograms of the SBC ranks (as PIT values in [0, 1]) per parameter, pooled ranks."""
    plt = pyplot()
    pit = result["pit"]
    n_par = pit.shape[1]
    names = result["parameters"][:n_par]
    fig, axes = plt.subplots(1, n_par, figsize=(3.2 * n_par, 2.8), squeeze=False,
                             constrained_layout=True)
    bins = 20
    expected = len(pit) / bins
    for k, ax in enumerate(axes[0]):
        ax.hist(pit[:, k], bins=bins, range=(0, 1), color="0.4")
        ax.axhspan(expected - 2 * np.sqrt(expected), expected + 2 * np.sqrt(expected),
                   color="C2", alpha=0.25)
        p = result["metrics"]["sbc_ks_pvalues"][k]
        ax.set(title=f"{names[k]} (KS p = {p:.2g})", xlabel="SBC rank / samples")
    return save(fig, path)


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return html.escape(str(v))
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        return ", ".join(f"{x:.3g}" for x in v)
    return html.escape(str(v))


def _conditions(results: dict) -> list[str]:
    return [c for c in CONDITIONS if c in results["conditions"]]


def _text(v) -> str:
    """A metric's value as text (``_fmt`` unescaped: the template escapes)."""
    if isinstance(v, float) and not isinstance(v, bool):
        return f"{v:.3g}"
    if isinstance(v, list):
        return ", ".join(f"{x:.3g}" for x in v)
    return str(v)


def _model_metrics(results: dict) -> list[dict]:
    """Every model's metrics, one column per test condition."""
    out = []
    for path, r in results["models"].items():
        names = [c for c in CONDITIONS if c in r["conditions"]]
        keys = list(dict.fromkeys(k for c in names for k in r["conditions"][c]["metrics"]))
        t = r["training"]
        training = (f"{t['members']} member(s), epochs {t['epochs']}, {t['train_seconds']:.0f} s, "
                    "weights " + ", ".join(f"{w:.2f}" for w in t["weights"])
                    + (f", temperature {t['temperature']:.3f}" if t.get("temperature") else ""))
        out.append({"title": _title(r["task"]), "path": path, "training": training,
                    "conditions": names,
                    "rows": [(k, [_text(r["conditions"][c]["metrics"].get(k)) for c in names])
                             for k in keys]})
    return out


def _target_text(metric: str, condition: str) -> str:
    kind, target = target_for(metric, condition)
    return f"{target[0]}–{target[1]}" if kind == "within" else f"{kind} {target}"


def _targets(results: dict) -> list[tuple[str, list[dict | None]]]:
    """The targets (issue 23): measured value, met or not and the target in each condition."""
    rows = []
    for metric in TARGETS:
        cells = []
        for c in _conditions(results):
            got = results["conditions"][c].get("targets", {}).get(metric)
            cells.append(None if got is None else {"value": got["value"], "met": got["met"],
                                                   "target": _target_text(metric, c)})
        rows.append((metric, cells))
    return rows


PARAMETER_COLUMNS = ("coverage_68", "coverage_95", "sbc_ks_pvalue", "tarp_max_deviation", "rmse",
                     "bias", "r2", "skill")
HEADERS = {"coverage_68": "68% cov.", "coverage_95": "95% cov.", "sbc_ks_pvalue": "SBC KS p",
           "tarp_max_deviation": "TARP max dev.", "r2": "R²"}


def _parameters(results: dict) -> list[str]:
    names: list[str] = []
    for c in _conditions(results):
        cond = results["conditions"][c]
        metrics = cond.get("two_step", {}).get("metrics", {})
        names += [k[len("rmse_"):] for k in metrics if k.startswith("rmse_")]
        for rows in cond.get("baselines", {}).values():
            names += list(rows)
    return list(dict.fromkeys(names))


SUPPORT_ROWS = {
    "support_flag_rate": "halos flagged (unlike the training halos, or no training galaxy near)",
    "support_thin_truth_rate": "halos whose true top block has no training galaxy near it",
    "support_detection": "detection: flagged among those",
    "support_false_alarm": "false alarm: flagged among the others",
    "support_caught_misses": "flagged among halos whose log M*₁ lies outside the 95% interval",
    "support_miss_rate_unflagged": "95% misses among unflagged halos",
}


def _support(results: dict) -> dict | None:
    """The thin-support signal (``apply.support``) in each condition, None without one."""
    names = [c for c in _conditions(results)
             if "support_flag_rate" in results["conditions"][c].get("two_step", {}).get("metrics", {})]
    if not names:
        return None
    return {"conditions": names, "rows": [
        (label, [_text(results["conditions"][c]["two_step"]["metrics"].get(key)) for c in names])
        for key, label in SUPPORT_ROWS.items()]}


def _parameter_headers() -> list[str]:
    return [h for k in PARAMETER_COLUMNS
            for h in ([HEADERS.get(k, k)] + (["truth σ"] if k == "r2" else []))]


def _parameter_rows(results: dict) -> list[tuple[str, str, str, list[str]]]:
    """Per parameter and condition: the two-step posterior's figures and the baselines' rows."""
    body = []
    for name in _parameters(results):
        for c in _conditions(results):
            cond = results["conditions"][c]
            two = cond.get("two_step", {}).get("metrics", {})
            rows = []
            if f"rmse_{name}" in two:
                rows.append(("two-step posterior", {k: two.get(f"{k}_{name}")
                                                    for k in (*PARAMETER_COLUMNS, "truth_std")}))
            for kind, per in cond.get("baselines", {}).items():
                if name in per:
                    rows.append((f"{kind} (baseline)", per[name]))
            for label, m in rows:
                cells = []
                for k in PARAMETER_COLUMNS:
                    v = m.get(k)
                    cells.append("–" if v is None else _text(float(v)))
                    if k == "r2":  # the truth's spread beside every R^2
                        cells.append(_text(float(m["truth_std"])))
                body.append((name, c, label, cells))
    return body


def plot_two_step_tarp(results: dict, path: Path) -> Path | None:
    """TARP curves of the two-step posterior (theta, pooled ranks), one per condition."""
    conds = [(c, results["conditions"][c]["two_step"]) for c in _conditions(results)
             if "two_step" in results["conditions"][c]]
    if not conds:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.8), constrained_layout=True)
    ax.fill_between([0, 1], [-0.05, 0.95], [0.05, 1.05], color="0.85", label="±0.05")
    ax.plot([0, 1], [0, 1], color="0.3", ls="--", lw=0.8)
    for k, (c, r) in enumerate(conds):
        ecp, alpha = r["tarp"]
        ax.plot(alpha, ecp, color=f"C{k}",
                label=f"{c} (max dev. {r['metrics']['tarp_max_deviation']:.2f})")
    ax.set(xlabel="credibility level", ylabel="expected coverage", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    return save(fig, path)


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _plain(obj):
    """numpy scalars and tuples as JSON's own types."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _jsonable(results: dict) -> dict:
    """``metrics.json``: the figures only (no timings), the same for the same seeds."""
    conditions = {}
    for c in _conditions(results):
        cond = results["conditions"][c]
        conditions[c] = {"source": cond["source"], "halos": cond["halos"],
                         "targets": cond.get("targets", {}), "baselines": cond.get("baselines", {}),
                         "two_step": cond["two_step"]["metrics"] if "two_step" in cond else None,
                         "models": {p: r["conditions"][c]["metrics"]
                                    for p, r in results["models"].items() if c in r["conditions"]}}
    training = {p: {k: v for k, v in r["training"].items() if k != "train_seconds"}
                for p, r in results["models"].items()}
    return _plain({"split": results["split"], "max_halos": results["max_halos"],
                   "n_samples": results["n_samples"], "seed": results.get("seed"),
                   "against": results.get("against"), "headline": headline(results),
                   "conditions": conditions,
                   "models": {p: {"task": r["task"], "set": r["set"], "metrics": r["metrics"],
                                  "training": training[p]}
                              for p, r in results["models"].items()}})


def _timings(results: dict) -> dict:
    return _plain({p: {"train_seconds": r["training"]["train_seconds"], **r["timings"]}
                   for p, r in results["models"].items()}
                  | {f"two_step/{c}": cond["two_step"]["timings"]
                     for c, cond in results["conditions"].items() if "two_step" in cond})


SURROGATE_DISTANCES = {"jsd": "JSD of the normalised planes", "w1_feh": "W1 of the [Fe/H] marginal (dex)",
                       "w1_ofe": "W1 of the [O/Fe] marginal (dex)",
                       "abs_d_median_feh": "|Δ median [Fe/H]| (dex)",
                       "abs_d_knee_feh": "|Δ knee [Fe/H]| (dex)"}
SURROGATE_FIGURES = {
    "planes": "true / surrogate (stars from its M*) / surrogate density / nearest-θ baseline planes "
              "of held-out galaxies",
    "strip": "interpolation strip: θ walked across a gap of the suite (JSD between neighbours)",
    "physics": "mass–metallicity relation and [O/Fe] knee of true, surrogate and baseline planes"}


def surrogate_section(folder: str | os.PathLike) -> tuple[str, list[str]]:
    """The surrogate's validation (``casbi-store surrogate validate`` output in ``folder``): the
    median distances to the held-out planes against the nearest-θ baseline, the classifier
    two-sample AUCs and the validation figures."""
    from casbi_store.surrogate.validation import figure_paths

    folder = Path(folder)
    result = json.loads((folder / "validation.json").read_text())
    kinds = ("surrogate", "surrogate_density", "baseline")
    rows = []
    for metric, label in SURROGATE_DISTANCES.items():
        s = result["summary"].get(metric, {})
        cells = "".join(f"<td>{_fmt(s.get(f'median_{k}'))}</td>" for k in kinds)
        rows.append(f"<tr><td>{html.escape(label)}</td>{cells}"
                    f"<td>{_fmt(s.get('win_fraction_surrogate'))}</td></tr>")
    aucs = ", ".join(f"{html.escape(name)} {_fmt(t.get('auc'))}"
                     for name, t in result.get("classifier_two_sample", {}).items())
    parts = [f"<p>{result['n_heldout_snapshots']} snapshots of "
             f"{len(result['holdout_simulations'])} simulations held out of the surrogate's "
             f"training; medians over them (wins: share of snapshots where the surrogate is closer "
             f"than the baseline). Classifier two-sample AUC (0.5: indistinguishable): {aucs}.</p>",
             "<table><tr><th>median distance</th><th>surrogate</th><th>surrogate density</th>"
             "<th>nearest-θ baseline</th><th>wins</th></tr>" + "".join(rows) + "</table>"]
    figures = figure_paths(folder)
    parts += [_img(figures[k], caption) for k, caption in SURROGATE_FIGURES.items() if k in figures]
    return "Surrogate simulator: validation on held-out simulations", parts


SURVEY_TITLE = "Survey-style inference: a survey table of a held-out halo, observe → infer"


def _observation_text(spec: dict) -> str:
    """The observation model of a survey run, for people."""
    n_obs = (f"{spec['n_obs_min']}" if spec["n_obs_min"] == spec["n_obs_max"] else
             f"{spec['n_obs_min']}–{spec['n_obs_max']} (log-uniform)")
    errors = ", ".join(f"{name} {spec[k]:g} dex (spread of ln σ {spec.get(k + '_spread', 0):g})"
                       for name, k in (("[Fe/H]", "feh_err"), ("[O/Fe]", "ofe_err")) if spec.get(k))
    cuts = [f"[Fe/H] {op} {spec[k]:g}" for k, op in (("feh_min", ">"), ("feh_max", "<"))
            if spec.get(k) is not None]
    return (f"N_obs {n_obs} stars drawn by {spec.get('weight', 'number')}, Gaussian errors "
            f"{errors or 'none'}" + (f", selection {' and '.join(cuts)}" if cuts else ""))


def _coverage_table(coverage: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{c['n']}</td><td>{c['0.68']:.2f}</td>"
                   f"<td>{c['0.95']:.2f}</td></tr>" for label, c in coverage["coverage"].items())
    flagged = coverage.get("misspecification_flagged")
    flagged = ("" if flagged is None else
               f" {flagged} of them lie above the misspecification threshold.")
    return (f"<p>The truth inside the central credible intervals over "
            f"{coverage['n_tables']} such tables (distinct halos, {coverage['n_samples']} "
            f"samples each; calibrated: 0.68 and 0.95).{flagged}</p><table><tr><th>parameter</th>"
            f"<th>tables</th><th>68%</th><th>95%</th></tr>{rows}</table>")


def survey_section(folder: str | os.PathLike, figures: Path) -> tuple[str, list[str]]:
    """The survey-style inference of a ``casbi-store survey`` folder (the pipeline's survey
    stage): the first survey table's observed plane, ``observe``'s summary of what it kept and
    dropped, N_obs, its two-step posterior as a corner plot with the truth marked and the
    misspecification score in the title, and the coverage over all the tables. Without those
    files the section says what is missing."""
    import xarray as xr

    from casbi_store.apply.infer import corner_plot, describe_observation
    from casbi_store.apply.observe import read_observation
    from casbi_store.learn.misspecification import Assessment

    folder = Path(folder)
    truth_file, observation, posterior = (folder / "tables" / "truth.json",
                                          folder / "observation.nc", folder / "posterior.nc")
    missing = [str(p) for p in (truth_file, observation, posterior) if not p.is_file()]
    if missing:
        return SURVEY_TITLE, [f"<p class=no>No survey-style inference to show: "
                              f"{html.escape(', '.join(missing))} missing (run the pipeline's "
                              f"<code>survey</code> stage, or <code>casbi-store survey</code> "
                              f"into {html.escape(str(folder))}).</p>"]
    truth = json.loads(truth_file.read_text())
    first = truth["tables"][0]  # the table `casbi-store survey` observes and infers first
    counts, attrs = read_observation(observation)
    observed = describe_observation(observation, counts, attrs)
    with xr.open_dataset(posterior) as ds:
        samples = ds.load()
    assessment = Assessment.from_attrs(samples.attrs)
    marks = {"n_sub": first["n_sub"]} | {f"{name}_1": value for name, value in
                                         zip(BLOCK_PARAMETERS, first["theta"][0], strict=True)}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.6), constrained_layout=True)
    _plane(ax, counts, (attrs["feh_edges"], attrs["ofe_edges"]),
           f"N_obs = {int(counts.sum())} stars (true N_sub = {first['n_sub']})")
    ax.set_ylabel("[O/Fe]")
    plane = save(fig, figures / "survey_plane.png")
    corner = corner_plot(samples, figures / "survey_corner.png", truth=marks)
    models = ", ".join(f"{m} ({r})" for m, r in zip(json.loads(samples.attrs["models"]),
                                                    json.loads(samples.attrs["representations"]),
                                                    strict=True))
    verdict = ("<span class=no>flagged</span>" if assessment and assessment.flagged else
               "<span class=ok>not flagged</span>" if assessment and assessment.available
               else "unavailable")
    parts = [f"<p>Training set {html.escape(truth['set'])}: each composed halo observed as a "
             f"survey would see it ({html.escape(_observation_text(truth['observation']))}); "
             f"models (representation): {html.escape(models)}; <code>normalised</code> sees the "
             "plane's shape and N_obs as a separate condition, never the star count as a proxy "
             f"of mass. One survey table of a halo of the {html.escape(truth['split'])} split"
             + (" (held out of training)" if truth["split"] == "test" else "")
             + f": {first['n_obs']} stars with their errors, written as FITS, through "
             "<code>casbi-store observe</code> and <code>casbi-store infer</code>.</p>",
             f"<p><b>N_obs = {samples.attrs.get('n_obs', int(counts.sum())):g}</b> stars (the "
             "condition the models see beside the plane's shape). What <code>observe</code> "
             f"kept and dropped:</p><pre>{html.escape(observed.summary)}</pre>",
             f"<p><b>Is this table like the training halos?</b> ({verdict}) "
             f"{html.escape(assessment.summary() if assessment else 'not recorded')}</p>",
             _img(plane, "the observed chemical plane (log counts per bin)"),
             _img(corner, "two-step posterior of the survey table (N_sub mixture, rank 1), "
                          "truth in red; title: the misspecification score and its threshold")]
    coverage = folder / "posteriors" / "coverage.json"
    if coverage.is_file():
        parts.append(_coverage_table(json.loads(coverage.read_text())))
    return SURVEY_TITLE, parts


def write_report(results: dict, out: str | os.PathLike, corner: Path | None = None,
                 surrogate: str | os.PathLike | None = None,
                 survey: str | os.PathLike | None = None) -> Path:
    """Figures, ``metrics.json`` and ``report.html`` in ``out``; returns the page's path.
    ``surrogate``: a surrogate validation folder; ``survey``: a ``casbi-store survey`` folder;
    each shown in its own section."""
    out = Path(out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    models = results["models"]
    first = next(iter(models.values()))
    data = results["data"][first["source"]]
    edges = (first["model"].stats["feh_edges"], first["model"].stats["ofe_edges"])
    sections = [("Example composed halos (test split)",
                 [_img(plot_example_halos(data, edges, figs / "halos.png"),
                       "log counts per ([Fe/H], [O/Fe]) bin, test halos across the N_sub range")]),
                ("Training curves", [_img(plot_training_curves(results, figs / "training.png"),
                                          "loss per epoch, one colour per ensemble member")])]
    if any(_step(r) == 1 for r in models.values()):
        sections.append(("Step 1: N_sub", [_img(plot_nsub(results, figs / "nsub.png"),
                                                "confusion matrix (top) and posterior median with"
                                                " 68% interval (bottom) against the truth")]))
    for r in models.values():
        if _step(r) == 2:
            tag = r["task"]
            sections.append((f"Step 2: {_title(tag)}", [
                _img(plot_theta(r, figs / f"{tag}_means.png"),
                     "posterior means against the truth (conditioned on the true N_sub)"),
                _img(plot_tarp(r, figs / f"{tag}_tarp.png"), "TARP expected coverage"),
                _img(plot_sbc(r, figs / f"{tag}_sbc.png"),
                     "SBC rank histograms (band: ±2σ of a uniform histogram)")]))
    if corner is not None:
        sections.append(("One test halo", [_img(corner, "two-step posterior (N_sub mixture), "
                                                        "truth in red")]))
    if surrogate is not None:
        sections.append(surrogate_section(surrogate))
    if survey is not None:
        sections.append(survey_section(survey, figs))
    (out / "metrics.json").write_text(json.dumps(_jsonable(results), indent=2))
    (out / "timings.json").write_text(json.dumps(_timings(results), indent=2))
    tarp = plot_two_step_tarp(results, figs / "two_step_tarp.png")
    tarp_img = _img(tarp, "TARP of the two-step posterior (theta, ranks pooled)") if tarp else ""
    sources = [{"name": c, "source": results["conditions"][c]["source"],
                "halos": results["conditions"][c]["halos"]} for c in _conditions(results)]
    page = _template().render(
        set_name=first["set"], n_samples=results["n_samples"], seed=results.get("seed"),
        sources=sources, conditions=_conditions(results), targets=_targets(results),
        support=_support(results), parameter_headers=_parameter_headers(),
        parameter_rows=_parameter_rows(results), tarp_figure=Markup(tarp_img),
        sections=[(title, [Markup(p) for p in parts]) for title, parts in sections],
        models=_model_metrics(results))
    path = out / "report.html"
    path.write_text(page)
    return path


def _template():
    """The page's Jinja2 template (``templates/report.html.j2``, package data)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("casbi_store.evaluation", "templates"),
                             autoescape=True, keep_trailing_newline=True)
    return env.get_template("report.html.j2")


def corner_for_halo(results: dict, path: Path, n_samples: int = 4000) -> Path | None:
    """Two-step posterior of one test halo (few blocks, so the corner plot is readable), truth
    marked; needs a step-1 and a per-rank step-2 model."""
    from casbi_store.apply.infer import corner_plot, flat_samples, infer
    from casbi_store.apply.posteriors import OutsidePriorError
    from casbi_store.apply.support import ThinSupportWarning

    by_task = {r["task"]: r for r in results["models"].values()}
    step1 = by_preference(by_task, 1)
    ranked = [t for t in by_preference(by_task, 2) if get_task(t).needs_nsub]
    if not step1 or not ranked:
        return None
    step1, step2 = by_task[step1[0]], by_task[ranked[0]]
    data = results["data"][step2["source"]]
    samples = None
    # the halo nearest N_sub = 8 whose posterior lies in the prior box (a halo unlike every
    # training halo, which infer refuses, is skipped: the page's tables count such halos)
    for k in np.argsort(np.abs(data.n_sub - 8), kind="stable")[:10]:
        try:
            with warnings.catch_warnings():  # the page shows the signal per condition
                warnings.simplefilter("ignore", ThinSupportWarning)
                samples = infer([step1["model"], step2["model"]], data.x[k], n_samples=n_samples)
            break
        except OutsidePriorError:
            continue
    if samples is None:
        return None
    flat = flat_samples(samples, max_rank=1)
    truth = {"n_sub": data.n_sub[k]}
    block = data.theta[k, 0]
    for name, value in zip(BLOCK_PARAMETERS, (np.log10(block[0]), np.log10(block[1]), block[2]),
                           strict=True):
        truth[f"{name}_1"] = value
    return corner_plot(flat, path, truth=truth)
