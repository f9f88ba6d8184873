"""CPU-seconds of the demo's survey-style stages (issue 10), each called as ``casbi-store run``
calls it: compose of the sets with an observation model, training of the models on them, the
survey stage. Run on a copy of an extracted demo store, so the rest of the demo is not redone::

    cp -r demo/store.zarr /tmp/demo-survey/store.zarr
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_demo_survey.py --workdir /tmp/demo-survey

CPU time is the process's and its children's (``resource.getrusage``): on a shared machine wall
time says little; the load average is printed with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import time
from pathlib import Path


def cpu_seconds() -> float:
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", default="pipelines/demo.yaml")
    p.add_argument("--workdir", required=True, help="holds the extracted store (a copy)")
    p.add_argument("--out", help="JSON of the figures (default: WORKDIR/bench_demo_survey.json)")
    args = p.parse_args()

    from casbi_store.cli.common import setup_logging
    from casbi_store.cli.compose import compose_and_register
    from casbi_store.cli.config import load_pipeline
    from casbi_store.cli.survey import survey_check
    from casbi_store.cli.train import train_model

    setup_logging(False)
    pipe = dataclasses.replace(load_pipeline(args.pipeline), workdir=Path(args.workdir))
    store = pipe.path(pipe.extract.store)
    surveyed = {s.name for s in pipe.compose.sets if s.observation is not None}
    stages: dict[str, dict] = {}

    def timed(name: str, work) -> None:
        cpu, wall = cpu_seconds(), time.perf_counter()
        work()
        stages[name] = {"cpu_s": round(cpu_seconds() - cpu, 1),
                        "wall_s": round(time.perf_counter() - wall, 1)}
        print(f"{name}: {stages[name]}, load {os.getloadavg()}", flush=True)

    for spec in pipe.compose.sets:
        if spec.name in surveyed:
            timed(f"compose {spec.name}", lambda s=spec: compose_and_register(store, s, None,
                                                                              progress=False))
    for m in pipe.train.models:
        if m.set in surveyed:
            timed(f"train {m.out}", lambda m=m: train_model(
                store, m.set, m.version, m.task, pipe.path(m.out), m.config, per_member=False))
    sv = pipe.survey
    name, _, version = sv.set.partition(":")
    timed("survey", lambda: survey_check(
        store, name, version, [str(pipe.path(m)) for m in sv.models], pipe.path(sv.out),
        split=sv.split, tables=sv.tables, observation=sv.observation, samples=sv.samples,
        ranks=sv.ranks, seed=sv.seed))
    result = {"pipeline": args.pipeline, "stages": stages,
              "total_cpu_s": round(sum(s["cpu_s"] for s in stages.values()), 1),
              "load_average": os.getloadavg(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    out = Path(args.out) if args.out else pipe.path("bench_demo_survey.json")
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
