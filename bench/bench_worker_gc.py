"""A/B: one worker's RSS over the largest ``nihao``-preset galaxy's 64 snapshots (1.05e6 stars at
z = 0), with and without a ``gc.collect()`` after each extraction task (a worker plugin does the
collect), probed per task as ``bench_scale.py`` does (RSS sampled every 20 ms).

Measured on main at 382ca8b, before ``extraction_run._extract_task`` collected by itself; on later
code both modes collect, so the A/B needs that commit:

    PYTHONPATH=. python bench/bench_worker_gc.py --work /work/gcbench plain collect
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
from pathlib import Path

from dask.distributed import WorkerPlugin

sys.path.insert(0, str(Path(__file__).parent))
import bench_scale as B  # noqa: E402


class Collect(WorkerPlugin):
    """``gc.collect()`` on the worker after each extraction task."""

    name = "collect"

    def transition(self, key, start, finish, **kwargs) -> None:
        if str(key).startswith("extract-") and start == "executing":
            gc.collect()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path("/work/gcbench"))
    p.add_argument("modes", nargs="+", choices=["plain", "collect"])
    args = p.parse_args()
    gen = B.generate(args.work, (99,), 0, 1)
    print("generated", gen["wall_seconds"], gen["cpu_seconds"], flush=True)
    from casbi_store.store import cluster

    real = cluster.cluster_client
    results = {}
    for mode in args.modes:
        @contextlib.contextmanager
        def patched(spec, _mode=mode):
            with real(spec) as client:
                if _mode == "collect":
                    client.register_plugin(Collect(), name="collect")
                yield client

        cluster.cluster_client = patched
        try:
            r = B.extract_run(args.work / "suite", args.work / f"store-{mode}.zarr", 1)
        finally:
            cluster.cluster_client = real
        tasks = sorted(r["tasks"], key=lambda t: t["snapshot"])
        results[mode] = {
            "worker_maxrss_mib": {w: v / 2**20 for w, v in r["worker_maxrss"].items()},
            "worker_cpu": r["worker_cpu_total"],
            "load": [r["load_average_start"], r["load_average_end"]],
            "rss_start_mib": [round(t["rss_start"] / 2**20) for t in tasks],
            "rss_peak_mib": [round(t["rss_peak"] / 2**20) for t in tasks],
            "cpu": [round(t["cpu"], 3) for t in tasks],
            "n_star": [t["n_star_file"] for t in tasks]}
        print(mode, json.dumps({k: results[mode][k] for k in ("worker_maxrss_mib", "worker_cpu",
                                                               "load")}), flush=True)
        (args.work / "result.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
