"""The writer lock: refused while held (naming the holder), stale after SIGKILL, broken on request."""

import os
import signal
import subprocess
import sys

import pytest

from casbi_store.store.locks import LockHeld, acquire, break_lock, list_locks, lock_path, store_lock

HOLD = """
import sys, time
from casbi_store.store.locks import acquire
acquire(sys.argv[1], "store", "holder-process")
print("held", flush=True)
time.sleep(120)
"""


def _holder(store) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_is_exclusive_across_processes_and_stale_after_sigkill(tmp_path):
    store = tmp_path / "s.zarr"
    proc = _holder(store)
    try:
        with pytest.raises(LockHeld) as held:
            acquire(store, "store")
        assert not held.value.stale
        assert f"pid {proc.pid}" in str(held.value) and "holder-process" in str(held.value)
        with pytest.raises(LockHeld):  # a live holder's lock is not broken without force
            break_lock(store, "store")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with pytest.raises(LockHeld) as stale:
        acquire(store, "store")
    assert stale.value.stale and "casbi-store unlock" in str(stale.value)
    assert list_locks(store)["store"]["stale"] is True
    assert break_lock(store, "store")["pid"] == proc.pid
    with store_lock(store, "store"):
        assert lock_path(store, "store").exists()
    assert not lock_path(store, "store").exists()


def test_release_does_not_remove_another_writers_lock(tmp_path):
    lock = acquire(tmp_path, "set-a-v1")
    os.unlink(lock.path)  # someone broke it ...
    other = acquire(tmp_path, "set-a-v1")  # ... and another writer took it
    lock.release()
    assert other.path.exists()
    other.release()
    assert list_locks(tmp_path) == {}
