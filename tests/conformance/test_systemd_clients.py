"""Real clients with their systemd cgroup manager, on a machine whose PID 1 is systemd (the test
machine of tests/systemd_machine.py): podman with cgroup_manager = "systemd" and containerd's
runc shim with SystemdCgroup both pass --systemd-cgroup and a "slice:prefix:name" cgroupsPath,
and the runtime must ask systemd for the container's scope as runc does.

Scenarios are functions (runtime, machine, client) -> observation; ids are reduced to facts.
"""
import os

import pytest

from capsa.busybox import build_busybox_tar
from tests.conformance import clients
from tests.conformance.conftest import RUNTIMES

pytestmark = pytest.mark.conformance
SHOW = ("ActiveState", "Slice", "Delegate", "MemoryLimit", "TasksMax", "CPUShares",
        "DevicePolicy")


@pytest.fixture(scope="module")
def podman_in(systemd_machine):
    """podman_in(runtime, *args) -> CompletedProcess of podman inside the machine, with its own
    storage and configuration in the machine's shared folder and cgroup_manager = "systemd"."""
    top = os.path.join(systemd_machine.binds[0], "podman-systemd")
    os.makedirs(top)
    env = clients.write_podman_conf(top, RUNTIMES)
    conf = env["CONTAINERS_CONF"]
    with open(conf) as handle:
        text = handle.read()
    with open(conf, "w") as handle:
        handle.write(text.replace('cgroup_manager = "cgroupfs"', 'cgroup_manager = "systemd"'))
    inside = {key: env[key] for key in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF",
                                        "CONTAINERS_REGISTRIES_CONF", "TMPDIR")}
    inside["PATH"] = clients.PATH

    def podman_in(runtime, *args, check=True):
        argv = ["podman"] + (["--runtime", runtime] if runtime else []) + list(args)
        result = systemd_machine.run(argv, env=inside, timeout=120)
        if check:
            assert result.returncode == 0, "%s: %s%s" % (argv, result.stdout, result.stderr)
        return result

    tar = build_busybox_tar(os.path.join(top, "busybox-rootfs.tar"))
    podman_in(None, "import", "--change", 'CMD ["/bin/sh"]', "--change",
              "ENV PATH=" + clients.PATH, tar, clients.IMAGE)
    yield podman_in
    podman_in(None, "rm", "--all", "--force", "--time", "0", check=False)
    podman_in(None, "system", "reset", "--force", check=False)


def _show(machine, unit):
    out = machine.run(["systemctl", "show", "-p", ",".join(SHOW), unit], check=True).stdout
    return dict(line.partition("=")[::2] for line in out.splitlines())


def limited_container(runtime, machine, podman_in):
    """run -d with limits: the scope systemd made for it, what the container sees, and that
    stopping it leaves no unit."""
    name = clients.unique("sd")
    podman_in(runtime, "run", "-d", "--name", name, "--memory", "64m", "--pids-limit", "40",
              "--cpu-shares", "512", clients.IMAGE, "sleep", "1000")
    cid = podman_in(runtime, "inspect", "--format", "{{.Id}}", name).stdout.strip()
    unit = "libpod-%s.scope" % cid
    shown = _show(machine, unit)
    seen = podman_in(runtime, "exec", name, "sh", "-c",
                     "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max"
                     "; grep -E ':(memory|name=systemd):' /proc/self/cgroup").stdout.split()
    init = podman_in(runtime, "inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
    host_cgroup = machine.run(["cat", "/proc/%s/cgroup" % init], check=True).stdout
    podman_in(runtime, "rm", "--force", "--time", "0", name)
    gone = _show(machine, unit)["ActiveState"]
    return {
        "unit": shown,
        "inside": [line.replace(cid, "<id>") for line in seen],
        "in unit on host": all("/machine.slice/" + unit in line
                               for line in host_cgroup.splitlines()
                               if ":memory:" in line or ":name=systemd:" in line),
        "after rm": gone,
    }


@pytest.mark.claimed("capsa-runtime")
def test_podman_systemd_cgroup_manager(runtime, observe, systemd_machine, podman_in):
    got = observe(limited_container, systemd_machine, podman_in)
    assert got["unit"] == {"ActiveState": "active", "Slice": "machine.slice", "Delegate": "yes",
                           "MemoryLimit": str(64 << 20), "TasksMax": "40", "CPUShares": "512",
                           "DevicePolicy": "strict"}, got
    assert got["inside"][:2] == [str(64 << 20), "40"], got
    assert got["in unit on host"] is True and got["after rm"] == "inactive", got


@pytest.fixture(scope="module")
def ctr_in(systemd_machine, podman_in):
    """ctr_in(*args) inside the machine, against a containerd that the machine's systemd runs
    (a transient service), with busybox imported; the service is stopped at the end."""
    top = os.path.join(systemd_machine.binds[0], "containerd-systemd")
    config = clients.write_containerd_conf(top)
    sock = os.path.join(os.path.dirname(config), "containerd.sock")
    systemd_machine.run(["systemd-run", "--unit=capsa-test-containerd", "containerd", "--config",
                         config], check=True)

    def ctr_in(*args, check=True):
        argv = ["ctr", "--address", sock, "--namespace", "capsatest"] + list(args)
        result = systemd_machine.run(argv, timeout=120)
        if check:
            assert result.returncode == 0, "%s: %s%s" % (argv, result.stdout, result.stderr)
        return result
    try:
        clients.wait_for(lambda: ctr_in("version", check=False).returncode == 0,
                         what="containerd in the machine to answer")
        archive = os.path.join(top, "busybox-docker.tar")
        podman_in(None, "save", "--format", "docker-archive", "-o", archive, clients.IMAGE)
        ctr_in("images", "import", archive)
        yield ctr_in
    finally:
        systemd_machine.run(["systemctl", "stop", "capsa-test-containerd"])


def containerd_systemd_cgroup(runtime, machine, ctr_in):
    """ctr run -d with SystemdCgroup (the runc shim's option) and a slice:prefix:name path:
    the scope, its memory limit, and the task's cgroups; then kill and remove."""
    name = clients.unique("ctd")
    ctr_in("run", "-d", "--runc-binary", RUNTIMES[runtime], "--runc-systemd-cgroup",
           "--cgroup", "system.slice:ctr:" + name, "--memory-limit", str(64 << 20),
           clients.IMAGE, name, "sleep", "1000")
    try:
        unit = "ctr-%s.scope" % name
        shown = _show(machine, unit)
        pid = ctr_in("task", "ls").stdout.split("\n")
        pid = [line.split()[1] for line in pid if line.startswith(name + " ")][0]
        host_cgroup = machine.run(["cat", "/proc/%s/cgroup" % pid], check=True).stdout
    finally:
        ctr_in("task", "kill", "--signal", "KILL", name, check=False)
        clients.wait_for(lambda: "STOPPED" in ctr_in("task", "ls").stdout or
                         name not in ctr_in("task", "ls").stdout, what="the task to stop")
        ctr_in("task", "rm", name, check=False)
        ctr_in("container", "rm", name)
    return {
        "unit": {key: shown[key] for key in ("ActiveState", "Slice", "Delegate", "MemoryLimit",
                                             "DevicePolicy")},
        "in unit": all("/system.slice/" + unit in line for line in host_cgroup.splitlines()
                       if ":memory:" in line or ":name=systemd:" in line),
        "after": _show(machine, unit)["ActiveState"],
    }


@pytest.mark.claimed("capsa-runtime")
def test_containerd_systemd_cgroup(runtime, observe, systemd_machine, ctr_in):
    got = observe(containerd_systemd_cgroup, systemd_machine, ctr_in)
    assert got["unit"] == {"ActiveState": "active", "Slice": "system.slice", "Delegate": "yes",
                           "MemoryLimit": str(64 << 20), "DevicePolicy": "strict"}, got
    assert got["in unit"] is True and got["after"] == "inactive", got
