"""The whole ``casbi-store extract`` command on 1 and 2 LocalCluster workers (1 thread each).

Each run is a fresh process, ``casbi-store extract SUITE --store NEW --workers W -q``, into a new
store, timed from the outside (wall seconds, and the CPU seconds of the command and its
workers); the suite is read into the page cache before each run. Runs are interleaved (every
code version, then 1 and 2 workers, repeat after repeat) so that a change in the machine's load
hits all of them alike; the load average (``/proc/loadavg``) is recorded before each run. Several
versions of the code can be compared: ``--code LABEL=DIR`` puts DIR first on ``PYTHONPATH`` (the
workers inherit it) for the runs labelled LABEL.

    python bench/bench_workers.py --suite SUITE --work /tmp/w --code new=. --code main=/tmp/main
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_extract import warm_cache

CASBI = str(Path(sys.executable).with_name("casbi-store"))


def children_cpu() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def run(suite: Path, store: Path, workers: int, code: str) -> dict:
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(f"{store}.staging", ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(code).resolve()), *filter(None, [os.environ.get("PYTHONPATH")])])}
    load = Path("/proc/loadavg").read_text().split()[:3]
    cpu, start = children_cpu(), time.perf_counter()
    out = subprocess.run([CASBI, "extract", str(suite), "--store", str(store), "--workers",
                          str(workers), "-q"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(f"extract failed:\n{out.stdout}\n{out.stderr}")
    phases = dict((k, float(v)) for k, v in re.findall(r"(\w[\w+]*) ([\d.]+)",
                  next(line for line in out.stdout.splitlines() if line.startswith("time"))
                  .split("(", 1)[1]))
    return {"workers": workers, "seconds": seconds, "cpu_seconds": children_cpu() - cpu,
            "load_before": [float(x) for x in load], "phases": phases}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True, help="folder for the stores")
    p.add_argument("--code", action="append", default=[], metavar="LABEL=DIR",
                   help="code versions to compare (default: this checkout, 'new=.')")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench/results/workers.json"))
    args = p.parse_args()
    codes = dict(c.split("=", 1) for c in args.code) or {"new": "."}
    args.work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[int, list[dict]]] = {label: {1: [], 2: []} for label in codes}
    for rep in range(args.repeats):
        for label, code in codes.items():
            for workers in (1, 2):
                warm_cache(args.suite)
                r = run(args.suite, args.work / f"{label}-{workers}.zarr", workers, code)
                runs[label][workers].append(r)
                print(f"repeat {rep} {label} {workers} worker(s): {r['seconds']:.1f} s "
                      f"(load {r['load_before'][0]:.1f}) {r['phases']}", flush=True)
    result = {"suite": str(args.suite), "repeats": args.repeats, "runs": runs, "median": {}}
    for label in codes:
        one = statistics.median(r["seconds"] for r in runs[label][1])
        two = statistics.median(r["seconds"] for r in runs[label][2])
        result["median"][label] = {"seconds_1worker": one, "seconds_2workers": two,
                                   "speedup": one / two,
                                   "commit_1worker": statistics.median(
                                       r["phases"].get("commit", 0) + r["phases"].get("histograms", 0)
                                       for r in runs[label][1])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["median"], indent=1))


if __name__ == "__main__":
    main()
