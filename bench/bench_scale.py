"""Scale benchmark: the ``nihao`` preset (100 simulations x 64 snapshots, up to 1e6 stars).

Phases (``--phases``, run in the order given; figures accumulate in ``WORK/scale.json``):

``generate``  writes a subset of the preset's simulations (``--sims``, indices into the preset's
              100 draws, sorted by halo mass), all 64 snapshots each, into ``WORK/suite``.
``extract1``, ``extract2``  run ``extract_suite`` on it with 1 (2) Dask workers into a fresh
              store, every galaxy kept (no stellar-mass limit), sampling each worker's RSS every
              20 ms and its CPU time at the start and end of every task: CPU-seconds and peak RSS
              per snapshot against its particle counts.
``realistic`` a few snapshots at NIHAO's own resolution (1e6 dark-matter and 1e6 gas particles),
              extracted with 1 worker: the fits' anchor at realistic sizes.
``compose``   composes ``--train-per-n`` x 99 + ``--test-per-n`` x 99 halos (N_sub 2-100; 1e6
              with the defaults) into the 1-worker store: time, halos/s, size on disk.
``stream``    streams one epoch of that training split through ``TrainingSetStream`` in a fresh
              process, sampling its RSS: first/min/max/last.
``model``     the full preset's particle counts per snapshot (from its draws, without writing
              it) and the cost of extracting it on ``--cores`` SLURM cores, from linear fits of
              CPU-seconds and peak RSS against star and other particles; also at NIHAO's own
              resolution (same stars, 1e6 dark-matter and 1e6 gas particles per halo).

    python bench/bench_scale.py --work /work/scale_bench --out bench/results     # all phases

The raw figures go to ``OUT/scale.json``; the work folder (tens of GB) stays outside the repo.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

# All 64 snapshots of these draws (index = rank in halo mass among the preset's 100): the mass
# range's ends (both ~1e6-star galaxies at 97 and 99) and eight between.
DEFAULT_SIMS = (0, 11, 22, 33, 44, 55, 66, 77, 88, 99)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _build_one(args) -> tuple[str, float]:
    from casbi_store.mock.suite import build_simulation

    model, spec, staging = args
    start = time.process_time()
    build_simulation(model, spec, staging)
    return model.name, time.process_time() - start


def generate(work: Path, sims: tuple[int, ...], seed: int, workers: int) -> dict:
    """Write the chosen simulations of the ``nihao`` preset into ``work/suite``; resumable."""
    from casbi_store.mock.suite import draw_simulations, preset

    spec = preset("nihao", seed=seed)
    models = draw_simulations(spec)
    chosen = [models[i] for i in sims]
    suite, staging = work / "suite", work / "suite.partial"
    suite.mkdir(parents=True, exist_ok=True)
    todo = [m for m in chosen if not (suite / m.name).exists()]
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    wall = time.perf_counter()
    cpu: dict[str, float] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for name, seconds in pool.map(_build_one, [(m, spec, staging) for m in todo]):
            (staging / name).rename(suite / name)  # a simulation appears whole or not at all
            cpu[name] = seconds
            print(f"generated {name} in {seconds:.1f} CPU-s", flush=True)
    staging.rmdir()
    size = sum(f.stat().st_size for f in suite.rglob("*") if f.is_file())
    return {"sims": list(sims), "names": [m.name for m in chosen], "seed": seed,
            "n_star_final": [m.n_star_final for m in chosen],
            "log_mhalo": [round(m.log_mhalo, 3) for m in chosen],
            "generated_now": sorted(cpu), "cpu_seconds": cpu,
            "wall_seconds": time.perf_counter() - wall, "suite_bytes": size,
            "load_average_end": load_average()}



PAGE = os.sysconf("SC_PAGE_SIZE")
NO_LIMIT = 1e15  # Msun: every galaxy goes all the way through (the default 6e9 excludes the largest)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


class TaskProbe:
    """A Dask worker plugin: per extraction task, the worker's CPU-seconds and its peak RSS
    (sampled every 20 ms by a thread) between the task's start and end."""

    name = "scale-probe"

    def setup(self, worker) -> None:
        import threading

        self.records: list[dict] = []
        self.current: tuple | None = None
        self.peak = _rss()
        self.stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def transition(self, key, start, finish, **kwargs) -> None:
        key = str(key)
        if not key.startswith("extract-"):
            return
        if finish == "executing":
            rss = _rss()
            self.peak = rss
            self.current = (key, time.time(), _cpu(), rss)
        elif start == "executing" and self.current and self.current[0] == key:
            name, t0, c0, r0 = self.current
            rss = _rss()
            self.records.append({"key": name, "wall": time.time() - t0, "cpu": _cpu() - c0,
                                 "rss_start": r0, "rss_peak": max(self.peak, rss), "rss_end": rss})
            self.current = None

    def teardown(self, worker) -> None:
        self.stop.set()


def _probe_records(dask_worker) -> dict:
    probe = dask_worker.plugins["scale-probe"]
    return {"tasks": probe.records, "cpu_total": _cpu(),
            "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def tipsy_counts(path: Path) -> dict:
    """Particle counts from a tipsy header (big-endian, as NIHAO's)."""
    header = np.fromfile(path, dtype=">f8,>i4,>i4,>i4,>i4,>i4", count=1)[0]
    _, n, _, n_gas, n_dm, n_star = (x.item() for x in header)
    return {"n_particles": n, "n_gas": n_gas, "n_dm": n_dm, "n_star_file": n_star}


def warm_cache(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def du(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def extract_run(suite: Path, store: Path, workers: int) -> dict:
    """One ``extract_suite`` into a fresh store on ``workers`` LocalCluster workers, probed."""
    import xarray as xr
    from dask.distributed import WorkerPlugin

    from casbi_store.store.cluster import ClusterSpec, cluster_client
    from casbi_store.store.extract import ExtractionSettings
    from casbi_store.store.extraction_run import extract_suite
    from casbi_store.store.snapshots import find_snapshots

    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(f"{store}.staging", ignore_errors=True)
    warm_cache(suite)
    load_start = load_average()
    probe = type("Probe", (TaskProbe, WorkerPlugin), {})()
    wall = time.perf_counter()
    cpu_client = _cpu()
    with cluster_client(ClusterSpec(workers=workers)) as client:
        client.register_plugin(probe, name=TaskProbe.name)
        summary = extract_suite(suite, store, settings=ExtractionSettings(mstar_limit=NO_LIMIT),
                                client=client, progress=False)
        per_worker = client.run(_probe_records)
    wall = time.perf_counter() - wall
    counts = {ref.name: tipsy_counts(ref.path(suite)) for ref in find_snapshots(suite)}
    gal = xr.open_zarr(store, group="galaxies", consolidated=True)
    n_star_main = dict(zip(gal["name"].values.tolist(), gal["n_star"].values.tolist(), strict=True))
    tasks = []
    for worker, info in per_worker.items():
        for rec in info["tasks"]:
            name = rec["key"][len("extract-"):].rsplit("-", 1)[0]
            tasks.append({**rec, "worker": worker, "snapshot": name, **counts[name],
                          "n_star_main": n_star_main.get(name)})
    return {
        "workers": workers, "load_average_start": load_start, "load_average_end": load_average(),
        "summary": {"n_snapshots": summary.n_snapshots, "ok": summary.ok,
                    "failed": summary.failed, "excluded": summary.excluded,
                    "n_stars": summary.n_stars, "seconds": summary.seconds,
                    "phases": summary.phases, "failures": summary.failures},
        "wall_seconds_with_cluster": wall, "client_cpu_seconds": _cpu() - cpu_client,
        "worker_cpu_total": {w: i["cpu_total"] for w, i in per_worker.items()},
        "worker_maxrss": {w: i["maxrss"] for w, i in per_worker.items()},
        "store_bytes": du(store), "tasks": tasks,
    }


def compose_run(store: Path, train_per_n: int, test_per_n: int, n_sub_max: int) -> dict:
    """Compose a uniform set (N_sub 2-``n_sub_max``) into ``store``: time, halos/s, bytes on disk."""
    from casbi_store.compose import ComposeSpec, compose
    from casbi_store.store.trainingsets import versions

    version = f"v{len(versions(store, 'scale')) + 1}" if (store / "training_sets").exists() else "v1"
    spec = ComposeSpec(name="scale", version=version, seed=1, train_per_n=train_per_n,
                       test_per_n=test_per_n, n_sub_max=n_sub_max)
    load_start = load_average()
    cpu, wall = _cpu(), time.perf_counter()
    entry = compose(store, spec, progress=False)
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    halos = sum(entry["counts"].values())
    folder = store / "training_sets" / "scale" / version
    return {"version": version, "counts": entry["counts"], "halos": halos, "seconds": wall,
            "process_cpu_seconds": cpu, "halos_per_s": halos / wall, "bytes": du(folder),
            "bytes_per_split": {p.name: du(p) for p in folder.iterdir() if p.is_dir()},
            "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "load_average_start": load_start, "load_average_end": load_average()}


def _stream_child(store: str, version: str, batch_size: int, every: int, queue) -> None:
    """One epoch of the training split through ``TrainingSetStream`` and a DataLoader, as the
    trainer reads it: RSS read after every batch (kept every ``every`` batches) and its peak
    sampled every 20 ms by a thread, so a transient between batches is seen too."""
    import threading

    import torch

    from casbi_store.learn.streaming import TrainingSetStream

    torch.set_num_threads(1)
    rss_imports = _rss()
    stream = TrainingSetStream(store, "scale", version, "train")
    loader = torch.utils.data.DataLoader(stream, batch_size=batch_size)
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = [_rss()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _rss())

    threading.Thread(target=sample, daemon=True).start()
    per_batch, samples, rows = [], [], 0
    cpu, wall = _cpu(), time.perf_counter()
    for i, (x, _) in enumerate(loader):
        rows += len(x)
        per_batch.append(_rss())
        if i % every == 0:
            samples.append((rows, time.perf_counter() - wall, per_batch[-1]))
    samples.append((rows, time.perf_counter() - wall, _rss()))
    stop.set()
    queue.put({"rows": rows, "n_rows": len(stream), "seconds": time.perf_counter() - wall,
               "cpu_seconds": _cpu() - cpu, "rss_after_imports": rss_imports,
               "maxrss_before_epoch": maxrss_before, "rss_peak_sampled": peak[0],
               "rss_per_batch_min": min(per_batch), "rss_per_batch_max": max(per_batch),
               "batches": len(per_batch), "samples": samples,
               "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})


def stream_run(store: Path, version: str, batch_size: int = 128, every: int = 50) -> dict:
    """Stream one epoch in a fresh process; RSS first/min/max/last over the epoch."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    load_start = load_average()
    child = ctx.Process(target=_stream_child, args=(str(store), version, batch_size, every, queue))
    child.start()
    result = queue.get()
    child.join()
    rss = [s[2] for s in result["samples"]]
    return {**result, "batch_size": batch_size, "rows_per_s": result["rows"] / result["seconds"],
            "rss_first": rss[0], "rss_min": min(rss), "rss_max": max(rss), "rss_last": rss[-1],
            "load_average_start": load_start, "load_average_end": load_average()}


def realistic(work: Path, sims: tuple[int, ...], steps: tuple[int, ...], seed: int) -> dict:
    """Snapshots at NIHAO's own resolution (1e6 dark-matter and 1e6 gas particles per halo, as
    NIHAO resolves each galaxy) of a few simulations, extracted with 1 worker: anchors the fits."""
    from casbi_store.mock.suite import draw_simulations, preset

    spec = preset("nihao", seed=seed, n_dm_final=1_000_000, n_gas=1_000_000)
    suite = work / "suite-realistic"
    if not suite.exists():
        staging = work / "suite-realistic.partial"
        shutil.rmtree(staging, ignore_errors=True)
        models = draw_simulations(spec)
        with ProcessPoolExecutor(max_workers=2) as pool:
            list(pool.map(_build_one, [(replace(models[i], steps=steps), spec, staging)
                                       for i in sims]))
        staging.rename(suite)
    return {"sims": list(sims), "steps": list(steps), "suite_bytes": du(suite),
            **extract_run(suite, work / "store-realistic.zarr", 1)}


def fit(tasks: list[dict], y: str, columns: tuple[str, ...]) -> dict:
    """Least squares ``y = c0 + sum c_i * column_i`` over the probed tasks."""
    a = np.array([[1.0] + [t[c] for c in columns] for t in tasks])
    b = np.array([t[y] for t in tasks], dtype=float)
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    resid = b - a @ coef
    return {"y": y, "columns": ["const", *columns], "coef": coef.tolist(),
            "rms_residual": float(np.sqrt(np.mean(resid**2))),
            "max_abs_residual": float(np.abs(resid).max())}


def cost_model(results: dict, seed: int, cores: int) -> dict:
    """What extracting a whole suite costs on ``cores`` workers, from the probed runs.

    Workers: CPU-seconds per snapshot from a linear fit against its star and other particles
    (1-worker run and the NIHAO-resolution anchors), packed perfectly on ``cores`` (thousands of
    tasks of a few seconds). Client (serial: commit, histograms): its CPU-seconds per star of
    the 1-worker run. Memory per worker: the largest worker ``ru_maxrss`` of the run whose
    largest snapshot is the scenario's largest (measured, not fitted); the rise of RSS within a
    task is fitted too. Wall times from CPU-seconds assume a core per worker, not a shared one.
    """
    tasks = list(results["extract_1"]["tasks"])
    tasks += results.get("realistic", {}).get("tasks", [])
    for t in tasks:
        t["n_other"] = t["n_dm"] + t["n_gas"]
        t["rss_rise"] = t["rss_peak"] - t["rss_start"]
    cols = ("n_star_file", "n_other")
    cpu_fit, rise_fit = fit(tasks, "cpu", cols), fit(tasks, "rss_rise", cols)
    # The anchors (NIHAO resolution) against the fit: their measured / predicted CPU-seconds
    anchors = results.get("realistic", {}).get("tasks", [])
    ratio = float(np.mean([t["cpu"] / (cpu_fit["coef"][0] + cpu_fit["coef"][1] * t["n_star_file"]
                                        + cpu_fit["coef"][2] * t["n_other"]) for t in anchors])
                  ) if anchors else float("nan")
    one = results["extract_1"]["summary"]
    serial_per_star = results["extract_1"]["client_cpu_seconds"] / one["n_stars"]
    bytes_per_star = results["extract_1"]["store_bytes"] / one["n_stars"]
    maxrss = {"preset": max(results["extract_1"]["worker_maxrss"].values()),
              "realistic": max(results.get("realistic", {}).get("worker_maxrss", {0: 0}).values())}
    out = {"cpu_fit": cpu_fit, "rss_rise_fit": rise_fit, "cores": cores,
           "anchor_cpu_measured_over_fit": ratio,
           "client_cpu_seconds_per_star": serial_per_star, "store_bytes_per_star": bytes_per_star}
    from casbi_store.mock.suite import dark_matter_counts, draw_simulations, particle_counts, preset

    spec = preset("nihao", seed=seed)
    models = draw_simulations(spec)
    rows_preset = [(m, r) for m in models for r in particle_counts(m, spec)]
    # NIHAO's resolution: the same stars, 1e6 dark-matter and 1e6 gas particles per halo
    dense = preset("nihao", seed=seed, n_dm_final=1_000_000, n_gas=1_000_000)
    rows_dense = []
    for m, r in rows_preset:
        dm = dark_matter_counts(m, dense, r["step"])
        n_dm = dm["main"] + dm["neighbour"] + dm["background"]
        rows_dense.append((m, {**r, "n_dm": n_dm, "n_gas": dense.n_gas,
                               "n_particles": r["n_star_file"] + n_dm + dense.n_gas}))
    for label, pairs in (("preset", rows_preset), ("realistic", rows_dense)):
        rows = [r for _, r in pairs]
        x = np.array([[1.0, r["n_star_file"], r["n_dm"] + r["n_gas"]] for r in rows])
        cpu = np.maximum(x @ np.array(cpu_fit["coef"]), 0)
        rise = x @ np.array(rise_fit["coef"])
        n_star = sum(r["n_star"] for r in rows)
        serial = serial_per_star * n_star
        wall = cpu.sum() / cores + serial
        out[label] = {
            "snapshots": len(rows), "stars_main": n_star,
            "particles": int(sum(r["n_particles"] for r in rows)),
            "largest_snapshot_particles": int(max(r["n_particles"] for r in rows)),
            "cpu_seconds": float(cpu.sum()), "cpu_seconds_max_snapshot": float(cpu.max()),
            "client_cpu_seconds": serial, "wall_seconds_on_cores": wall,
            "core_hours_allocated": wall * cores / 3600, "core_hours_busy": cpu.sum() / 3600,
            "rss_rise_max_snapshot": float(rise.max()), "worker_maxrss_measured": maxrss[label],
            # the fit scaled by the anchors' measured / fitted ratio (they cost more than it says)
            "cpu_seconds_anchor_scaled": float(cpu.sum()) * ratio,
            "wall_seconds_anchor_scaled": float(cpu.sum()) * ratio / cores + serial,
            "store_bytes": bytes_per_star * n_star,
        }
    return out


def rss_table(tasks: list[dict]) -> list[dict]:
    """Peak RSS per task, binned by particles in the file (decades)."""
    rows = []
    n = np.array([t["n_particles"] for t in tasks])
    for lo in (1e4, 1e5, 3e5, 1e6, 3e6):
        hi = {1e4: 1e5, 1e5: 3e5, 3e5: 1e6, 1e6: 3e6, 3e6: 1e8}[lo]
        sel = [t for t, k in zip(tasks, n, strict=True) if lo <= k < hi]
        if sel:
            rows.append({"particles": [lo, hi], "tasks": len(sel),
                         "stars_median": float(np.median([t["n_star_file"] for t in sel])),
                         "rss_peak_median": float(np.median([t["rss_peak"] for t in sel])),
                         "rss_peak_max": float(max(t["rss_peak"] for t in sel)),
                         "rss_rise_median": float(np.median([t["rss_peak"] - t["rss_start"]
                                                             for t in sel])),
                         "cpu_median": float(np.median([t["cpu"] for t in sel]))})
    return rows


def rss_figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("extract_1", "nihao preset, 1 worker"),
                       ("realistic", "1e6 DM + 1e6 gas, 1 worker")):
        tasks = results.get(key, {}).get("tasks", [])
        n = [t["n_particles"] for t in tasks]
        ax[0].scatter(n, [t["rss_peak"] / 2**20 for t in tasks], s=6, label=label)
        ax[1].scatter(n, [t["cpu"] for t in tasks], s=6, label=label)
    for a, ylabel in zip(ax, ("peak RSS of the worker during the task (MiB)",
                              "worker CPU-seconds per snapshot"), strict=True):
        a.set_xscale("log")
        a.set_xlabel("particles in the snapshot")
        a.set_ylabel(ylabel)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/work/scale_bench"))
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--phases", default="generate,extract1,compose,stream,realistic,extract2,model",
                   help="comma-separated, run in this order")
    p.add_argument("--sims", default=",".join(map(str, DEFAULT_SIMS)))
    p.add_argument("--realistic-sims", default="55,99")
    p.add_argument("--realistic-steps", default="256,512,768,1024")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gen-workers", type=int, default=2)
    p.add_argument("--train-per-n", type=int, default=10_000, help="1e6 halos with the defaults")
    p.add_argument("--test-per-n", type=int, default=100)
    p.add_argument("--n-sub-max", type=int, default=100)
    p.add_argument("--cores", type=int, default=100, help="SLURM cores of the cost model")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    phases = args.phases.split(",")
    sims = tuple(int(s) for s in args.sims.split(","))
    results_path = args.work / "scale.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}

    def record(key: str, value: dict) -> None:
        results[key] = {"finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), **value}
        results_path.write_text(json.dumps(results, indent=1))
        print(f"{key} done: {time.strftime('%H:%M:%S')}", flush=True)

    store = args.work / "store-1w.zarr"
    for phase in phases:  # in the order given
        if phase == "generate":
            record("generate", {"load_average_start": load_average(),
                                **generate(args.work, sims, args.seed, args.gen_workers)})
        elif phase in ("extract1", "extract2"):
            workers = int(phase[-1])
            record(f"extract_{workers}", extract_run(args.work / "suite",
                                                     args.work / f"store-{workers}w.zarr", workers))
        elif phase == "realistic":
            record("realistic", realistic(
                args.work, tuple(int(s) for s in args.realistic_sims.split(",")),
                tuple(int(s) for s in args.realistic_steps.split(",")), args.seed))
        elif phase == "compose":
            record("compose", compose_run(store, args.train_per_n, args.test_per_n, args.n_sub_max))
        elif phase == "stream":
            record("stream", stream_run(store, results["compose"]["version"]))
        elif phase == "model":
            results["rss_table"] = rss_table(results["extract_1"]["tasks"]
                                             + results.get("realistic", {}).get("tasks", []))
            record("model", cost_model(results, args.seed, args.cores))
            rss_figure(results, args.out / "scale-rss.png")
        else:
            raise SystemExit(f"unknown phase {phase!r}")
    (args.out / "scale.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
