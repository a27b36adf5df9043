"""build_plan: the whole container as pure data, from a spec and host facts (no host access)."""
import json

import pytest

from capsa.errors import ConfigError
from capsa.runtime.plan import build_plan
from capsa.runtime.specgen import build_default_spec
from capsa.syscalls.fake import FakeKernel

LAYOUT = {"mode": "hybrid",
          "v1": {"cpu": "/sys/fs/cgroup/cpu", "memory": "/sys/fs/cgroup/memory",
                 "pids": "/sys/fs/cgroup/pids", "devices": "/sys/fs/cgroup/devices",
                 "freezer": "/sys/fs/cgroup/freezer"},
          "v2": "/sys/fs/cgroup/unified", "v2_controllers": ["hugetlb"],
          "own": {"cpu": "/sys/fs/cgroup/cpu", "memory": "/sys/fs/cgroup/memory",
                  "pids": "/sys/fs/cgroup/pids", "devices": "/sys/fs/cgroup/devices",
                  "freezer": "/sys/fs/cgroup/freezer", "unified": "/sys/fs/cgroup/unified"}}
FACTS = {"cgroup_layout": LAYOUT, "security": {"cap_last_cap": 40, "lsms": [],
                                               "seccomp_actions": None},
         "systemd_cgroup": False}


def _plan(mutate=None, options=None, args=("sh",)):
    spec = build_default_spec(list(args), terminal=False)
    if mutate:
        mutate(spec)
    return build_plan(spec, "/b", "c1", FACTS, options or {})


def test_default_plan_is_json_and_complete():
    plan = _plan()
    assert json.loads(json.dumps(plan)) == plan
    assert plan["namespaces"]["new"] == ["ipc", "uts", "network", "pid", "mount", "cgroup"]
    assert plan["needs_fork"] and plan["userns"] is None
    assert plan["rootfs_path"] == "/b/rootfs"
    assert plan["process"]["args"] == ["sh"] and plan["new_keyring"]
    assert plan["cgroup"]["paths"]["memory"].endswith("/c1")
    assert plan["security"]["no_new_privileges"] is True
    # hybrid host: the cgroup tree is binds of host dirs, so the cgroup ns can come after mounts
    assert plan["rootfs_needs_cgroupns"] is False


def test_no_pid_or_time_namespace_means_one_fork():
    plan = _plan(lambda s: s["linux"]["namespaces"].remove({"type": "pid"}))
    assert plan["needs_fork"] is False


def test_user_namespace_maps_in_plan():
    def mutate(spec):
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
    plan = _plan(mutate)
    assert plan["userns"] == {"uid_map": "0 1000 1\n", "gid_map": "0 1000 1\n",
                              "writer": "root"}
    assert plan["namespaces"]["new"][0] == "user"


@pytest.mark.parametrize("uid_map, gid_map, writer", [
    ("0 1000 1\n", "0 1000 1\n", "self"),         # its own ids only: written directly
    ("0 1000 1\n", "0 0 1\n", "helper"),          # another gid: only newgidmap may
    ("0 1000 1\n1 100000 65536\n", "0 1000 1\n", "helper"),   # subordinate ranges
    ("5 1000 1\n", "5 1000 1\n", "self"),
    ("0 1000 2\n", "0 1000 1\n", "helper"),
])
def test_an_unprivileged_caller_writes_only_its_own_single_map(uid_map, gid_map, writer):
    from capsa.runtime.spec import build_map_writer
    userns = {"uid_map": uid_map, "gid_map": gid_map}
    assert build_map_writer(userns, 1000, 1000) == writer
    assert build_map_writer(userns, 0, 0) == "root"


def test_rootless_maps_deny_setgroups_first_or_go_through_the_helpers():
    from capsa.runtime.apply.namespaces import apply_id_maps
    kernel = FakeKernel()
    apply_id_maps(kernel, 42, {"uid_map": "0 1000 1\n", "gid_map": "0 1000 1\n",
                               "writer": "self"})
    assert [call[0] for call in kernel.calls_of("write_file")] == [
        "/proc/42/setgroups", "/proc/42/uid_map", "/proc/42/gid_map"]
    kernel = FakeKernel()
    apply_id_maps(kernel, 42, {"uid_map": "0 1000 1\n1 100000 65536\n",
                               "gid_map": "0 1000 1\n", "writer": "helper"})
    assert kernel.calls_of("run_helper") == [
        ("/usr/bin/newuidmap", ["newuidmap", "42", "0", "1000", "1", "1", "100000", "65536"]),
        ("/usr/bin/newgidmap", ["newgidmap", "42", "0", "1000", "1"])]
    assert kernel.calls_of("write_file") == []
    kernel.returns["run_helper"] = (1, "newuidmap: uid range [1-65537) -> [100000-165536) "
                                       "not allowed\n")
    with pytest.raises(ConfigError) as info:
        apply_id_maps(kernel, 42, {"uid_map": "0 1000 1\n1 100000 65536\n",
                                   "gid_map": "0 1000 1\n", "writer": "helper"})
    assert info.value.field == "linux.uidMappings" and "not allowed" in info.value.line()


@pytest.mark.parametrize("mutate, options, field", [
    (lambda s: s.update(ociVersion="0.9"), {}, "ociVersion"),
    (lambda s: s["process"].update(terminal=True), {}, "process.terminal"),
    (None, {"console_socket": "/x.sock"}, "process.terminal"),
    (lambda s: s["linux"]["namespaces"].remove({"type": "uts"}), {}, "hostname"),
    (lambda s: s["linux"]["namespaces"].append({"type": "user"}), {}, "linux.uidMappings"),
    (lambda s: s.update(annotations=[]), {}, "annotations"),
    (lambda s: s.update(linux=[]), {}, "linux"),
])
def test_plan_errors_name_the_field(mutate, options, field):
    with pytest.raises(ConfigError) as info:
        _plan(mutate, options)
    assert info.value.field == field


def test_terminal_allowed_for_foreground_run():
    plan = _plan(lambda s: s["process"].update(terminal=True), {"tty_ok": True})
    assert plan["process"]["terminal"] and plan["console_socket"] is None


def test_command_line_options_reach_the_plan():
    plan = _plan(options={"preserve_fds": 2, "no_new_keyring": True, "pidfd_socket": "/p.sock",
                          "no_pivot": True})
    assert plan["preserve_fds"] == 2 and plan["new_keyring"] is False
    assert plan["pidfd_socket"] == "/p.sock" and plan["rootfs"]["no_pivot"] is True


def test_inside_a_user_namespace_devices_are_bound_and_setgroups_follows_the_host():
    spec = build_default_spec(["sh"], terminal=False)
    plain = build_plan(spec, "/b", "c1", FACTS, {})
    inside = build_plan(spec, "/b", "c1", dict(FACTS, in_userns=True, setgroups=False), {})
    devices = [step for step in inside["rootfs"]["steps"] if step["op"] == "device"]
    assert devices and all(step["bind"] for step in devices)
    assert not any(step["bind"] for step in plain["rootfs"]["steps"] if step["op"] == "device")
    assert plain["setgroups"] is True and inside["setgroups"] is False


def test_rootless_cgroup_errors_are_skipped_but_limits_are_never_dropped():
    from capsa.errors import KernelError
    from capsa.runtime.launch import _ignore_cgroup_error

    class Ctx:
        rootless = "true"
    denied = KernelError("mkdir /sys/fs/cgroup/pids/x: Permission denied", errno=13)
    assert _ignore_cgroup_error(Ctx(), denied, {"writes": []}) is True
    with pytest.raises(KernelError) as info:
        _ignore_cgroup_error(Ctx(), denied, {"writes": [["/x", "pids.max", "10"]]})
    assert info.value.field == "linux.resources"
    Ctx.rootless = "false"
    assert _ignore_cgroup_error(Ctx(), denied, {"writes": []}) is False
    Ctx.rootless = "true"
    assert _ignore_cgroup_error(Ctx(), KernelError("busy", errno=16), {"writes": []}) is False


def test_namespaced_sysctls_in_a_namespace_joined_by_path():
    """Rootless podman hands over the network namespace slirp4netns serves: runc's rule lets a
    joined namespace take its sysctls; only the host's own is refused (at create)."""
    from capsa.runtime.spec import build_sysctl
    linux = {"sysctl": {"net.ipv4.ping_group_range": "0 0", "kernel.shmmax": "1"}}
    assert build_sysctl(linux, ["ipc"], ["network"]) == linux["sysctl"]
    with pytest.raises(ConfigError) as info:
        build_sysctl(linux, ["ipc"], [])
    assert info.value.field == "linux.sysctl.net.ipv4.ping_group_range"


def test_the_default_state_root_follows_runc_for_rootless_callers(monkeypatch):
    from capsa.runtime import cli
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.read_default_root() == "/run/user/1000/capsa"
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.setenv("USER", "root")
    assert cli.read_default_root() == "/run/capsa"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.read_default_root() == "/run/capsa"
