"""Rootless podman (an unprivileged user's podman 4.3, its user namespace from /etc/subuid,
slirp4netns for the network) driving the runtime, which then runs as root of a user namespace
podman made: no --root given (the runtime must pick $XDG_RUNTIME_DIR), device nodes bound,
setgroups possibly denied, network sysctls for a namespace joined by path.

Scenarios are functions (runtime, podman) -> observation; ids are reduced to facts.
"""
import os

import pytest

from capsa.busybox import build_busybox_tar
from tests.conformance import clients
from tests.conformance.conftest import RUNTIMES
from tests.rootless_user import make_user, run_as, skip_without_userns

pytestmark = [pytest.mark.conformance, skip_without_userns()]


@pytest.fixture(scope="module")
def user():
    yield from make_user("capsa-podman")


@pytest.fixture(scope="module")
def rootless_podman(user):
    """rootless_podman(runtime, *args) -> CompletedProcess of the user's podman."""
    runtime_dir = os.path.join(user["work"], "run")
    os.mkdir(runtime_dir, 0o700)
    os.chown(runtime_dir, user["uid"], user["gid"])
    conf = os.path.join(user["work"], "containers.conf")
    with open(conf, "w") as handle:
        # no systemd here: cgroupfs (which a rootless user may not write on cgroup v1, so
        # podman runs without cgroups) and a file for events
        handle.write('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                     'events_logfile_path = "%s/events.log"\n' % user["work"])
    env = {"XDG_RUNTIME_DIR": runtime_dir, "CONTAINERS_CONF": conf}

    def podman(runtime, *args, check=True):
        argv = ["podman"] + (["--runtime", RUNTIMES[runtime]] if runtime else []) + list(args)
        result = run_as(user, argv, timeout=120, env=env)
        if check:
            assert result.returncode == 0, "%s: %s%s" % (argv, result.stdout, result.stderr)
        return result
    tar = os.path.join(user["work"], "busybox.tar")
    build_busybox_tar(tar)
    os.chown(tar, user["uid"], user["gid"])
    podman(None, "import", "--change", 'CMD ["/bin/sh"]', tar, clients.IMAGE)
    try:
        yield podman
    finally:
        podman(None, "rm", "--all", "--force", "--time", "0", check=False)
        podman(None, "system", "reset", "--force", check=False)


def rootless_lifecycle(runtime, podman):
    """run in the foreground, then detached with exec, stop and rm."""
    seen = podman(runtime, "run", "--rm", clients.IMAGE, "sh", "-c",
                  "id -u; cat /proc/self/uid_map; cat /proc/sys/net/ipv4/ping_group_range; "
                  "ls -l /dev/null | cut -c1; exit 3", check=False)
    name = clients.unique("rl")
    podman(runtime, "run", "-d", "--name", name, clients.IMAGE, "sleep", "300")
    execd = podman(runtime, "exec", name, "sh", "-c", "id -u; echo in-exec").stdout.split()
    status = podman(runtime, "inspect", "--format", "{{.State.Status}}", name).stdout.strip()
    podman(runtime, "rm", "--force", "--time", "0", name)
    left = podman(runtime, "ps", "-a", "--format", "{{.Names}}").stdout.split()
    return {"exit": seen.returncode, "seen": seen.stdout.split(), "exec": execd,
            "status": status, "left": name in left}


@pytest.mark.claimed("capsa-runtime")
def test_rootless_podman(runtime, observe, rootless_podman):
    got = observe(rootless_lifecycle, rootless_podman)
    assert got["exit"] == 3 and got["seen"][0] == "0", got
    assert got["seen"][-1] == "c", got               # a device node, bound into the container
    assert got["exec"] == ["0", "in-exec"] and got["status"] == "running", got
    assert got["left"] is False, got
