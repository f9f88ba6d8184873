"""What stays serial in an extraction: the client's CPU time, per star kept, and an Amdahl
projection of the wall time on many workers.

Runs ``extract_suite`` on SUITE with a LocalCluster of ``--workers`` workers (1 thread each) into
a fresh store, every galaxy kept (no stellar-mass limit), and measures the CPU seconds of this
process (the client, and the Dask scheduler, which a LocalCluster runs in the client's process)
over the whole run and over the commit alone, and the workers' CPU seconds over the run and the
commit (``getrusage`` in each worker). The serial part is the client's CPU; the parallel part
the workers'. Whichever ``casbi_store`` is first on ``PYTHONPATH`` is measured, so the code before
a change can be measured the same way.

    PYTHONPATH=. python bench/bench_serial.py SUITE --work /tmp/serial --out bench/results/serial.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

NO_LIMIT = 1e15  # Msun: every galaxy kept, as bench_scale.py extracts the nihao preset
WORKERS = (16, 64, 100)


def self_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def _worker_cpu() -> float:
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def workers_cpu(client) -> float:
    return sum(client.run(_worker_cpu).values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", type=Path)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/results/serial.json"))
    p.add_argument("--label", default="")
    args = p.parse_args()

    from bench_extract import warm_cache

    import casbi_store
    from casbi_store.store import extraction_run
    from casbi_store.store.cluster import ClusterSpec, cluster_client
    from casbi_store.store.extract import ExtractionSettings

    args.work.mkdir(parents=True, exist_ok=True)
    store = args.work / "serial.zarr"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(f"{store}.staging", ignore_errors=True)
    warm_cache(args.suite)
    load = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    commit_cost: dict[str, float] = {}
    original = extraction_run.commit_outcomes

    with cluster_client(ClusterSpec.from_options(None, args.workers)) as client:
        def measured(*a, **k):
            cpu, wcpu, wall = self_cpu(), workers_cpu(client), time.perf_counter()
            original(*a, **k)
            commit_cost.update(client_cpu=self_cpu() - cpu, workers_cpu=workers_cpu(client) - wcpu,
                               wall=time.perf_counter() - wall)

        extraction_run.commit_outcomes = measured
        cpu0, wcpu0, wall0 = self_cpu(), workers_cpu(client), time.perf_counter()
        summary = extraction_run.extract_suite(
            args.suite, store, client=client, progress=False,
            settings=ExtractionSettings(mstar_limit=NO_LIMIT))
        total = {"client_cpu": self_cpu() - cpu0, "workers_cpu": workers_cpu(client) - wcpu0,
                 "wall": time.perf_counter() - wall0}
    stars = summary.n_stars
    serial = total["client_cpu"]
    parallel = total["workers_cpu"]
    result = {
        "label": args.label, "casbi_store": casbi_store.__file__, "suite": str(args.suite),
        "workers": args.workers, "load_before": load, "snapshots": summary.n_snapshots,
        "ok": summary.ok, "stars": stars, "phases": summary.phases, "run": total,
        "commit": commit_cost,
        "client_cpu_us_per_star": 1e6 * serial / stars,
        "client_commit_cpu_us_per_star": 1e6 * commit_cost["client_cpu"] / stars,
        "workers_cpu_us_per_star": 1e6 * parallel / stars,
        "workers_commit_cpu_us_per_star": 1e6 * commit_cost["workers_cpu"] / stars,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
