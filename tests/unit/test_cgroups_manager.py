"""The manager against a temporary cgroupfs (real Kernel, files only) and against FakeKernel."""
import errno
import json
import os

import pytest

from capsa.errors import KernelError
from capsa.runtime.cgroups import manager
from capsa.runtime.cgroups.plan import build_cgroup_plan
from capsa.syscalls.fake import FakeKernel
from tests.unit.test_cgroups_fixture import V1_FILES, TmpCgroupFs, TmpCgroupKernel

RESOURCES = {"memory": {"limit": 64 << 20, "swap": 128 << 20}, "pids": {"limit": 20},
             "cpu": {"shares": 512, "cpus": "0"}}


def make(tmp_path, mode, resources=RESOURCES, path="/pod/ctr", **kw):
    fs = TmpCgroupFs(tmp_path, mode, **kw)
    plan = build_cgroup_plan({"cgroupsPath": path, "resources": resources}, "c1", fs.layout())
    return fs, TmpCgroupKernel(fs), plan


def test_create_v1_makes_dirs_fills_cpuset_and_writes(tmp_path):
    fs, kernel, plan = make(tmp_path, "v1")
    with open(os.path.join(fs.root, "cpuset", "cpuset.cpus"), "w") as handle:
        handle.write("0-1")
    with open(os.path.join(fs.root, "cpuset", "cpuset.mems"), "w") as handle:
        handle.write("0")
    manager.apply_cgroup_create(kernel, plan)
    assert fs.root + "/memory/pod" in plan["created"] and fs.root + "/memory/pod/ctr" in plan["created"]
    assert fs.read("memory/pod/ctr/memory.limit_in_bytes") == str(64 << 20)
    assert fs.read("memory/pod/ctr/memory.memsw.limit_in_bytes") == str(128 << 20)
    assert fs.read("pids/pod/ctr/pids.max") == "20"
    assert fs.read("cpu/pod/ctr/cpu.shares") == "512"
    assert fs.read("cpuset/pod/cpuset.cpus") == "0-1"        # copied from the parent
    assert fs.read("cpuset/pod/ctr/cpuset.cpus") == "0"      # then the limit
    assert fs.read("cpuset/pod/ctr/cpuset.mems") == "0"
    assert fs.read("devices/pod/ctr/devices.allow") == "c 136:* rwm"   # the last allow line
    devices = [e[2] for e in kernel.log if e[0] == "write" and "devices." in e[1]]
    assert devices[0] == "a" and "c 1:3 rwm" in devices
    assert json.loads(json.dumps(plan)) == plan


def test_create_v2_enables_controllers_in_every_ancestor_and_attaches_bpf(tmp_path):
    fs = TmpCgroupFs(tmp_path, "v2")
    plan = build_cgroup_plan({"cgroupsPath": "/pod/ctr", "resources": RESOURCES}, "c1",
                             fs.layout())
    kernel = TmpCgroupKernel(fs)
    kernel.attached = [5]
    manager.apply_cgroup_create(kernel, plan)
    assert fs.read("unified/cgroup.subtree_control").startswith("+cpuset +cpu")
    assert fs.read("unified/pod/cgroup.subtree_control").startswith("+cpuset +cpu")
    assert fs.read("unified/pod/ctr/memory.max") == str(64 << 20)
    assert fs.read("unified/pod/ctr/memory.swap.max") == str(64 << 20)
    assert fs.read("unified/pod/ctr/cpu.weight") == str(1 + (510 * 9999) // 262142)
    bpf = [entry for entry in kernel.log if entry[0].startswith("bpf")]
    assert bpf == [("bpf_load", 8 * len(plan["devices"]["program"])), ("bpf_attach",),
                   ("bpf_fd_by_id", 5), ("bpf_detach",)]


def test_fallback_file_and_order_sensitive_retry(tmp_path, monkeypatch):
    # Only BFQ's blkio.bfq.weight, as on this host's kernel (no CFQ blkio.weight).
    monkeypatch.setitem(V1_FILES, "blkio", {"blkio.bfq.weight": "100"})
    fs, kernel, plan = make(tmp_path, "v1", {"blockIO": {"weight": 300},
                                             "memory": {"limit": 1 << 20, "swap": 2 << 20}})
    real_write = kernel.write_file
    state = {"memsw": False}

    def write(path, data, dirfd=None):
        # v1 refuses memory.limit above memsw.limit: EINVAL until memsw is raised first.
        if path.endswith("memory.limit_in_bytes") and not state["memsw"]:
            raise KernelError("write", errno=errno.EINVAL)
        if path.endswith("memsw.limit_in_bytes"):
            state["memsw"] = True
        real_write(path, data, dirfd)
    kernel.write_file = write
    manager.apply_cgroup_create(kernel, plan)
    assert fs.read("blkio/pod/ctr/blkio.bfq.weight") == "300"
    assert fs.read("memory/pod/ctr/memory.limit_in_bytes") == str(1 << 20)


def test_failure_removes_what_was_made_and_names_the_field(tmp_path):
    fs, kernel, plan = make(tmp_path, "v1", {"hugepageLimits": [{"pageSize": "1GB", "limit": 0}]})
    with pytest.raises(KernelError) as info:
        manager.apply_cgroup_create(kernel, plan)
    assert info.value.field == "linux.resources.hugepageLimits[0].limit"
    assert "hugetlb.1GB.limit_in_bytes" in info.value.message
    for controller in fs.v1:
        assert not os.path.exists(os.path.join(fs.root, controller, "pod"))


def test_kernel_memory_ignored_by_the_kernel_is_refused(tmp_path):
    fs, kernel, plan = make(tmp_path, "v1", {"memory": {"kernel": 1 << 20}})
    real_write = kernel.write_file
    kernel.write_file = lambda path, data, dirfd=None: None if "kmem" in path else \
        real_write(path, data, dirfd)
    with pytest.raises(KernelError) as info:
        manager.apply_cgroup_create(kernel, plan)
    assert info.value.field == "linux.resources.memory.kernel"
    assert not os.path.exists(os.path.join(fs.root, "memory", "pod"))


def test_existing_dirs_are_joined_but_not_removed(tmp_path):
    fs, kernel, plan = make(tmp_path, "v1", {}, v1=("memory", "pids"))
    fs.populate(os.path.join(fs.root, "memory", "pod", "ctr"), "memory")
    manager.apply_cgroup_create(kernel, plan)
    assert plan["existed"] == [fs.root + "/memory/pod/ctr"]
    manager.apply_cgroup_join(kernel, plan, 4242)
    assert fs.read("pids/pod/ctr/cgroup.procs") == "4242"
    manager.apply_cgroup_destroy(kernel, plan)
    assert os.path.isdir(os.path.join(fs.root, "memory", "pod", "ctr"))
    assert not os.path.exists(os.path.join(fs.root, "pids", "pod"))


def test_destroy_retries_while_busy_and_removes_nested_cgroups(tmp_path):
    fs, kernel, plan = make(tmp_path, "v2", {})
    manager.apply_cgroup_create(kernel, plan)
    fs.populate(os.path.join(fs.root, "unified", "pod", "ctr", "nested"), "unified")
    real_rmdir = kernel.rmdir
    busy = {"left": 3}

    def rmdir(path):
        if path.endswith("/ctr") and busy["left"]:
            busy["left"] -= 1
            raise KernelError("rmdir", errno=errno.EBUSY)
        real_rmdir(path)
    kernel.rmdir = rmdir
    manager.apply_cgroup_destroy(kernel, plan)
    assert busy["left"] == 0
    assert not os.path.exists(os.path.join(fs.root, "unified", "pod"))
    assert os.path.isdir(os.path.join(fs.root, "unified"))


def test_destroy_gives_up_with_a_clear_error(tmp_path):
    kernel = FakeKernel()
    kernel.failures["rmdir"] = errno.EBUSY
    plan = {"paths": {"pids": "/nonexistent/capsa/pids/x"}, "created": []}
    manager._DESTROY_TRIES, saved = 2, manager._DESTROY_TRIES
    try:
        with pytest.raises(KernelError) as info:
            manager.apply_cgroup_destroy(kernel, plan)
    finally:
        manager._DESTROY_TRIES = saved
    assert "cannot remove cgroup" in info.value.message and info.value.errno == errno.EBUSY


def test_freeze_v1_and_v2(tmp_path):
    fs, kernel, plan = make(tmp_path, "v1", {})
    manager.apply_cgroup_create(kernel, plan)
    manager.apply_freeze(kernel, plan, True)
    assert manager.read_frozen(plan) == "frozen"
    manager.apply_freeze(kernel, plan, False)
    assert manager.read_frozen(plan) == "thawed"
    fs2, kernel2, plan2 = make(tmp_path / "two", "v2", {})
    manager.apply_cgroup_create(kernel2, plan2)
    real_write = kernel2.write_file

    def write(path, data, dirfd=None):
        real_write(path, data, dirfd)
        if path.endswith("cgroup.freeze"):   # the kernel reports the outcome in cgroup.events
            real_write(path[:-len("cgroup.freeze")] + "cgroup.events", "frozen " + data)
    kernel2.write_file = write
    manager.apply_freeze(kernel2, plan2, True)
    assert manager.read_frozen(plan2) == "frozen"
    assert fs2.read("unified/pod/ctr/cgroup.freeze") == "1"
    manager.apply_freeze(kernel2, plan2, False)
    assert manager.read_frozen(plan2) == "thawed"


def test_pids_kill_all_and_stats(tmp_path):
    fs, kernel, plan = make(tmp_path, "v1", {})
    manager.apply_cgroup_create(kernel, plan)
    fs.populate(os.path.join(fs.root, "pids", "pod", "ctr", "sub"), "pids")
    with open(os.path.join(fs.root, "pids", "pod", "ctr", "cgroup.procs"), "w") as handle:
        handle.write("30\n10\n")
    with open(os.path.join(fs.root, "pids", "pod", "ctr", "sub", "cgroup.procs"), "w") as handle:
        handle.write("20\n")
    assert manager.read_pids(plan) == [10, 20, 30]
    signals = []
    kernel.kill = lambda pid, sig: signals.append((pid, sig))
    manager.apply_kill_all(kernel, plan, 15)
    assert signals == [(10, 15), (20, 15), (30, 15)]
    assert manager.read_frozen(plan) == "thawed"
    stats = manager.read_stats(plan)
    assert stats["cpu"]["usage"] == {"total": 1000, "percpu": [600, 400], "kernel": 10000000,
                                     "user": 30000000}
    assert stats["cpu"]["throttling"] == {"periods": 5, "throttledPeriods": 2, "throttledTime": 900}
    assert stats["memory"]["usage"]["usage"] == 4096 and stats["memory"]["cache"] == 30
    assert stats["pids"] == {"current": 1, "limit": 0}
    assert stats["blkio"]["ioServiceBytesRecursive"][0] == {"major": 8, "minor": 0, "op": "Read",
                                                           "value": 512}
    assert stats["hugetlb"]["2MB"]["usage"] == 0


def test_kill_all_v2_uses_cgroup_kill(tmp_path):
    fs, kernel, plan = make(tmp_path, "v2", {})
    manager.apply_cgroup_create(kernel, plan)
    kernel.kill = lambda pid, sig: pytest.fail("cgroup.kill should do it")
    manager.apply_kill_all(kernel, plan, 9)
    assert fs.read("unified/pod/ctr/cgroup.kill") == "1"
    stats = manager.read_stats(plan)
    assert stats["cpu"]["usage"]["total"] == 7000
    assert stats["blkio"]["ioServicedRecursive"] == [
        {"major": 8, "minor": 0, "op": "Read", "value": 1},
        {"major": 8, "minor": 0, "op": "Write", "value": 2}]
    from capsa.runtime.cgroups.stats import read_oom_count
    assert read_oom_count(plan) == 3


def test_update_merges_and_writes_only_what_changed(tmp_path):
    fs, kernel, plan = make(tmp_path, "v2")
    manager.apply_cgroup_create(kernel, plan)
    before = len(kernel.log)
    new = manager.apply_update(kernel, plan, {"memory": {"limit": 256 << 20, "swap": 512 << 20},
                                              "cpu": {"quota": 50000, "period": 100000}})
    written = [entry[1].rsplit("/", 1)[1] for entry in kernel.log[before:]]
    assert written == ["memory.max", "memory.swap.max", "cpu.weight", "cpu.max", "cpuset.cpus"]
    assert fs.read("unified/pod/ctr/memory.swap.max") == str(256 << 20)
    assert fs.read("unified/pod/ctr/cpu.max") == "50000 100000"
    assert new["resources"]["cpu"] == {"shares": 512, "cpus": "0", "quota": 50000, "period": 100000}
    assert new["resources"]["pids"] == {"limit": 20}
    assert plan["resources"]["memory"]["limit"] == 64 << 20    # the old plan is unchanged


def test_fake_kernel_records_the_create_sequence():
    kernel = FakeKernel()
    layout = {"mode": "v1", "v1": {"pids": "/cg/pids"}, "v2": None, "v2_controllers": [],
              "own": {}, "systemd_running": False}
    plan = build_cgroup_plan({"cgroupsPath": "/x", "resources": {"pids": {"limit": 3}}}, "c1",
                             layout)
    manager.apply_cgroup_create(kernel, plan)
    manager.apply_cgroup_join(kernel, plan, 99)
    assert kernel.calls == [("mkdir", "/cg/pids/x", 0o755), ("write_file", "/cg/pids/x/pids.max", "3"),
                            ("write_file", "/cg/pids/x/cgroup.procs", "99")]


def test_enable_refused_by_a_busy_parent_is_explained_and_undone(tmp_path):
    fs, kernel, plan = make(tmp_path, "v2", {"pids": {"limit": 3}})
    real_write = kernel.write_file

    def write(path, data, dirfd=None):
        if path.endswith("/pod/cgroup.subtree_control"):
            raise KernelError("write", errno=errno.EBUSY)
        real_write(path, data, dirfd)
    kernel.write_file = write
    with pytest.raises(KernelError) as info:
        manager.apply_cgroup_create(kernel, plan)
    assert info.value.field == "linux.cgroupsPath" and "no processes" in info.value.hint
    assert not os.path.exists(os.path.join(fs.root, "unified", "pod"))


def test_device_update_keeps_the_spec_device_nodes_allowed(tmp_path):
    fs = TmpCgroupFs(tmp_path, "v1", v1=("devices",))
    plan = build_cgroup_plan({"cgroupsPath": "/x", "devices": [
        {"type": "c", "path": "/dev/fuse", "major": 10, "minor": 229}]}, "c1", fs.layout())
    kernel = TmpCgroupKernel(fs)
    manager.apply_cgroup_create(kernel, plan)
    new = manager.apply_update(kernel, plan, {"devices": [{"allow": False, "access": "rwm"},
                                                          {"allow": True, "type": "c",
                                                           "major": 1, "minor": 11,
                                                           "access": "r"}]})
    assert new["device_rules"][:3] == [[False, "a", -1, -1, "rwm"], [True, "c", 1, 11, "r"],
                                       [True, "c", 10, 229, "rwm"]]
    # both lists are "deny all, allow these": only the new exception is written, no reset
    writes = [entry[1:] for entry in kernel.log if entry[0] == "write"]
    assert writes[-1:] == [(fs.root + "/devices/x/devices.allow", "c 1:11 r")]


def test_failed_update_puts_the_old_limits_back(tmp_path):
    fs, kernel, plan = make(tmp_path, "v1", {"pids": {"limit": 20}, "cpu": {"shares": 512}})
    manager.apply_cgroup_create(kernel, plan)
    real_write = kernel.write_file

    def write(path, data, dirfd=None):
        if path.endswith("cpu.shares") and data == "4":
            raise KernelError("write", errno=errno.EIO)
        real_write(path, data, dirfd)
    kernel.write_file = write
    with pytest.raises(KernelError) as info:
        manager.apply_update(kernel, plan, {"pids": {"limit": 7}, "cpu": {"shares": 4}})
    assert info.value.field == "linux.resources.cpu.shares"
    assert fs.read("pids/pod/ctr/pids.max") == "20"
    assert fs.read("cpu/pod/ctr/cpu.shares") == "512"
