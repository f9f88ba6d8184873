"""Learning curve (issue 8, section 3): quality on unseen galaxies against the number of
training simulations.

The pipeline format runs one suite per file, so the curve is one pipeline per size
(``pipelines/learning_curve/sims012.yaml`` ... ``sims192.yaml``: mock suites of 12 ... 192
simulations, same physics, fixed seeds, the same spec, networks and training) plus the external
suite they are all judged on (``external.yaml``, run first: another seed, the same fixed bin
edges). This script runs them in order with ``casbi-store run`` (each resumes: a finished stage
is not redone), then reads each size's ``report/metrics.json`` and writes the table (Markdown),
the figure (PNG) and the figures as JSON:

    python bench/learning_curve.py --out bench/results              # run what is missing, collect
    python bench/learning_curve.py --out bench/results --collect    # collect only

CPU-seconds of each pipeline (its process tree, ``RUSAGE_CHILDREN``) and the load average at
its start and end go into the JSON: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines" / "learning_curve"
SIZES = (12, 24, 48, 96, 192)
CONDITION = "external"
# (metrics.json key of the two-step posterior, column title)
PARAMETERS = (("n_sub", "N_sub"), ("log10_mstar_1", "log M*₁"), ("log10_mdm_1", "log M_dm₁"),
              ("tau_1", "τ₁"))


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_pipeline(path: Path, log: Path) -> dict:
    """``casbi-store run`` on one pipeline file; wall and CPU seconds of its process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start, load = time.perf_counter(), _load()
    with open(log, "a") as out:
        rc = subprocess.call([sys.executable, "-m", "casbi_store.cli", "run", "-q", str(path)],
                             stdout=out, stderr=subprocess.STDOUT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"rc": rc, "wall_s": time.perf_counter() - start,
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "load_start": load, "load_end": _load()}


def workdir(path: Path) -> Path:
    """A pipeline's workdir (relative to the current directory, as ``casbi-store run`` takes it)."""
    return Path(os.path.expandvars(yaml.safe_load(path.read_text())["workdir"]))


def row(size: int) -> dict | None:
    """The external condition's figures for one size (None if its report is missing)."""
    report = workdir(PIPELINES / f"sims{size:03d}.yaml") / "report" / "metrics.json"
    if not report.is_file():
        return None
    metrics = json.loads(report.read_text())
    out: dict = {"simulations": size}
    for cond_name in ("in_distribution", CONDITION):
        cond = metrics["conditions"].get(cond_name)
        if cond is None:
            continue
        two = cond["two_step"]
        ridge = cond.get("baselines", {}).get("ridge", {})
        fig = {"halos": cond["halos"], "tarp_max_deviation": two["tarp_max_deviation"],
               "median_rel_error_n_sub": two["median_rel_error_n_sub"]}
        for key, _ in PARAMETERS:
            fig[key] = {"coverage_68": two[f"coverage_68_{key}"],
                        "coverage_95": two[f"coverage_95_{key}"], "skill": two[f"skill_{key}"],
                        "rmse": two[f"rmse_{key}"], "truth_std": two[f"truth_std_{key}"],
                        "ridge_skill": ridge.get(key, {}).get("skill")}
        out[cond_name] = fig
    return out


def table(rows: list[dict], condition: str = CONDITION) -> str:
    head = ["sims", "halos", "N_sub med. rel. err"]
    for _, title in PARAMETERS:
        head += [f"{title} 68% cov.", f"{title} skill (ridge)"]
    head.append("TARP max dev.")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c = r.get(condition)
        if c is None:
            continue
        cells = [str(r["simulations"]), str(c["halos"]), f"{c['median_rel_error_n_sub']:.3f}"]
        for key, _ in PARAMETERS:
            p = c[key]
            ridge = "–" if p["ridge_skill"] is None else f"{p['ridge_skill']:.2f}"
            cells += [f"{p['coverage_68']:.2f}", f"{p['skill']:.2f} ({ridge})"]
        cells.append(f"{c['tarp_max_deviation']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if CONDITION in r]
    n = [r["simulations"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    ax = axes[0]
    ax.axhspan(0.63, 0.73, color="0.88", label="target 0.68 ± 0.05")
    for k, (key, title) in enumerate(PARAMETERS):
        ax.plot(n, [r[CONDITION][key]["coverage_68"] for r in rows], "o-", color=f"C{k}",
                label=title)
    ax.set(ylabel="68% coverage (external suite)", ylim=(0, 1))
    ax = axes[1]
    for k, (key, title) in enumerate(PARAMETERS):
        ax.plot(n, [r[CONDITION][key]["skill"] for r in rows], "o-", color=f"C{k}", label=title)
        ridge = [r[CONDITION][key]["ridge_skill"] for r in rows]
        if all(v is not None for v in ridge):
            ax.plot(n, ridge, ":", color=f"C{k}")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set(ylabel="skill vs prior (dotted: ridge baseline)", ylim=(-0.5, 1))
    ax = axes[2]
    ax.plot(n, [r[CONDITION]["median_rel_error_n_sub"] for r in rows], "o-", color="C0",
            label="N_sub median rel. error")
    ax.plot(n, [r[CONDITION]["tarp_max_deviation"] for r in rows], "s--", color="C4",
            label="TARP max |ECP − α| (θ)")
    ax.axhline(0.05, color="0.5", lw=0.8, ls="--")
    ax.set(ylabel="error", ylim=(0, None))
    for ax in axes:
        ax.set(xscale="log", xlabel="training simulations")
        ax.set_xticks(SIZES, [str(s) for s in SIZES])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench/results")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--collect", action="store_true", help="only read the reports already there")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "learning_curve_runs.json"
    runs = json.loads(runs_path.read_text()) if runs_path.is_file() else {}
    if not args.collect:
        for name in ["external"] + [f"sims{s:03d}" for s in args.sizes]:
            path = PIPELINES / f"{name}.yaml"
            log = workdir(path).with_suffix(".log")
            log.parent.mkdir(parents=True, exist_ok=True)
            runs[name] = run_pipeline(path, log)
            print(f"{name}: {runs[name]}", flush=True)
            runs_path.write_text(json.dumps(runs, indent=2))
    # a size whose workdir is gone keeps the row an earlier collection wrote (runs of one size
    # at a time, e.g. on different days, add up to one curve)
    earlier_path = out / "learning_curve.json"
    earlier = ({r["simulations"]: r for r in json.loads(earlier_path.read_text())["rows"]}
               if earlier_path.is_file() else {})
    found = {s: row(s) for s in SIZES}
    rows = [found[s] or earlier[s] for s in SIZES if found[s] is not None or s in earlier]
    result = {"rows": rows, "runs": runs, "condition": CONDITION}
    (out / "learning_curve.json").write_text(json.dumps(result, indent=2))
    if rows:
        (out / "learning_curve.md").write_text(table(rows) + "\n")
        figure(rows, out / "learning_curve.png")
        print(table(rows))
    return result


if __name__ == "__main__":
    main()
