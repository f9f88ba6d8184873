"""A one-node SLURM on this machine for the tests (``cluster/start_slurm.sh``), stopped after.

Needs Debian's ``slurm-wlm`` and ``munge`` and root (``.ci/run`` installs them). Where SLURM
cannot start, the tests that use it fail under CI (``CI`` set) and are skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START, STOP = REPO / "cluster" / "start_slurm.sh", REPO / "cluster" / "stop_slurm.sh"


@dataclass(frozen=True)
class Slurm:
    """The running one-node cluster: its folder (slurm.conf, logs, state)."""

    folder: Path

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    def command(self, *args: str) -> str:
        """A SLURM client command's output (sbatch, squeue, scancel, scontrol) on this cluster."""
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        return subprocess.run(args, capture_output=True, text=True, check=True, env=env,
                              timeout=30).stdout

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` of one job as a mapping (JobName, JobState, Account...)."""
        out = self.command("scontrol", "show", "job", "--oneliner", job_id)
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def queued(self, name: str) -> list[str]:
        """Ids of the jobs called ``name`` that are pending or running."""
        return self.command("squeue", "--noheader", "--name", name, "--format", "%i").split()


def unavailable() -> str | None:
    """Why a one-node SLURM cannot start here, or None."""
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(c) is None]
    if missing:
        return f"{', '.join(missing)} not found (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the one-node SLURM runs its daemons as root"
    return None


def _cannot(reason: str):
    """Fail under CI (which installs SLURM), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"SLURM cannot start: {reason}", pytrace=False)
    pytest.skip(f"SLURM cannot start: {reason}")


@pytest.fixture(scope="session", name="slurm")
def slurm_fixture(tmp_path_factory) -> Slurm:
    """A running one-node SLURM; ``SLURM_CONF`` points at it while the session's tests run."""
    reason = unavailable()
    if reason:
        _cannot(reason)
    folder = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run([str(START), str(folder)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        subprocess.run([str(STOP), str(folder)], capture_output=True, timeout=60)
        _cannot(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no message")
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    try:
        yield Slurm(folder)
    finally:
        subprocess.run([str(STOP), str(folder)], capture_output=True, timeout=60)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
