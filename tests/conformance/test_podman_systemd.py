"""podman with cgroup_manager = "systemd", on a machine whose PID 1 is systemd (the test machine
of tests/systemd_machine.py): podman passes --systemd-cgroup and a "machine.slice:libpod:<id>"
cgroupsPath, and the runtime must ask systemd for the container's scope as runc does.

Scenarios are functions (runtime, machine, env) -> observation; ids are reduced to facts.
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
