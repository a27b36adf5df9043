"""capsa-runtime --systemd-cgroup against a real systemd (PID 1 of a test machine, see
tests/systemd_machine.py): the container's transient scope, its limits as systemd properties
that survive a daemon-reload, update, exec, pause, delete, and clean failures; runc beside it.
"""
import contextlib
import json
import os
import secrets

import pytest

from tests.bundles import RUNC, capsa_runtime_command, make_bundle

SCALARS = ("ActiveState", "MemoryLimit", "TasksMax", "CPUShares", "CPUQuotaPerSecUSec",
           "DevicePolicy", "Delegate", "DefaultDependencies", "Slice")
HIERARCHIES = ("memory", "pids", "cpu", "devices", "freezer", "blkio", "systemd", "unified")


def _show(machine, unit, names=SCALARS + ("DeviceAllow", "LoadState")):
    out = machine.run(["systemctl", "show", "-p", ",".join(names), unit], check=True).stdout
    values = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        values.setdefault(key, []).append(value)
    return {key: (value if key == "DeviceAllow" else value[0]) for key, value in values.items()}


def _limits(cgroups_path):
    def mutate(spec):
        spec["linux"]["cgroupsPath"] = cgroups_path
        spec["linux"]["resources"] = {
            "memory": {"limit": 64 << 20}, "pids": {"limit": 50},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000},
            "devices": [{"allow": False, "access": "rwm"}]}
    return mutate


class Driver:
    """One runtime (capsa-runtime or runc) with --systemd-cgroup inside the machine."""

    def __init__(self, machine, command, name):
        self.machine = machine
        self.root = os.path.join(machine.binds[0], "state-" + name)
        self.command = list(command) + ["--systemd-cgroup", "--root", self.root]

    def __call__(self, *argv, check=True):
        result = self.machine.run(self.command + [str(arg) for arg in argv])
        if check:
            assert result.returncode == 0, "%s: %s%s" % (argv, result.stdout, result.stderr)
        return result

    def pid(self, cid):
        return json.loads(self("state", cid).stdout)["pid"]


@pytest.fixture(scope="module")
def capsa(systemd_machine):
    return Driver(systemd_machine, capsa_runtime_command(), "capsa")


def _container(machine, capsa, prefix="c"):
    cid = prefix + secrets.token_hex(3)
    bundle = make_bundle(machine.binds[0], ["sleep", "1000"],
                         mutate=_limits("system.slice:capsa:" + cid), name="bundle-" + cid)
    capsa("run", "-d", "--bundle", bundle, cid)
    return cid, "capsa-%s.scope" % cid


@contextlib.contextmanager
def _running(machine, capsa):
    """A running limited container (id, unit), force-deleted afterwards whatever happened."""
    cid, unit = _container(machine, capsa)
    try:
        yield cid, unit
    finally:
        capsa("delete", "-f", cid, check=False)


def _cgroups_of(machine, pid):
    paths = {}
    text = machine.run(["cat", "/proc/%d/cgroup" % pid], check=True).stdout
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for name in (controllers.split(",") if controllers else ["unified"]):
            paths[name.replace("name=", "")] = path
    return paths


def _unit_dirs(machine, unit):
    return [os.path.join(machine.cgroup_dir(name), "system.slice", unit) for name in HIERARCHIES]


def _read_unit_file(machine, unit, controller, name):
    """A file of the unit's cgroup, read from the host side."""
    path = os.path.join(machine.cgroup_dir(controller), "system.slice", unit, name)
    with open(path) as handle:
        return handle.read().strip()


def test_the_container_lives_in_its_own_scope_with_every_limit(systemd_machine, capsa):
    machine = systemd_machine
    with _running(machine, capsa) as (cid, unit):
        shown = _show(machine, unit)
        assert {key: shown[key] for key in SCALARS} == {
            "ActiveState": "active", "MemoryLimit": str(64 << 20), "TasksMax": "50",
            "CPUShares": "512", "CPUQuotaPerSecUSec": "500ms", "DevicePolicy": "strict",
            "Delegate": "yes", "DefaultDependencies": "no", "Slice": "system.slice"}, shown
        assert "/dev/char/1:3 rwm" in shown["DeviceAllow"]
        assert "char-pts rwm" in shown["DeviceAllow"]
        paths = _cgroups_of(machine, capsa.pid(cid))
        for name in HIERARCHIES:
            assert paths[name] == "/system.slice/" + unit, paths
        inside = capsa("exec", cid, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                       "/sys/fs/cgroup/pids/pids.max").stdout.split()
        assert inside == [str(64 << 20), "50"]


def test_limits_and_device_rules_survive_a_daemon_reload(systemd_machine, capsa):
    """The reason for the driver: systemd rewrites a unit's cgroup files from its properties."""
    machine = systemd_machine
    with _running(machine, capsa) as (cid, unit):
        before = sorted(_read_unit_file(machine, unit, "devices", "devices.list").split("\n"))
        machine.run(["systemctl", "daemon-reload"], check=True)
        after = sorted(_read_unit_file(machine, unit, "devices", "devices.list").split("\n"))
        assert after == before and "a *:* rwm" not in before
        assert _read_unit_file(machine, unit, "memory", "memory.limit_in_bytes") == \
            str(64 << 20)
        # a disk node made inside still cannot be opened
        probe = capsa("exec", cid, "sh", "-c", "mknod /dev/disk b 8 0 && head -c1 /dev/disk",
                      check=False)
        assert probe.returncode != 0 and "not permitted" in probe.stderr + probe.stdout


def test_update_tells_systemd_and_the_files(systemd_machine, capsa):
    machine = systemd_machine
    with _running(machine, capsa) as (cid, unit):
        capsa("update", "--memory", "100M", "--pids-limit", "70", cid)
        shown = _show(machine, unit, ("MemoryLimit", "TasksMax"))
        assert shown == {"MemoryLimit": str(100 << 20), "TasksMax": "70"}
        machine.run(["systemctl", "daemon-reload"], check=True)
        assert _read_unit_file(machine, unit, "memory", "memory.limit_in_bytes") == \
            str(100 << 20)
        assert _read_unit_file(machine, unit, "pids", "pids.max") == "70"


def test_exec_pause_and_delete(systemd_machine, capsa):
    machine = systemd_machine
    cid, unit = _container(machine, capsa)
    pid_file = os.path.join(machine.binds[0], cid + ".exec.pid")
    capsa("exec", "-d", "--pid-file", pid_file, cid, "sleep", "1000")
    with open(pid_file) as handle:
        exec_pid = int(handle.read())
    # every hierarchy, name=systemd included: systemd counts the exec'd process as the unit's
    paths = _cgroups_of(machine, exec_pid)
    assert {paths[name] for name in HIERARCHIES} == {"/system.slice/" + unit}, paths
    capsa("pause", cid)
    assert json.loads(capsa("state", cid).stdout)["status"] == "paused"
    capsa("resume", cid)
    assert json.loads(capsa("state", cid).stdout)["status"] == "running"
    capsa("delete", "-f", cid)
    assert _show(machine, unit, ("LoadState",)) == {"LoadState": "not-found"}
    assert [path for path in _unit_dirs(machine, unit) if os.path.exists(path)] == []
    assert not os.path.exists(os.path.join(capsa.root, cid))


def test_a_create_that_fails_after_the_unit_started_leaves_nothing(systemd_machine, capsa):
    machine = systemd_machine
    cid = "f" + secrets.token_hex(3)

    def broken(spec):
        _limits("system.slice:capsa:" + cid)(spec)
        spec["mounts"].append({"destination": "/data", "type": "bind",
                               "source": "/no/such/folder", "options": ["rbind"]})
    bundle = make_bundle(machine.binds[0], ["true"], mutate=broken, name="bundle-" + cid)
    failed = capsa("create", "--bundle", bundle, cid, check=False)
    assert failed.returncode != 0
    assert "mounts[" in failed.stderr and "Traceback" not in failed.stderr
    unit = "capsa-%s.scope" % cid
    assert _show(machine, unit, ("LoadState",)) == {"LoadState": "not-found"}
    assert [path for path in _unit_dirs(machine, unit) if os.path.exists(path)] == []
    assert not os.path.exists(os.path.join(capsa.root, cid))


def test_a_cgroups_path_systemd_cannot_use_is_one_clear_line(systemd_machine, capsa):
    machine = systemd_machine
    cid = "b" + secrets.token_hex(3)
    bundle = make_bundle(machine.binds[0], ["true"], mutate=_limits("/not/a/slice"),
                         name="bundle-" + cid)
    failed = capsa("create", "--bundle", bundle, cid, check=False)
    assert failed.returncode != 0
    assert failed.stderr.count("\n") == 1 and "linux.cgroupsPath" in failed.stderr
    assert not os.path.exists(os.path.join(capsa.root, cid))


def test_the_same_unit_properties_as_runc(systemd_machine, capsa):
    machine = systemd_machine
    runc = Driver(machine, [RUNC], "runc")
    shown = {}
    for name, driver in (("capsa", capsa), ("runc", runc)):
        cid = name[0] + secrets.token_hex(3)
        bundle = make_bundle(machine.binds[0], ["sleep", "1000"],
                             mutate=_limits("system.slice:%s:%s" % (name, cid)),
                             name="bundle-" + cid)
        driver("run", "-d", "--bundle", bundle, cid)
        try:
            shown[name] = _show(machine, "%s-%s.scope" % (name, cid))
        finally:
            driver("delete", "-f", cid, check=False)
    assert {key: shown["capsa"][key] for key in SCALARS} == \
        {key: shown["runc"][key] for key in SCALARS}
    # runc 1.1 still allows /dev/net/tun by default and leaves /dev/console to its own rule
    extra = set(shown["runc"]["DeviceAllow"]) ^ set(shown["capsa"]["DeviceAllow"])
    assert extra <= {"/dev/char/10:200 rwm", "/dev/char/5:1 rwm"}, shown
