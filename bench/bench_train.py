"""Training benchmark: streaming vs in-memory epochs on the same model, and peak RSS as the set grows.

Two ``uniform`` training sets whose sizes differ by 10x are composed into a scratch copy of a store
(the store itself is not modified). On each, the same small ``nsub`` network is trained twice: once
streaming Zarr chunks through ``TrainingSetStream`` (``TrainConfig(in_memory=False)``, the
default: a bounded buffer of ``buffer_chunks`` chunks) and once with the split loaded whole into
memory (``in_memory=True``). Each training runs in a fresh subprocess, so its peak resident set
size (``ru_maxrss``) is its own. Runs are interleaved (the mode that goes first alternates between
repeats) and repeated; medians are reported.

Figures: the epoch time (training + validation, from the trainer's history; the median of the
epochs after the first, which carries the warm-up), streaming / in-memory, at each size; peak RSS
of each mode at each size and its ratio from the small set to the large one. ``--epochs`` is the
number of epochs on the largest set; a smaller set trains proportionally more epochs, so that every
run trains on about as many rows and its epoch time is as well measured. Each child also times one
data-only pass over the training split (the batches the trainer iterates, no network) and counts
minor page faults per epoch, to show where streaming time goes.

Other work on the machine slows a 2-thread torch loop badly (an epoch that takes 12 s alone took
100 s while another process kept one core busy), so each run starts once the machine is idle, the
CPU that other processes use during its measured epochs is recorded (``/proc/stat`` minus our own),
and a disturbed run is repeated (``--retries``).

``--malloc-keep`` runs the trainings with glibc told to keep the memory it frees. With glibc's
defaults, buffers that torch frees at each step go back to the OS and are page-faulted in again at
the next one (1-2.4 million minor faults per epoch of 19,800 halos, in both modes), which costs both
modes time and adds most of the epoch-to-epoch variation.

    python bench/bench_train.py --store demo/store.zarr --out bench/results
    python bench/bench_train.py --store demo/store.zarr --out bench/results --malloc-keep \
        --result-name train-malloc-keep.json
    python bench/bench_train.py --sizes 198 1980 --repeats 1 --out /tmp/bench   # a quick check
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("stream", "memory")
N_SUB_MIN, N_SUB_MAX, VAL_FRACTION = 2, 100, 0.2
# --malloc-keep: glibc keeps freed memory (no trimming, no mmap for blocks under 256 MiB) instead of
# returning it to the OS and page-faulting it back in at the next training step
MALLOC_KEEP = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
NETWORK = {"hidden_features": 32, "num_transforms": 3, "embedding_dim": 32, "conv_channels": (8, 16)}


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size in MiB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(who).ru_maxrss / 1024


def cpu_busy() -> tuple[float, float] | None:
    """Seconds the whole machine's CPUs have been busy, and stolen by the host, since boot
    (``/proc/stat``); None where there is no ``/proc/stat``."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / tick, steal / tick


def own_cpu(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds (user + system, all threads) of this process or of its reaped children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def rss_now_mib() -> float | None:
    """This process's current resident set size in MiB (``VmRSS``), None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def interference(before: dict, after: dict) -> dict | None:
    """CPU used between two marks by everything but this process (others' processes, in cores on
    average, and time stolen by the host), from ``cpu_busy`` and ``own_cpu`` marks."""
    if before["busy"] is None or after["busy"] is None:
        return None
    seconds = after["t"] - before["t"]
    others = after["busy"][0] - before["busy"][0] - (after["cpu"] - before["cpu"])
    steal = after["busy"][1] - before["busy"][1]
    return {"seconds": seconds, "other_cores": max(others, 0.0) / seconds, "steal_cores": steal / seconds}


def mark() -> dict:
    """A time, CPU and memory mark of this process."""
    return {"t": time.perf_counter(), "busy": cpu_busy(), "cpu": own_cpu(), "rss_mib": rss_now_mib(),
            "peak_rss_mib": peak_rss_mib(), "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt}


class EpochMarks(logging.Handler):
    """Marks the end of each epoch from the trainer's log record ("... epoch N: ..."), so the CPU
    that other processes took during an epoch can be told apart from ours."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.marks: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if " epoch %d:" in str(record.msg):
            self.marks.append(mark())


def wait_idle(max_wait: float, threshold: float = 0.1, window: float = 0.5) -> float:
    """Wait until the machine has been idle (below ``threshold`` cores busy, stolen included) for
    two consecutive windows, or ``max_wait`` seconds; the seconds waited."""
    start, quiet = time.perf_counter(), 0
    while time.perf_counter() - start < max_wait and quiet < 2:
        a = cpu_busy()
        if a is None:
            return 0.0
        time.sleep(window)
        b = cpu_busy()
        quiet = quiet + 1 if (b[0] - a[0] + b[1] - a[1]) / window < threshold else 0
    return time.perf_counter() - start


def train_per_n(size: int) -> int:
    """Halos per N_sub that give about ``size`` training halos (validation takes VAL_FRACTION)."""
    return max(1, round(size / ((N_SUB_MAX - N_SUB_MIN + 1) * (1 - VAL_FRACTION))))


def compose_sets(store: Path, sizes: list[int]) -> dict[int, dict]:
    """Compose one training set per size (a no-op for a set already composed with the same spec)."""
    from casbi_store.compose import ComposeSpec, compose

    sets = {}
    for size in sizes:
        spec = ComposeSpec(name=f"bench_train_{size}", version="v1", scheme="uniform", seed=7,
                           n_sub_min=N_SUB_MIN, n_sub_max=N_SUB_MAX, train_per_n=train_per_n(size),
                           test_per_n=1, val_fraction=VAL_FRACTION, split_by="combination")
        start = time.perf_counter()
        entry = compose(store, spec, progress=False)
        sets[size] = {"name": spec.name, "version": spec.version, "train_per_n": spec.train_per_n,
                      "counts": entry["counts"], "compose_seconds": time.perf_counter() - start}
        print(f"composed {spec.name}:{spec.version} {entry['counts']} "
              f"({sets[size]['compose_seconds']:.1f} s)", flush=True)
    return sets


def data_pass(store: Path, name: str, version: str, in_memory: bool, batch_size: int) -> dict:
    """Seconds to build the training split's source and to iterate its batches once (no network),
    the way the trainer does."""
    from casbi_store.learn.streaming import TrainingSetStream
    from casbi_store.learn.tasks import get_task
    from casbi_store.learn.trainer import _InMemory, _rows

    start = time.perf_counter()
    stream = TrainingSetStream(store, name, version, "train", target=get_task("nsub").target)
    source = _InMemory(stream) if in_memory else stream
    built = time.perf_counter()
    source.set_epoch(1)
    rows = sum(len(x) for x, _ in _rows(source, batch_size))
    return {"build_seconds": built - start, "iterate_seconds": time.perf_counter() - built, "rows": rows}


def child(args: argparse.Namespace) -> None:
    """One training in this (fresh) process; writes its figures as JSON to ``args.result``."""
    import torch

    from casbi_store.learn.trainer import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    rss_before = peak_rss_mib()  # interpreter + torch + sbi + casbi_store, before any data
    clock = EpochMarks()
    trainer_log = logging.getLogger("casbi_store.learn.trainer")
    trainer_log.addHandler(clock)
    trainer_log.setLevel(logging.INFO)
    first = mark()
    cfg = TrainConfig(epochs=args.epochs, patience=args.epochs + 1, batch_size=args.batch_size,
                      buffer_chunks=args.buffer_chunks, in_memory=args.mode == "memory", seed=0,
                      **NETWORK)
    start = time.perf_counter()
    result = train(args.store, args.name, args.version, "nsub", args.model_out, cfg)
    wall = time.perf_counter() - start
    marks = [first, *clock.marks]
    record = {
        "mode": args.mode, "set": f"{args.name}:{args.version}", "torch_threads": torch.get_num_threads(),
        "train_seconds": wall, "epochs": result["members"][0],
        "epoch_seconds": measured_epoch_seconds(result["members"][0]),
        "setup_seconds": wall - sum(e["seconds"] for e in result["members"][0]),
        "peak_rss_mib_before_train": rss_before,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_mib_children": peak_rss_mib(resource.RUSAGE_CHILDREN),
        # per epoch: RSS at its end and the others' CPU during it (epoch 1 includes the setup)
        "epoch_marks": [{"epoch": k + 1, "rss_mib": b["rss_mib"], "peak_rss_mib": b["peak_rss_mib"],
                         "cpu_seconds": b["cpu"] - a["cpu"], "minor_page_faults": b["faults"] - a["faults"],
                         "interference": interference(a, b)}
                        for k, (a, b) in enumerate(itertools.pairwise(marks))],
    }
    record["data_pass"] = data_pass(args.store, args.name, args.version, args.mode == "memory",
                                    args.batch_size)  # after the RSS figures: it does not count
    Path(args.result).write_text(json.dumps(record, indent=2))


def measured_epoch_seconds(history: list[dict]) -> float:
    """The epoch time of a run: the median of the epochs after the first (the first, alone)."""
    return statistics.median(e["seconds"] for e in (history[1:] or history))


def measured_interference(record: dict) -> float | None:
    """Cores that others used on average (stolen included) during the measured epochs of a run."""
    marks = record["epoch_marks"][1:] or record["epoch_marks"]
    if not marks or any(m["interference"] is None for m in marks):
        return None
    total = sum(m["interference"]["seconds"] for m in marks)
    return sum((m["interference"]["other_cores"] + m["interference"]["steal_cores"])
               * m["interference"]["seconds"] for m in marks) / total


def epochs_for(size: int, largest: int, epochs: int) -> int:
    """Epochs for a set of ``size`` training halos: as many rows in all as ``epochs`` on the largest."""
    return max(epochs, round(epochs * largest / size))


def run_child(store: Path, entry: dict, mode: str, epochs: int, work: Path, tag: str,
              args: argparse.Namespace) -> dict:
    """One training in a fresh interpreter, started once the machine is idle, and run again (up to
    ``args.retries`` times) when other work took more than ``args.max_interference`` cores during
    the measured epochs; the least disturbed attempt's record, every attempt's figures under
    "attempts"."""
    attempts: list[dict] = []
    records: list[dict] = []
    for attempt in range(args.retries + 1):
        waited = wait_idle(args.max_wait)
        model_out = work / f"model-{tag}"
        shutil.rmtree(model_out, ignore_errors=True)  # a model folder left behind would resume
        result = work / f"run-{tag}.json"
        cmd = [sys.executable, os.fspath(Path(__file__).resolve()), "--child", "--mode", mode,
               "--store", os.fspath(store), "--name", entry["name"], "--version", entry["version"],
               "--model-out", os.fspath(model_out), "--result", os.fspath(result),
               "--epochs", str(epochs), "--batch-size", str(args.batch_size),
               "--buffer-chunks", str(args.buffer_chunks), "--threads", str(args.threads)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, **(MALLOC_KEEP if args.malloc_keep else {})})
        record = json.loads(result.read_text())
        record["process_seconds"] = time.perf_counter() - start
        record["waited_for_idle_seconds"] = waited
        shutil.rmtree(model_out, ignore_errors=True)
        busy = measured_interference(record)
        record["measured_epoch_interference_cores"] = busy
        record["disturbed"] = busy is not None and busy > args.max_interference
        attempts.append({k: record[k] for k in ("epoch_seconds", "peak_rss_mib", "waited_for_idle_seconds",
                                                "measured_epoch_interference_cores", "disturbed")})
        records.append(record)
        if not record["disturbed"]:
            break
        print(f"  {tag}: others used {busy:.2f} cores during the measured epochs; "
              + ("running it again" if attempt < args.retries else "keeping the least disturbed attempt"),
              flush=True)
    best = min(records, key=lambda r: r["measured_epoch_interference_cores"] or 0.0)
    best["attempts"] = attempts
    return best


def machine() -> dict:
    import numpy
    import sbi
    import torch
    import zarr

    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "memory_gib": os.sysconf("SC_PAGE_SIZE")
            * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "sbi": sbi.__version__,
            "numpy": numpy.__version__, "zarr": zarr.__version__}


def summarise(runs: dict[str, dict[int, list[dict]]], sizes: list[int]) -> dict:
    """Medians per (mode, size), the epoch time ratios and the RSS growth ratios."""
    med = {m: {s: {k: statistics.median(r[k] for r in runs[m][s])
                   for k in ("epoch_seconds", "peak_rss_mib", "peak_rss_mib_before_train",
                             "setup_seconds")}
               for s in sizes} for m in MODES}
    for m in MODES:
        for s in sizes:
            med[m][s]["data_pass_seconds"] = statistics.median(
                r["data_pass"]["iterate_seconds"] for r in runs[m][s])
            med[m][s]["minor_page_faults_per_epoch"] = statistics.median(
                k["minor_page_faults"] for r in runs[m][s] for k in r["epoch_marks"][1:])
    small, large = sizes[0], sizes[-1]
    return {
        "median": med,
        "disturbed_runs": {m: {s: sum(r["disturbed"] for r in runs[m][s]) for s in sizes} for m in MODES},
        "epoch_ratio_stream_over_memory": {
            s: med["stream"][s]["epoch_seconds"] / med["memory"][s]["epoch_seconds"] for s in sizes},
        "epoch_ratio_per_repeat": {
            s: [a["epoch_seconds"] / b["epoch_seconds"]
                for a, b in zip(runs["stream"][s], runs["memory"][s], strict=True)] for s in sizes},
        "peak_rss_ratio_large_over_small": {
            m: med[m][large]["peak_rss_mib"] / med[m][small]["peak_rss_mib"] for m in MODES},
        "peak_rss_growth_mib": {
            m: med[m][large]["peak_rss_mib"] - med[m][small]["peak_rss_mib"] for m in MODES},
    }


def print_table(summary: dict, sets: dict[int, dict], sizes: list[int]) -> None:
    """The medians and the ratios against their targets."""
    med = summary["median"]
    print(f"\n{'train halos':>11} {'mode':>7} {'epoch s':>8} {'data s':>7} {'faults/epoch':>13} "
          f"{'peak RSS MiB':>13}")
    for s in sizes:
        for m in MODES:
            print(f"{sets[s]['counts']['train']:>11} {m:>7} {med[m][s]['epoch_seconds']:>8.2f} "
                  f"{med[m][s]['data_pass_seconds']:>7.2f} {med[m][s]['minor_page_faults_per_epoch']:>13.0f} "
                  f"{med[m][s]['peak_rss_mib']:>13.0f}")
    for s in sizes:
        print(f"epoch time stream / memory at {sets[s]['counts']['train']} halos: "
              f"{summary['epoch_ratio_stream_over_memory'][s]:.3f} (target <= 1.1)")
    for m in MODES:
        print(f"peak RSS {m}, {sizes[-1]} / {sizes[0]}: {summary['peak_rss_ratio_large_over_small'][m]:.3f}"
              + (" (target <= 1.1)" if m == "stream" else ""))
    disturbed = sum(n for cells in summary["disturbed_runs"].values() for n in cells.values())
    if disturbed:
        print(f"{disturbed} run(s) kept although other work ran during their measured epochs "
              "(see disturbed_runs in the JSON)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=Path("demo/store.zarr"),
                   help="an extracted store (copied, never modified)")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="where the JSON goes")
    p.add_argument("--sizes", type=int, nargs="+", default=[1980, 19800],
                   help="training halos per set (N_sub 2..100; validation gets a quarter as many again)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every (mode, size)")
    p.add_argument("--epochs", type=int, default=2,
                   help="epochs on the largest set (smaller sets: as many rows); epoch 1 is not measured")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--buffer-chunks", type=int, default=4)
    p.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--result-name", default="train.json")
    p.add_argument("--malloc-keep", action="store_true",
                   help="run the trainings with glibc told to keep freed memory (" + ", ".join(
                       f"{k}={v}" for k, v in MALLOC_KEEP.items()) + ")")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads in each training (0: torch's default, one per core)")
    p.add_argument("--max-wait", type=float, default=300.0,
                   help="seconds to wait for an idle machine before each run")
    p.add_argument("--max-interference", type=float, default=0.15,
                   help="cores others may use during the measured epochs before a run is repeated")
    p.add_argument("--retries", type=int, default=4, help="repeats of a run disturbed by other work")
    # child mode (one training in a fresh process)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--mode", "--name", "--version", "--model-out", "--result"):
        p.add_argument(name, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    sizes = sorted(args.sizes)
    if not args.store.exists():
        p.error(f"{args.store}: no such store (make demo writes demo/store.zarr)")
    epochs = {s: epochs_for(s, sizes[-1], args.epochs) for s in sizes}
    temporary = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="bench-train-")) if temporary else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    try:
        store = work / "store.zarr"
        if not store.exists():
            shutil.copytree(args.store, store)
        sets = compose_sets(store, sizes)
        runs: dict[str, dict[int, list[dict]]] = {m: {s: [] for s in sizes} for m in MODES}
        start = time.perf_counter()
        for rep in range(args.repeats):
            for s in sizes:
                for m in (MODES if rep % 2 == 0 else MODES[::-1]):
                    r = run_child(store, sets[s], m, epochs[s], work, f"{m}-{s}-{rep}", args)
                    runs[m][s].append(r)
                    cores = r["measured_epoch_interference_cores"]
                    busy = "?" if cores is None else f"{cores:.2f}"
                    print(f"repeat {rep} {sets[s]['counts']['train']:>6} train halos {m:>6}: "
                          f"epoch {r['epoch_seconds']:.2f} s (of {len(r['epochs'])}), "
                          f"data pass {r['data_pass']['iterate_seconds']:.2f} s, "
                          f"peak RSS {r['peak_rss_mib']:.0f} MiB, others {busy} cores, "
                          f"{len(r['attempts'])} attempt(s)", flush=True)
        summary = summarise(runs, sizes)
        result = {
            "machine": machine(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "task": "nsub", "network": NETWORK, "epochs": epochs, "batch_size": args.batch_size,
            "buffer_chunks": args.buffer_chunks, "threads": args.threads,
            "malloc_env": MALLOC_KEEP if args.malloc_keep else {},
            "max_interference_cores": args.max_interference, "repeats": args.repeats, "sizes": sizes,
            "sets": sets, "bench_seconds": time.perf_counter() - start,
            **summary, "runs": runs,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / args.result_name).write_text(json.dumps(result, indent=2))
        print_table(summary, sets, sizes)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
