"""pause/resume/update/events/ps on a container record whose cgroups live in a temporary
cgroupfs; the container's init is a real sleeping child so its status is derived as runc does."""
import json
import os
import subprocess

import pytest

from capsa.errors import StateError, UsageError
from capsa.runtime import state as states
from capsa.runtime.cgroups import manager, operations
from capsa.runtime.cgroups.plan import build_cgroup_plan
from tests.unit.test_cgroups_fixture import TmpCgroupFs, TmpCgroupKernel


@pytest.fixture
def container(tmp_path):
    fs = TmpCgroupFs(tmp_path / "cg", "v1")
    kernel = TmpCgroupKernel(fs)
    plan = build_cgroup_plan({"cgroupsPath": "/ctr", "resources": {"pids": {"limit": 5},
                                                                   "memory": {"limit": 1 << 20}}},
                             "c1", fs.layout())
    manager.apply_cgroup_create(kernel, plan)
    sleeper = subprocess.Popen(["sleep", "30"])
    root = tmp_path / "state"
    directory = root / "c1"
    os.makedirs(directory)
    record = {"id": "c1", "pid": sleeper.pid, "pid_start": states.read_start_time(sleeper.pid),
              "cgroup": plan, "plan": {"cgroup": plan}, "spec": {"linux": {}}}
    states.save(str(directory), record)
    with open(os.path.join(plan["paths"]["pids"], "cgroup.procs"), "w") as handle:
        handle.write("%d\n" % sleeper.pid)
    yield {"root": str(root), "fs": fs, "kernel": kernel, "plan": plan, "sleeper": sleeper}
    sleeper.kill()
    sleeper.wait()


def test_pause_then_resume(container):
    root, kernel = container["root"], container["kernel"]
    operations.apply_pause(root, "c1", True, kernel)
    assert states.derive_status(states.load(root, "c1")) == "paused"
    with pytest.raises(StateError) as info:
        operations.apply_pause(root, "c1", True, kernel)
    assert "paused, not running or created" in info.value.message
    operations.apply_pause(root, "c1", False, kernel)
    assert states.derive_status(states.load(root, "c1")) == "running"
    with pytest.raises(StateError):
        operations.apply_pause(root, "c1", False, kernel)


def test_update_writes_and_saves_the_new_plan(container):
    root, fs = container["root"], container["fs"]
    operations.apply_container_update(root, "c1", {"pids": {"limit": 9}}, container["kernel"])
    assert fs.read("pids/ctr/pids.max") == "9"
    record = states.load(root, "c1")
    assert record["cgroup"]["resources"]["pids"] == {"limit": 9}
    assert record["cgroup"]["resources"]["memory"] == {"limit": 1 << 20}
    assert record["plan"]["cgroup"]["resources"]["pids"] == {"limit": 9}
    assert record["spec"]["linux"]["resources"]["pids"] == {"limit": 9}
    assert record["cgroup"]["created"] == container["plan"]["created"]


def test_stopped_container_is_refused(container):
    container["sleeper"].kill()
    container["sleeper"].wait()
    with pytest.raises(StateError) as info:
        operations.apply_container_update(container["root"], "c1", {}, container["kernel"])
    assert "stopped" in info.value.message


def test_events_stats_once_and_stream_with_oom(container):
    lines = []
    operations.run_events(container["root"], "c1", lines.append, stats_once=True)
    event = json.loads(lines[0])
    assert event["type"] == "stats" and event["id"] == "c1"
    assert event["data"]["pids"]["limit"] == 5
    lines.clear()
    now = [0.0]
    memory = container["plan"]["paths"]["memory"]

    waits = []

    def wait(fds, timeout):
        waits.append((len(fds), timeout))
        now[0] += min(timeout, 0.4)
        if abs(now[0] - 0.4) < 1e-6:
            with open(memory + "/memory.oom_control", "w") as handle:
                handle.write("oom_kill_disable 0\noom_kill 1\n")
        if now[0] > 2.55:
            container["sleeper"].kill()
            container["sleeper"].wait()
        return []
    kernel = container["kernel"]
    operations.run_events(container["root"], "c1", lines.append, interval=1.0,
                          clock=lambda: now[0], wait=wait, kernel=kernel)
    kinds = [json.loads(line)["type"] for line in lines]
    assert kinds == ["oom", "stats", "stats"]
    # registered for OOM notifications (v1: eventfd + memory.oom_control fd), and sleeping on
    # them and the init's pidfd until the next stats event, not polling
    control = [entry for entry in kernel.log if entry[0] == "write" and
               entry[1].endswith("/cgroup.event_control")]
    assert len(control) == 1 and len(control[0][2].split()) == 2
    assert waits[0] == (2, 1.0)


def test_ps_json_and_table(container):
    pid = container["sleeper"].pid
    assert json.loads(operations.read_ps(container["root"], "c1", "json")) == [pid]
    table = operations.read_ps(container["root"], "c1", "table", ["-o", "pid,comm"])
    assert table.split() == ["PID", "COMMAND", str(pid), "sleep"]
    with pytest.raises(UsageError):
        operations.read_ps(container["root"], "c1", "yaml")


def test_a_created_container_can_be_paused_and_resumed(container):
    root, kernel = container["root"], container["kernel"]
    fifo = os.path.join(root, "c1", states.FIFO_NAME)
    os.mkfifo(fifo)
    with pytest.raises(StateError) as info:
        operations.apply_pause(root, "c1", False, kernel)
    assert "created, not paused" in info.value.message
    operations.apply_pause(root, "c1", True, kernel)
    assert container["fs"].read("freezer/ctr/freezer.state") == "FROZEN"
    operations.apply_pause(root, "c1", False, kernel)
    assert container["fs"].read("freezer/ctr/freezer.state") == "THAWED"


def _cli(container, *argv, stdin=None):
    """capsa-runtime's main() in-process; the real Kernel only writes the tmpdir's files."""
    import io
    import sys
    from capsa.runtime.cli import main
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr, sys.stdin
    sys.stdout, sys.stderr = out, err
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        status = main(["--root", container["root"]] + list(argv))
    finally:
        sys.stdout, sys.stderr, sys.stdin = saved
    return status, out.getvalue(), err.getvalue()


def test_commands_through_the_command_line(container):
    fs = container["fs"]
    assert _cli(container, "update", "--pids-limit", "9", "--memory", "2m", "c1")[0] == 0
    assert fs.read("pids/ctr/pids.max") == "9"
    assert fs.read("memory/ctr/memory.limit_in_bytes") == str(2 << 20)
    assert _cli(container, "update", "-r", "-", "c1", stdin='{"pids":{"limit":4}}')[0] == 0
    assert fs.read("pids/ctr/pids.max") == "4"
    status, _, err = _cli(container, "update", "--memory", "huge", "c1")
    assert status != 0 and err.count("\n") == 1 and "--memory" in err
    assert _cli(container, "pause", "c1")[0] == 0
    assert fs.read("freezer/ctr/freezer.state") == "FROZEN"
    assert _cli(container, "resume", "c1")[0] == 0
    status, out, _ = _cli(container, "events", "--stats", "c1")
    assert status == 0 and json.loads(out)["data"]["pids"]["limit"] == 4
    status, out, _ = _cli(container, "ps", "--format", "json", "c1")
    assert status == 0 and json.loads(out) == [container["sleeper"].pid]
    status, _, err = _cli(container, "pause", "nosuch")
    assert status != 0 and "does not exist" in err
