"""Container state: ids, atomic records, and status derived from what can be observed."""
import os

import pytest

from capsa.errors import StateError, UsageError
from capsa.runtime import state as states


@pytest.mark.parametrize("good", ["a", "abc-123_x.y+z", "A" * 1024])
def test_valid_ids(good):
    states.validate_id(good)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a b", "ü", "x" * 1025, "a\n"])
def test_invalid_ids(bad):
    with pytest.raises(UsageError):
        states.validate_id(bad)


def _record(tmp_path, **extra):
    directory = tmp_path / "c1"
    directory.mkdir(exist_ok=True)
    record = {"id": "c1", "pid": os.getpid(), "pid_start": states.read_start_time(os.getpid())}
    record.update(extra)
    states.save(str(directory), record)
    return states.load(str(tmp_path), "c1")


def test_created_while_fifo_exists(tmp_path):
    record = _record(tmp_path)
    os.mkfifo(os.path.join(record["dir"], states.FIFO_NAME))
    assert states.derive_status(record) == "created"


def test_running_without_fifo(tmp_path):
    assert states.derive_status(_record(tmp_path)) == "running"


def test_reused_pid_is_stopped(tmp_path):
    record = _record(tmp_path, pid_start=1)
    assert states.derive_status(record) == "stopped"


def test_dead_pid_is_stopped(tmp_path):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    start = states.read_start_time(pid)
    os.waitpid(pid, 0)
    assert states.derive_status(_record(tmp_path, pid=pid, pid_start=start)) == "stopped"


def test_zombie_is_stopped():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    import time
    time.sleep(0.05)
    try:
        assert states.read_start_time(pid) is None
    finally:
        os.waitpid(pid, 0)


def test_pid_zero_is_creating(tmp_path):
    assert states.derive_status(_record(tmp_path, pid=0)) == "creating"


def test_folder_without_state_file_is_stopped_and_listed(tmp_path):
    (tmp_path / "half").mkdir()
    record = states.load(str(tmp_path), "half")
    assert record["incomplete"] and states.derive_status(record) == "stopped"
    assert states.list_ids(str(tmp_path)) == ["half"]


def test_missing_container_is_one_line(tmp_path):
    with pytest.raises(StateError) as info:
        states.load(str(tmp_path), "nope")
    assert info.value.line() == "container nope does not exist (see capsa-runtime list)"


def test_atomic_write_leaves_no_temp(tmp_path):
    target = str(tmp_path / "f")
    states.write_atomic(target, "one")
    states.write_atomic(target, "two")
    assert open(target).read() == "two" and os.listdir(tmp_path) == ["f"]


def test_oci_state_shape(tmp_path):
    record = _record(tmp_path, bundle="/b", annotations={"k": "v"}, created="t")
    state = states.build_oci_state(record)
    assert state["status"] == "running" and state["pid"] == os.getpid()
    assert state["annotations"] == {"k": "v"} and state["bundle"] == "/b"
    assert states.build_oci_state(record, "stopped")["pid"] == 0
