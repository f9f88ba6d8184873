"""Where Dask runs: a LocalCluster, a running scheduler, or SLURM/PBS jobs via dask-jobqueue.

A :class:`ClusterSpec` is what a pipeline's ``cluster:`` section (or the CLI's ``--scheduler`` /
``--workers``) says; :func:`cluster_client` turns it into a ``distributed.Client``::

    cluster: {kind: slurm, cores: 4, memory: 16GB, walltime: "04:00:00", queue: cpu,
              account: nihao, jobs: 8}               # or adaptive: {minimum: 1, maximum: 25}

Every kind runs the same tasks. Workers run one thread each by default (pynbody is
single-threaded and the extraction tasks hold the GIL): a SLURM/PBS job runs ``processes``
(default: ``cores``) worker processes sharing its ``cores`` and ``memory``, each with
``cores // processes`` threads. Workers that die (pre-emption, OOM) are replaced by the job
system or by the LocalCluster's nanny, and Dask re-runs their tasks: extraction tasks are pure
(their results are staged under the store, committed by the client alone), so a re-run is safe.

On SLURM/PBS, the jobs are submitted before the client is handed out: a job the batch system
refuses (an unknown partition or account, a walltime over the limit) is a :class:`ClusterError`
whose message is the batch system's own (``sbatch: error: ...``), not a client waiting forever
for workers. While the client runs, :class:`JobWatch` resubmits a job whose workers have all
left for longer than ``distributed.deploy.lost-worker-timeout`` (``scancel``, pre-emption, a
node failure, its walltime): Dask's own cluster replaces none of these by itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from casbi_store import CasbiError, InputError

log = logging.getLogger(__name__)

KINDS = ("local", "address", "slurm", "pbs")
JOBQUEUE_KINDS = ("slurm", "pbs")

# Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in workers, which makes glibc return memory
# after every large array: pynbody loads then run ~25% slower (bench/README.md). Unset it.
# The workers' statistical profiler samples the running thread every 10 ms (GIL); off.
# Scheduler-side queuing hands a worker its next task only after the previous one reported
# back: a round trip of idle time per snapshot. Our tasks are few and long: send them all.
DASK_SETTINGS = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                 "distributed.worker.profile.enabled": False,
                 "distributed.scheduler.worker-saturation": float("inf")}
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


class ClusterError(CasbiError, ValueError):
    """The batch system refused to run the cluster's jobs (its own message, one line)."""


@dataclass(frozen=True)
class ClusterSpec:
    """A validated description of the Dask cluster to run on."""

    kind: str = "local"
    address: str | None = None           # kind=address: tcp://host:8786 or a scheduler file
    workers: int | None = None           # kind=local: worker processes (default: one per core)
    cores: int = 1                       # jobqueue: cores per job
    memory: str = "4GB"                  # jobqueue: memory per job
    processes: int | None = None         # jobqueue: worker processes per job (default: cores)
    walltime: str = "01:00:00"
    queue: str | None = None             # SLURM partition / PBS queue
    account: str | None = None
    jobs: int = 1                        # jobqueue: fixed number of jobs (unless adaptive)
    adaptive: dict | None = None         # jobqueue: {minimum: jobs, maximum: jobs}
    local_directory: str | None = None   # workers' scratch space (node-local disk)
    interface: str | None = None         # network interface of the workers (e.g. ib0)
    job_extra_directives: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()  # e.g. "module load python", "source .venv/bin/activate"
    extra: dict = field(default_factory=dict)  # more dask-jobqueue keyword arguments, passed on

    def __post_init__(self):
        object.__setattr__(self, "job_extra_directives", tuple(self.job_extra_directives))
        object.__setattr__(self, "job_script_prologue", tuple(self.job_script_prologue))
        if self.kind not in KINDS:
            raise InputError(f"kind must be one of {KINDS}, not {self.kind!r}")
        if self.kind == "address" and not self.address:
            raise InputError("kind 'address' needs 'address' (tcp://host:port or a scheduler file)")
        if self.kind != "address" and self.address:
            raise InputError(f"'address' is for kind 'address', not {self.kind!r}")
        for name in ("workers", "processes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InputError(f"{name} must be a positive integer, not {value!r}")
        if not isinstance(self.cores, int) or self.cores < 1:
            raise InputError(f"cores must be a positive integer, not {self.cores!r}")
        if not isinstance(self.jobs, int) or self.jobs < 0:
            raise InputError(f"jobs must be a non-negative integer, not {self.jobs!r}")
        if self.processes is not None and self.processes > self.cores:
            raise InputError(f"processes ({self.processes}) cannot exceed cores ({self.cores})")
        if self.adaptive is not None:
            if not isinstance(self.adaptive, dict) or set(self.adaptive) - {"minimum", "maximum"}:
                raise InputError("adaptive must be a mapping with 'minimum' and/or 'maximum' jobs")
            lo, hi = self.adaptive.get("minimum", 0), self.adaptive.get("maximum", 1)
            if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and hi >= 1):
                raise InputError(f"adaptive needs 0 <= minimum <= maximum, maximum >= 1, "
                                 f"not {self.adaptive}")
        if self.kind not in JOBQUEUE_KINDS:
            jobq = [k for k in ("queue", "account", "adaptive", "interface") if getattr(self, k)]
            if jobq or self.job_extra_directives or self.job_script_prologue or self.extra:
                raise InputError(f"{jobq or 'job options'} apply to kinds {JOBQUEUE_KINDS} only")

    @classmethod
    def from_options(cls, scheduler: str | None = None, workers: int | None = None) -> ClusterSpec:
        """The CLI's ``--scheduler ADDRESS`` / ``--workers N``."""
        return cls(kind="address", address=scheduler) if scheduler else cls(workers=workers)


def jobqueue_cluster(spec: ClusterSpec):
    """The dask-jobqueue cluster object of a SLURM/PBS spec (no job is submitted yet)."""
    try:
        from dask_jobqueue import PBSCluster, SLURMCluster
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise RuntimeError("SLURM/PBS clusters need dask-jobqueue (pip install dask-jobqueue)") from exc
    cls = SLURMCluster if spec.kind == "slurm" else PBSCluster
    options = dict(cores=spec.cores, memory=spec.memory, processes=spec.processes or spec.cores,
                   walltime=spec.walltime, queue=spec.queue, account=spec.account,
                   job_extra_directives=list(spec.job_extra_directives),
                   job_script_prologue=list(spec.job_script_prologue),
                   job_name="casbi-store", scheduler_options={"dashboard_address": ":0"})
    if spec.local_directory:
        options["local_directory"] = spec.local_directory
    if spec.interface:
        options["interface"] = spec.interface
    env = [f"export {k}={v}" for k, v in WORKER_ENV.items()]
    options["job_script_prologue"] = env + options["job_script_prologue"]
    options.update(spec.extra)
    return cls(**options)


def job_script(spec: ClusterSpec) -> str:
    """The batch script each SLURM/PBS job of ``spec`` would run (to check before submitting)."""
    if spec.kind not in JOBQUEUE_KINDS:
        raise InputError(f"kind {spec.kind!r} submits no job script")
    import dask
    import distributed  # noqa: F401  (loads its config first: set() would otherwise drop it on exit)

    with dask.config.set(DASK_SETTINGS), jobqueue_cluster(spec) as cluster:
        return cluster.job_script()


def refusal(exc: BaseException) -> str:
    """The batch system's complaint in dask-jobqueue's error about a failed submit command, as
    one line (``sbatch: error: invalid partition specified: gpu; ...``)."""
    text = str(exc)
    if "stderr:" in text:
        text = text.rsplit("stderr:", 1)[1]
    lines = [re.sub(r"^[\w.-]+: error: ", "", line.strip()) for line in text.splitlines()]
    return "; ".join(line for line in lines if line) or type(exc).__name__


def submit_jobs(cluster, jobs: int, kind: str) -> None:
    """Submit ``jobs`` jobs of a dask-jobqueue ``cluster`` now and wait for the batch system's
    answer; a refusal is a :class:`ClusterError`. (``cluster.scale`` submits in the background,
    where a refusal is only a logged traceback and the client waits for workers forever.)"""
    while len(cluster.worker_spec) < jobs:
        cluster.worker_spec.update(cluster.new_worker_spec())
    try:
        cluster.sync(cluster._correct_state)
    except RuntimeError as exc:  # dask-jobqueue: the submit command exited non-zero
        from distributed.core import Status

        for name, job in list(cluster.workers.items()):  # never submitted: nothing to close
            if getattr(job, "job_id", None) is None:
                job.status = Status.failed
                del cluster.workers[name]
                cluster.worker_spec.pop(name, None)
        command = getattr(cluster.job_cls, "submit_command", None) or kind
        raise ClusterError(f"{command} refused the job: {refusal(exc)}") from None


class JobWatch:
    """Resubmits the jobs whose workers all left (``scancel``, pre-emption, walltime, a dead
    node) and stayed away longer than ``distributed.deploy.lost-worker-timeout``.

    A job counts as running once one of its workers (named after the job, or ``JOB-i`` where a
    job runs several processes) has joined the scheduler; a job still queued is never replaced.
    Runs every ``interval`` seconds on the cluster's event loop; stopped when the cluster closes.
    """

    def __init__(self, cluster, interval: float = 1.0):
        from tornado.ioloop import PeriodicCallback

        self.cluster = cluster
        self.last_seen: dict[str, float] = {}
        self.job_ids: dict[str, str] = {}  # batch job id of each job seen running
        self.replaced: list[str] = []  # batch job ids of the jobs replaced
        self.retry = False  # a replacement the batch system refused: submit again next time
        self.callback = PeriodicCallback(self.check, interval * 1000)
        cluster.periodic_callbacks["casbi-job-watch"] = self.callback  # stopped by cluster.close
        cluster.loop.add_callback(self.callback.start)

    async def check(self) -> None:
        import dask
        from dask.utils import parse_timedelta

        c = self.cluster
        grace = parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout"))
        names = [str(w.get("name")) for w in c.scheduler_info.get("workers", {}).values()]
        now = time.monotonic()
        lost = []
        for job in list(c.worker_spec):
            if any(n == str(job) or n.startswith(f"{job}-") for n in names):
                self.last_seen[job] = now
                self.job_ids[job] = str(getattr(c.workers.get(job), "job_id", None) or "?")
            elif job in self.last_seen and (job not in c.workers  # dropped by SpecCluster
                                            or now - self.last_seen[job] > grace):
                lost.append(job)
        for job in lost:
            # a new name for the replacement: SpecCluster's own delayed clean-up of the old name
            # (``lost-worker-timeout`` after its worker left) must not cancel the new job
            c.worker_spec.update(c.new_worker_spec())  # while the old name is taken: a new one
            old = c.workers.pop(job, None)
            del c.worker_spec[job]
            self.last_seen.pop(job)
            job_id = self.job_ids.pop(job, "?")
            self.replaced.append(job_id)
            log.warning("job %s (%s): its workers left; submitting a replacement", job_id, job)
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.close()  # cancels the job where it still runs
        if lost or self.retry:
            try:
                await c._correct_state()  # submits a job for every spec without one
                self.retry = False
            except Exception as exc:  # noqa: BLE001 - the batch system's refusal, logged
                self.retry = True
                log.warning("cannot submit a replacement job: %s", refusal(exc))


@contextlib.contextmanager
def cluster_client(spec: ClusterSpec | None = None) -> Iterator:
    """A ``distributed.Client`` on the cluster ``spec`` describes (default: a LocalCluster)."""
    import dask
    from dask.distributed import Client, LocalCluster

    spec = spec or ClusterSpec()
    if spec.kind == "address":
        address = spec.address
        kwargs = {"scheduler_file": address} if os.path.isfile(address) else {"address": address}
        with Client(**kwargs) as client:
            yield client
        return
    with dask.config.set(DASK_SETTINGS):
        if spec.kind == "local":
            n = spec.workers or os.cpu_count() or 1
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.ERROR,
                                   env=dict(WORKER_ENV))
        else:
            cluster = jobqueue_cluster(spec)
            try:  # the first jobs now, so that a refusal is an error here, not a silent wait
                adaptive = spec.adaptive
                submit_jobs(cluster, max(adaptive.get("minimum", 0), 1) if adaptive else spec.jobs,
                            spec.kind)
            except BaseException:
                cluster.close()
                raise
            if adaptive is not None:
                cluster.adapt(minimum_jobs=adaptive.get("minimum", 0),
                              maximum_jobs=adaptive.get("maximum", 1))
            JobWatch(cluster)
            log.info("submitted %s jobs to %s; dashboard %s",
                     spec.adaptive or spec.jobs, spec.kind, cluster.dashboard_link)
        with cluster, Client(cluster) as client:
            yield client
