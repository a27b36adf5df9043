"""capsa-runtime run by an unprivileged user, as `runc` rootless is: a user namespace mapping
the caller's own ids (or its /etc/subuid ranges through newuidmap), no cgroups it may not make,
and nothing left behind. Each observation is compared with runc's for the same bundle.

Needs root (to make the user) and unprivileged user namespaces.
"""
import json
import os
import time

import pytest

from capsa.runtime.specgen import build_default_spec
from tests.bundles import RUNC, capsa_runtime_command, make_rootfs
from tests.rootless_user import USER, is_gone, make_user, run_as, skip_without_userns

pytestmark = skip_without_userns()
user = pytest.fixture(scope="module")(make_user)
_as_user = run_as

def _bundle(user, name, args, mutate=None):
    bundle = os.path.join(user["work"], name)
    os.mkdir(bundle)
    make_rootfs(bundle)
    spec = build_default_spec(args, rootless=True, terminal=False, uid=user["uid"],
                              gid=user["gid"])
    if mutate:
        mutate(spec)
    with open(os.path.join(bundle, "config.json"), "w") as handle:
        json.dump(spec, handle)
    for folder, dirs, files in os.walk(bundle):
        for item in [folder] + [os.path.join(folder, f) for f in files]:
            os.lchown(item, user["uid"], user["gid"])
    return bundle


def _runtimes(user):
    return {"capsa": capsa_runtime_command() + ["--root", os.path.join(user["work"], "capsa")],
            "runc": [RUNC, "--root", os.path.join(user["work"], "runc")]}


PROBE = "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups; " \
        "touch /dev/shm/w && echo writable; cat /proc/self/status | grep ^CapEff; exit 3"


def test_rootless_run_sees_root_inside_mapped_to_the_caller(user):
    seen = {}
    for name, runtime in _runtimes(user).items():
        bundle = _bundle(user, "run-" + name, ["sh", "-c", PROBE])
        result = _as_user(user, runtime + ["run", "--bundle", bundle, "r1"])
        assert result.returncode == 3, "%s: %s" % (name, result.stderr)
        words = result.stdout.split()
        seen[name] = words
    assert seen["capsa"] == seen["runc"]
    assert seen["capsa"][:2] == ["0", "0"]
    assert seen["capsa"][2:8] == ["0", str(user["uid"]), "1", "0", str(user["gid"]), "1"]
    assert seen["capsa"][8] == "deny" and "writable" in seen["capsa"]
    # nothing left: the state folder is empty, no cgroup was made for the user
    assert os.listdir(os.path.join(user["work"], "capsa")) == []
    assert not [path for path in os.listdir("/sys/fs/cgroup/memory") if path == "r1"]


def test_rootless_create_exec_kill_delete(user):
    runtime = _runtimes(user)["capsa"]
    bundle = _bundle(user, "life", ["sleep", "100"])
    assert _as_user(user, runtime + ["create", "--bundle", bundle, "l1"]).returncode == 0
    try:
        assert _as_user(user, runtime + ["start", "l1"]).returncode == 0
        state = json.loads(_as_user(user, runtime + ["state", "l1"]).stdout)
        assert state["status"] == "running"
        with open("/proc/%d/status" % state["pid"]) as handle:
            uids = [line.split()[1] for line in handle if line.startswith("Uid:")]
        assert uids == [str(user["uid"])]      # root inside is the caller outside
        execd = _as_user(user, runtime + ["exec", "l1", "sh", "-c", "id -u; id -G"])
        assert execd.returncode == 0, execd.stderr
        assert execd.stdout.split() == ["0", "0"]
        # no cgroup: kill --all and delete --force reach the init (its pid namespace dies with it)
        assert _as_user(user, runtime + ["kill", "--all", "l1", "CONT"]).returncode == 0
    finally:
        started = time.monotonic()
        deleted = _as_user(user, runtime + ["delete", "--force", "l1"])
    assert deleted.returncode == 0, deleted.stderr
    assert time.monotonic() - started < 5
    assert is_gone(state["pid"])
    assert os.listdir(os.path.join(user["work"], "capsa")) == []


def test_subordinate_ranges_go_through_newuidmap(user):
    if not (os.access("/usr/bin/newuidmap", os.X_OK) and os.access("/usr/bin/newgidmap", os.X_OK)):
        pytest.skip("no newuidmap/newgidmap (Debian package uidmap)")
    with open("/etc/subuid") as handle:
        ranges = [line.strip().split(":") for line in handle if line.startswith(USER + ":")]
    if not ranges:
        pytest.skip("useradd gave %s no /etc/subuid range on this host" % USER)
    start, count = int(ranges[0][1]), min(int(ranges[0][2]), 65536)

    def wide(spec):
        for key, own in (("uidMappings", user["uid"]), ("gidMappings", user["gid"])):
            spec["linux"][key] = [{"containerID": 0, "hostID": own, "size": 1},
                                  {"containerID": 1, "hostID": start, "size": count}]
        # a user other than root inside exists only through the subordinate range
        spec["process"]["user"] = {"uid": 1000, "gid": 1000}
    script = "id -u; id -g; cat /proc/self/uid_map; cat /proc/self/setgroups"
    seen = {}
    for name, runtime in _runtimes(user).items():
        bundle = _bundle(user, "wide-" + name, ["sh", "-c", script], mutate=wide)
        result = _as_user(user, runtime + ["run", "--bundle", bundle, "w1"])
        assert result.returncode == 0, "%s: %s" % (name, result.stderr)
        seen[name] = result.stdout.split()
    assert seen["capsa"] == seen["runc"]
    assert seen["capsa"][:2] == ["1000", "1000"]
    assert seen["capsa"][2:8] == ["0", str(user["uid"]), "1", "1", str(start), str(count)]
    assert seen["capsa"][8] == "allow"


def test_a_range_the_user_does_not_own_is_one_clear_line(user):
    runtime = _runtimes(user)["capsa"]

    def foreign(spec):
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 0, "size": 1}]
    bundle = _bundle(user, "foreign", ["true"], mutate=foreign)
    result = _as_user(user, runtime + ["run", "--bundle", bundle, "f1"])
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "linux.uidMappings" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(os.path.join(user["work"], "capsa")) == []


def test_inside_a_user_namespace_already_as_under_unshare_ur(user):
    """A runtime started inside a user namespace (rootless podman's, `unshare -Ur`): root there
    but no mknod and no cgroups; --rootless auto sees it, as runc's does."""
    def inside(spec):
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"]
                                       if ns["type"] != "user"]
        spec["linux"].pop("uidMappings", None)
        spec["linux"].pop("gidMappings", None)
    script = "id -u; ls -l /dev/null | cut -c1; cat /proc/self/uid_map"
    seen = {}
    for name, runtime in _runtimes(user).items():
        bundle = _bundle(user, "inns-" + name, ["sh", "-c", script], mutate=inside)
        result = _as_user(user, ["unshare", "-Ur"] + runtime + ["run", "--bundle", bundle, "n1"])
        assert result.returncode == 0, "%s: %s" % (name, result.stderr)
        seen[name] = result.stdout.split()
    assert seen["capsa"] == seen["runc"]
    assert seen["capsa"][:2] == ["0", "c"]            # a real char device node (bind-mounted)
    assert seen["capsa"][2:5] == ["0", str(user["uid"]), "1"]

    def limited(spec):
        inside(spec)
        spec["linux"]["resources"] = {"pids": {"limit": 10}}
    bundle = _bundle(user, "inns-limits", ["true"], mutate=limited)
    result = _as_user(user, ["unshare", "-Ur"] + _runtimes(user)["capsa"] +
                      ["run", "--bundle", bundle, "n2"])
    # limits are never dropped silently
    assert result.returncode != 0 and "linux.resources" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
