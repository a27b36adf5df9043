"""The systemd test machine itself (tests/systemd_machine.py), and runc's --systemd-cgroup in it
as the baseline capsa's systemd cgroup driver mirrors.

Needs root, /lib/systemd/systemd and overlayfs; one machine per module (fixture in conftest.py),
plus short-lived ones for shutdown and boot failures.
"""
import glob
import json
import os
import secrets
import select
import subprocess
import time

import pytest

from tests.bundles import RUNC, make_bundle
from tests.systemd_machine import (MachineError, SystemdMachine, build_boot_script,
                                   read_cgroup_layout, sweep_leftovers)

MISSING = SystemdMachine.missing()
needs_machine = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
SHOW = "ActiveState,MemoryLimit,TasksMax,CPUShares,DevicePolicy,DeviceAllow,Delegate"


def _leftovers(name):
    return glob.glob("/sys/fs/cgroup/*/" + name) + glob.glob("/sys/fs/cgroup/" + name)


def _show(machine, unit, props=SHOW):
    out = machine.run(["systemctl", "show", "-p", props, unit], check=True).stdout
    values = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        values.setdefault(key, []).append(value)
    return out, values


def _wait_file(path, timeout=10):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "%s did not appear within %ss" % (path, timeout)
        time.sleep(0.02)
    with open(path) as f:
        return f.read()


def _wait_gone(path, timeout=10):
    deadline = time.monotonic() + timeout
    while os.path.exists(path):
        assert time.monotonic() < deadline, "%s still there after %ss" % (path, timeout)
        time.sleep(0.02)


def _cgroup_paths(text):
    """/proc/PID/cgroup text -> {controller or name: path}."""
    paths = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") or [""]:
            paths[controller] = path
    return paths


@needs_machine
def test_systemd_is_pid1_and_answers(systemd_machine):
    machine = systemd_machine
    assert machine.run(["cat", "/proc/1/comm"], check=True).stdout == "systemd\n"
    with open("/proc/%d/status" % machine.pid) as f:
        nspid = [line.split()[1:] for line in f if line.startswith("NSpid:")][0]
    assert nspid[0] == str(machine.pid) and nspid[-1] == "1"
    for ns in ("pid", "mnt", "cgroup", "uts", "ipc", "net"):
        assert os.readlink("/proc/%d/ns/%s" % (machine.pid, ns)) != os.readlink(
            "/proc/self/ns/" + ns), ns
    state = machine.run(["systemctl", "is-system-running"])
    assert state.stdout.strip() in ("running", "degraded"), state
    # run() joined the machine's cgroups first: no "/.." path escapes its cgroup namespace
    own = _cgroup_paths(machine.run(["cat", "/proc/self/cgroup"], check=True).stdout)
    assert own["memory"] == "/" and own["name=systemd"] == "/", own
    assert not [p for p in own.values() if p.startswith("/..")], own


@needs_machine
def test_binds_are_shared_and_the_rest_stays_in_the_overlay(systemd_machine):
    machine = systemd_machine
    shared = machine.binds[0]
    token = secrets.token_hex(4)
    machine.run(["sh", "-c", "echo %s > %s/from-inside" % (token, shared)], check=True)
    with open(os.path.join(shared, "from-inside")) as f:
        assert f.read() == token + "\n"
    # a write outside the binds lands in the machine's overlay, never on the host
    marker = "/etc/capsa-sdtest-" + token
    machine.run(["touch", marker], check=True)
    assert os.path.exists(machine.path(marker)) and not os.path.exists(marker)


@needs_machine
def test_scope_lands_in_system_slice_with_its_memory_limit(systemd_machine):
    machine = systemd_machine
    unit = "probe-" + secrets.token_hex(4)
    report = "/run/%s.cgroup" % unit
    # backgrounded so the scope stays alive while the host reads its cgroup
    started = machine.run(["sh", "-c", "systemd-run --quiet --scope --unit=%s -p MemoryLimit=64M "
                           "-p Delegate=yes sh -c 'cat /proc/self/cgroup > %s.tmp; mv %s.tmp %s; "
                           "exec sleep 1000' >/dev/null 2>&1 &" % (unit, report, report, report)],
                          check=True)
    try:
        seen = _cgroup_paths(_wait_file(machine.path(report)))
        scope = "/system.slice/%s.scope" % unit
        assert seen["name=systemd"] == scope and seen["memory"] == scope, (seen, started)
        limit = os.path.join(machine.cgroup_dir("memory"), scope.lstrip("/"),
                             "memory.limit_in_bytes")
        with open(limit) as f:
            assert f.read().strip() == "67108864"
    finally:
        machine.run(["systemctl", "stop", unit + ".scope"])
    _wait_gone(os.path.dirname(limit))


@needs_machine
@pytest.mark.skipif(not os.access(RUNC, os.X_OK), reason="no %s (Debian package runc)" % RUNC)
def test_runc_systemd_cgroup_baseline(systemd_machine):
    """What runc asks systemd for: the lead's driver mirrors this `systemctl show`."""
    machine = systemd_machine
    shared = machine.binds[0]
    cid = "sd" + secrets.token_hex(4)

    def limits(spec):
        spec["linux"]["cgroupsPath"] = "system.slice:runc:" + cid
        spec["linux"].setdefault("resources", {}).update(
            {"memory": {"limit": 67108864}, "pids": {"limit": 50}, "cpu": {"shares": 512}})

    bundle = make_bundle(shared, ["sleep", "1000"], mutate=limits, name="bundle-" + cid)
    runc = [RUNC, "--systemd-cgroup", "--root", os.path.join(shared, "state")]
    unit = "runc-%s.scope" % cid
    started = machine.run(runc + ["run", "-d", "--bundle", bundle, cid])
    try:
        assert started.returncode == 0, started
        out, values = _show(machine, unit)
        expected = {"ActiveState": ["active"], "MemoryLimit": ["67108864"], "TasksMax": ["50"],
                    "CPUShares": ["512"], "DevicePolicy": ["strict"], "Delegate": ["yes"]}
        got = {key: values.get(key) for key in expected}
        assert got == expected, "systemctl show %s:\n%s" % (unit, out)
        assert "/dev/char/1:3 rwm" in values["DeviceAllow"], "systemctl show %s:\n%s" % (unit, out)
        state = json.loads(machine.run(runc + ["state", cid], check=True).stdout)
        inside = _cgroup_paths(machine.run(["cat", "/proc/%d/cgroup" % state["pid"]],
                                           check=True).stdout)
        assert inside["memory"] == inside["pids"] == "/system.slice/" + unit, inside
        limit = os.path.join(machine.cgroup_dir("memory"), "system.slice", unit,
                             "memory.limit_in_bytes")
        with open(limit) as f:
            assert f.read().strip() == "67108864"
    finally:
        deleted = machine.run(runc + ["delete", "-f", cid])
    assert deleted.returncode == 0, deleted
    out, values = _show(machine, unit, "LoadState,ActiveState")
    assert values == {"LoadState": ["not-found"], "ActiveState": ["inactive"]}, out


def _pidfds(machine):
    pids = set()
    for dirpath, _dirs, files in os.walk(machine.cgroup_dir("pids")):
        with open(os.path.join(dirpath, "cgroup.procs")) as f:
            pids.update(int(p) for p in f.read().split())
    return [os.pidfd_open(p) for p in pids]


@needs_machine
def test_shutdown_leaves_no_cgroup_process_or_folder(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    machine = SystemdMachine(tmp_path / "machine", binds=(str(shared),))
    with machine:
        machine.boot()
        machine.run(["systemd-run", "--quiet", "--unit=bg", "sleep", "1000"], check=True)
        machine.run(["sh", "-c", "systemd-run --quiet --scope --unit=fg sleep 1000 "
                     ">/dev/null 2>&1 &"], check=True)
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(machine.cgroup_dir("pids"),
                                              "system.slice", "fg.scope")):
            assert time.monotonic() < deadline, "the fg scope never started"
            time.sleep(0.02)
        fds = _pidfds(machine)
        name, workdir = machine.name, machine.workdir
        # systemd, the service's and the scope's sleep at least
        assert len(fds) >= 3
    try:
        alive = [fd for fd in fds if not select.select([fd], [], [], 0)[0]]
        assert not alive, "processes outlived shutdown"
    finally:
        for fd in fds:
            os.close(fd)
    assert _leftovers(name) == []
    assert not os.path.exists(workdir) and shared.is_dir()
    machine.shutdown()
    with pytest.raises(MachineError):
        machine.run(["true"])


@needs_machine
def test_boot_failure_names_the_cause_and_leaves_nothing(tmp_path):
    missing = str(tmp_path / "no-such-folder")
    machine = SystemdMachine(tmp_path / "machine", binds=(missing,))
    with pytest.raises(MachineError) as failure:
        machine.boot()
    assert "exited" in str(failure.value) and missing in str(failure.value)
    assert _leftovers(machine.name) == [] and not os.path.exists(machine.workdir)


@needs_machine
def test_boot_timeout_shows_the_log_and_leaves_nothing(tmp_path):
    machine = SystemdMachine(tmp_path / "machine")
    with pytest.raises(MachineError) as failure:
        machine.boot(timeout=0)
    assert "did not come up within 0s" in str(failure.value)
    assert _leftovers(machine.name) == [] and not os.path.exists(machine.workdir)


@needs_machine
def test_sweep_removes_only_old_empty_leftovers():
    layout = read_cgroup_layout()
    hierarchies = ["/sys/fs/cgroup"] if layout["v2"] else ["/sys/fs/cgroup/pids",
                                                            "/sys/fs/cgroup/systemd"]
    names = {kind: "capsa-sdtest-" + secrets.token_hex(4) for kind in ("old", "busy", "young")}
    made = []
    sleeper = None
    try:
        for kind, name in names.items():
            for hierarchy in hierarchies:
                top = os.path.join(hierarchy, name)
                os.makedirs(os.path.join(top, "system.slice"))
                made.append(top)
                if kind != "young":
                    os.utime(top, (time.time() - 120,) * 2)
        sleeper = subprocess.Popen(["sleep", "1000"])
        busy = [t for t in made if t.endswith(names["busy"])]
        with open(os.path.join(busy[0], "system.slice", "cgroup.procs"), "w") as f:
            f.write(str(sleeper.pid))
        removed = sweep_leftovers(layout)
        assert names["old"] in removed and names["busy"] not in removed
        assert names["young"] not in removed
        assert _leftovers(names["old"]) == []
        assert len(_leftovers(names["busy"])) == len(hierarchies)
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        deadline = time.monotonic() + 10
        for top in made:
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                while os.path.isdir(dirpath):
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        assert time.monotonic() < deadline, "cannot remove " + dirpath
                        time.sleep(0.02)


def test_workdir_and_binds_are_checked_before_anything_is_made(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        SystemdMachine(tmp_path / "busy")
    with pytest.raises(ValueError, match="overlaps"):
        SystemdMachine(tmp_path / "m", binds=(str(tmp_path),))


def test_pure_cgroup2_host_mounts_cgroup2_at_the_machines_cgroup_root(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "30 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    layout = read_cgroup_layout(str(mountinfo))
    assert layout == {"v2": True}
    script = build_boot_script("/w", layout, (), "/w/pid")
    assert "mount -t cgroup2 cgroup2 /w/root/sys/fs/cgroup\n" in script
    assert "tmpfs /w/root/sys/fs/cgroup" not in script
    machine = SystemdMachine(tmp_path / "m")
    machine.layout = layout
    assert machine.cgroup_dirs() == ["/sys/fs/cgroup/" + machine.name]
    assert machine.cgroup_dir("memory") == "/sys/fs/cgroup/" + machine.name


def test_hybrid_host_mirrors_each_hierarchy_with_its_own_options(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "30 22 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n"
        "31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n"
        "32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
        "33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n")
    layout = read_cgroup_layout(str(mountinfo))
    assert layout["mounts"] == {"unified": ("cgroup2", ""),
                                "systemd": ("cgroup", "none,name=systemd"),
                                "cpu,cpuacct": ("cgroup", "cpu,cpuacct")}
    script = build_boot_script("/w", layout, ("/srv/x",), "/w/pid")
    assert "mount -t cgroup -o none,name=systemd cgroup /w/root/sys/fs/cgroup/systemd\n" in script
    assert "mount -t cgroup2 cgroup2 /w/root/sys/fs/cgroup/unified\n" in script
    assert "mount --rbind /srv/x /w/root/srv/x\n" in script
    machine = SystemdMachine(tmp_path / "m")
    machine.layout = layout
    assert machine.cgroup_dir("cpuacct") == "/sys/fs/cgroup/cpu,cpuacct/" + machine.name
    assert machine.cgroup_dir("name=systemd") == "/sys/fs/cgroup/systemd/" + machine.name
