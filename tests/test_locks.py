"""Writer locks never need a person after a crash: created whole, broken by the next writer when
their holder is gone, never broken silently when the holder is on another host; `unlock` lists
and clears every lock. Real processes, real SIGKILLs."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from casbi_store.cli import main
from casbi_store.store import locks
from casbi_store.store.locks import LockHeld, acquire, break_lock, list_locks, lock_path, store_lock

HOLD = """
import sys, time
from casbi_store.store.locks import acquire
acquire(sys.argv[1], sys.argv[2], "holder-process")
print("held", flush=True)
time.sleep(120)
"""


def _holder(store, name="store") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(store), name], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_live_holder_is_refused_by_name_and_a_killed_ones_lock_is_broken(tmp_path, caplog):
    store = tmp_path / "s.zarr"
    proc = _holder(store)
    try:
        with pytest.raises(LockHeld) as held:
            acquire(store, "store")
        assert f"pid {proc.pid}" in str(held.value) and "holder-process" in str(held.value)
        with pytest.raises(LockHeld):  # a live holder's lock is not broken without force
            break_lock(store, "store")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list_locks(store)["store"]["stale"] is True
    with store_lock(store, "store") as lock:  # the next writer breaks it, and says so
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert f"pid {proc.pid} (no longer running)" in caplog.text
    assert not lock_path(store, "store").exists()


def test_empty_lock_file_is_broken_and_other_hosts_lock_is_never(tmp_path, caplog):
    path = lock_path(tmp_path, "store")
    path.parent.mkdir()
    path.write_text("")  # what a kill inside the old create-then-write left
    acquire(tmp_path, "store").release()
    assert "an empty or unreadable lock file" in caplog.text
    other = {"host": "node042.cluster", "pid": 4242, "started_utc": "2026-01-01T00:00:00Z",
             "command": "casbi-store extract", "token": "x"}
    path.write_text(json.dumps(other))
    with pytest.raises(LockHeld, match="host node042.cluster, pid 4242.*another host"):
        acquire(tmp_path, "store")
    assert main(["unlock", str(tmp_path)]) == 2  # listed, kept
    assert path.exists()
    assert main(["unlock", str(tmp_path), "--force"]) == 0
    assert not path.exists()


def test_recycled_pid_is_not_the_holder(tmp_path):
    path = lock_path(tmp_path, "store")
    path.parent.mkdir()
    # our own pid, with another process start time: the pid was recycled, its holder is gone
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                "proc_start": "1", "token": "y"}))
    assert list_locks(tmp_path)["store"]["stale"]
    acquire(tmp_path, "store").release()


@pytest.mark.parametrize("step", ["temp", "link"])
def test_kill_while_creating_a_lock_leaves_none_or_a_whole_one(tmp_path, step):
    code = "import sys; from casbi_store.store.locks import acquire; acquire(sys.argv[1], 'store')"
    env = {**os.environ, locks.KILL_ENV: f"1:{step}"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, check=False)
    assert proc.returncode == -signal.SIGKILL
    path = lock_path(tmp_path, "store")
    if step == "temp":
        assert not path.exists()
    else:
        assert json.loads(path.read_text())["command"]  # whole: a complete record
    acquire(tmp_path, "store").release()  # no person needed either way
    assert list_locks(tmp_path) == {}


RACE = """
import sys, time
from casbi_store.store.locks import LockHeld, acquire
try:
    lock = acquire(sys.argv[1], "store")
except LockHeld:
    print("refused", flush=True)
else:
    print("took", flush=True)
    time.sleep(2)
"""


def test_writers_racing_to_break_one_stale_lock_let_only_one_in(tmp_path):
    path = lock_path(tmp_path, "store")
    path.parent.mkdir()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 7, "token": "z"}))
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    said = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert said == ["refused", "refused", "refused", "took"], said


def test_unlock_lists_and_clears_every_dead_lock_and_keeps_a_live_one(tmp_path, capsys):
    for name in ("store", "metadata", "set-a-v1"):
        lock = acquire(tmp_path, name)
        data = json.loads(lock.path.read_text())
        lock.path.write_text(json.dumps({**data, "pid": 2**22 + 11}))  # holder gone
    proc = _holder(tmp_path, "set-b-v2")
    try:
        assert main(["unlock", str(tmp_path)]) == 2
        out = capsys.readouterr().out
        for name in ("store", "metadata", "set-a-v1"):
            assert f"cleared lock {name!r} (stale)" in out
        assert f"kept lock 'set-b-v2' held by host {socket.gethostname()}, pid {proc.pid}" in out
        assert list(list_locks(tmp_path)) == ["set-b-v2"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert main(["unlock", str(tmp_path)]) == 0
    assert list_locks(tmp_path) == {}


def test_release_does_not_remove_another_writers_lock(tmp_path):
    lock = acquire(tmp_path, "set-a-v1")
    os.unlink(lock.path)  # someone broke it ...
    other = acquire(tmp_path, "set-a-v1")  # ... and another writer took it
    lock.release()
    assert other.path.exists()
    other.release()
    assert list_locks(tmp_path) == {}


def test_unlock_help_says_it_clears_every_lock(capsys):
    with pytest.raises(SystemExit):
        main(["unlock", "--help"])
    assert "every lock" in capsys.readouterr().out
