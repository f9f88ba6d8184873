"""The evaluation report: figures and one self-contained ``report.html`` (images embedded).

Sections: example composed halos' chemical planes, training curves, N_sub (step 1: confusion
matrices and intervals, NPE and classifier side by side), theta (step 2: posterior means
against the truth), TARP and SBC, a corner plot of one test halo with the truth marked, and the
metrics table with the issue's targets. Figures are also written as PNG next to the page and
the numbers as ``metrics.json``. Section titles and which section a model goes to come from its
task (``casbi_store.tasks``: title, step).
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

import numpy as np

from .evaluate import TARGETS, headline, meets
from .tasks import BLOCK_PARAMETERS, by_preference, get_task


def _title(task: str) -> str:
    return get_task(task).title


def _step(result: dict) -> int:
    return get_task(result["task"]).step


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path


def plot_example_halos(data, edges: tuple[np.ndarray, np.ndarray], path: Path, n: int = 4) -> Path:
    """Chemical planes (log counts) of test halos spanning the N_sub range."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    order = np.argsort(data.n_sub, kind="stable")
    pick = order[np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int)]
    fig, axes = plt.subplots(1, len(pick), figsize=(3.3 * len(pick), 3.0), squeeze=False,
                             constrained_layout=True)
    fe, of = edges
    for ax, k in zip(axes[0], pick, strict=True):
        counts = data.x[k]
        ax.pcolormesh(fe, of, counts.T, norm=LogNorm(vmin=1, vmax=max(counts.max(), 2)),
                      cmap="viridis")
        mstar = data.theta[k, 0, 0]
        ax.set_title(f"N_sub = {data.n_sub[k]}, M*_1 = {mstar:.2g} Msol", fontsize=9)
        ax.set_xlabel("[Fe/H]")
    axes[0, 0].set_ylabel("[O/Fe]")
    return _save(fig, path)


def plot_training_curves(results: dict, path: Path) -> Path:
    plt = _pyplot()
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
    return _save(fig, path)


def plot_nsub(results: dict, path: Path) -> Path:
    """Per step-1 model: confusion matrix (mode vs truth) and median with 68% interval."""
    plt = _pyplot()
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
    return _save(fig, path)


def plot_theta(result: dict, path: Path) -> Path:
    """Posterior means against the truth for each parameter (ranks 1..3 coloured)."""
    plt = _pyplot()
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
    return _save(fig, path)


def plot_tarp(result: dict, path: Path) -> Path:
    plt = _pyplot()
    ecp, alpha = result["tarp"]
    fig, ax = plt.subplots(figsize=(3.8, 3.6), constrained_layout=True)
    ax.plot(alpha, ecp, color="C3", label="TARP ECP")
    ax.plot([0, 1], [0, 1], color="0.3", ls="--", lw=0.8, label="calibrated")
    ax.fill_between([0, 1], [-0.05, 0.95], [0.05, 1.05], color="0.85", label="±0.05")
    m = result["metrics"]
    ax.set(xlabel="credibility level", ylabel="expected coverage", xlim=(0, 1), ylim=(0, 1),
           title=f"max |ECP - α| = {m['tarp_max_deviation']:.3f}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_sbc(result: dict, path: Path) -> Path:
    plt = _pyplot()
    ranks = result["sbc_ranks"]
    n_par = ranks.shape[1]
    names = result["parameters"][:n_par]
    fig, axes = plt.subplots(1, n_par, figsize=(3.2 * n_par, 2.8), squeeze=False,
                             constrained_layout=True)
    bins = 20
    expected = len(ranks) / bins
    for k, ax in enumerate(axes[0]):
        ax.hist(ranks[:, k], bins=bins, range=(0, result["n_samples"]), color="0.4")
        ax.axhspan(expected - 2 * np.sqrt(expected), expected + 2 * np.sqrt(expected),
                   color="C2", alpha=0.25)
        p = result["metrics"]["sbc_ks_pvalues"][k]
        ax.set(title=f"{names[k]} (KS p = {p:.2g})", xlabel="SBC rank")
    return _save(fig, path)


def _metrics_table(results: dict) -> str:
    rows = []
    for path, r in results["models"].items():
        t = r["training"]
        items = [(k, v) for k, v in r["metrics"].items() if not isinstance(v, list)]
        items += [(k, ", ".join(f"{x:.3g}" for x in v)) for k, v in r["metrics"].items()
                  if isinstance(v, list)]
        items.append(("training", f"{t['members']} member(s), epochs {t['epochs']}, "
                                  f"{t['train_seconds']:.0f} s, weights "
                                  + ", ".join(f"{w:.2f}" for w in t["weights"])))
        body = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" if isinstance(v, float)
                       else f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in items)
        rows.append(f"<h3>{html.escape(_title(r['task']))} <small>{html.escape(path)}"
                    f"</small></h3><table>{body}</table>")
    return "\n".join(rows)


def _targets_table(results: dict) -> str:
    body = []
    for metric, value in headline(results).items():
        kind, target = TARGETS[metric]
        t = f"{target[0]}–{target[1]}" if kind == "within" else f"{kind} {target}"
        ok = meets(metric, value)
        body.append(f"<tr><td>{metric}</td><td>{value:.3f}</td><td>{t}</td>"
                    f"<td class={'ok' if ok else 'no'}>{'met' if ok else 'not met'}</td></tr>")
    return ("<table><tr><th>metric</th><th>measured</th><th>target</th><th></th></tr>"
            + "".join(body) + "</table>")


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _jsonable(results: dict) -> dict:
    return {"split": results["split"], "max_halos": results["max_halos"],
            "n_samples": results["n_samples"], "headline": headline(results),
            "models": {p: {"task": r["task"], "set": r["set"], "metrics": r["metrics"],
                           "training": r["training"], "seconds": r["seconds"]}
                       for p, r in results["models"].items()}}


def write_report(results: dict, out: str | os.PathLike, corner: Path | None = None) -> Path:
    """Figures, ``metrics.json`` and ``report.html`` in ``out``; returns the page's path."""
    out = Path(out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    models = results["models"]
    first = next(iter(models.values()))
    data = results["data"][first["set"]]
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
    (out / "metrics.json").write_text(json.dumps(_jsonable(results), indent=2))
    body = "\n".join(f"<h2>{html.escape(title)}</h2>\n" + "\n".join(parts)
                     for title, parts in sections)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>CASBI evaluation</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}}
img{{max-width:100%}} table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}} .ok{{color:green}} .no{{color:#b00}}
figure{{margin:0.5em 0}} figcaption{{color:#555;font-size:90%}}</style></head><body>
<h1>CASBI evaluation: {html.escape(", ".join(sorted(results["data"])))}, split {results["split"]}</h1>
<p>{len(data.x)} halos of the split (evenly spaced), {results["n_samples"]} posterior samples per
halo for step 2. Step 2 is conditioned on the true N_sub, so it is judged on its own.</p>
<h2>Targets</h2>{_targets_table(results)}
{body}
<h2>Metrics</h2>{_metrics_table(results)}
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path


def corner_for_halo(results: dict, path: Path, n_samples: int = 4000) -> Path | None:
    """Two-step posterior of one test halo (few blocks, so the corner plot is readable), truth
    marked; needs a step-1 and a per-rank step-2 model."""
    from .infer import corner_plot, flat_samples, infer

    by_task = {r["task"]: r for r in results["models"].values()}
    step1 = by_preference(by_task, 1)
    ranked = [t for t in by_preference(by_task, 2) if get_task(t).needs_nsub]
    if not step1 or not ranked:
        return None
    step1, step2 = by_task[step1[0]], by_task[ranked[0]]
    data = results["data"][step2["set"]]
    k = int(np.argmin(np.abs(data.n_sub - 8)))
    samples = infer([step1["model"], step2["model"]], data.x[k], n_samples=n_samples)
    flat = flat_samples(samples, max_rank=1)
    truth = {"n_sub": data.n_sub[k]}
    block = data.theta[k, 0]
    for name, value in zip(BLOCK_PARAMETERS, (np.log10(block[0]), np.log10(block[1]), block[2]),
                           strict=True):
        truth[f"{name}_1"] = value
    return corner_plot(flat, path, truth=truth)
