"""cgroup limits on this host's real kernel (root): each v1 limit takes effect, v2 device filter,
hugetlb on the unified hierarchy, freeze/thaw, kill, update, and destroy leaving nothing.

Each test makes its own cgroups named capsa-test-* and puts a child it forked there.
"""
import errno
import os
import signal
import subprocess
import time

import pytest

from capsa.errors import CapsaError
from capsa.runtime.cgroups import manager
from capsa.runtime.cgroups.layout import read_layout
from capsa.runtime.cgroups.plan import build_cgroup_plan
from capsa.runtime.cgroups.stats import read_oom_count
from capsa.syscalls.kernel import Kernel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups")

KERNEL = Kernel()


def _needs(layout, *controllers):
    for controller in controllers:
        if controller not in layout["v1"] and controller not in layout["v2_controllers"]:
            pytest.skip("host has no %s cgroup controller mounted" % controller)


@pytest.fixture
def cgroup(request):
    """Make plans with build(resources, layout=None); every cgroup is destroyed at the end and
    checked to be gone from every hierarchy."""
    made = []
    name = "/capsa-test-%d-%s" % (os.getpid(), request.node.name[5:30].replace("[", "-"))

    def build(resources, layout=None, create=True):
        layout = layout or read_layout()
        plan = build_cgroup_plan({"cgroupsPath": name + "/c%d" % len(made),
                                  "resources": resources}, "c", layout)
        if create:
            manager.apply_cgroup_create(KERNEL, plan)
            made.append(plan)
        return plan

    yield build
    for plan in reversed(made):
        for pid in manager.read_pids(plan):
            os.kill(pid, signal.SIGKILL)
        manager.apply_cgroup_destroy(KERNEL, plan)
    for plan in made:
        for path in plan["paths"].values():
            assert not os.path.exists(path), path
            assert not os.path.exists(os.path.dirname(path)), os.path.dirname(path)


class Child:
    """A forked child that waits until it has joined the cgroup, then runs `body` and exits
    with its return value."""

    def __init__(self, body):
        read_fd, self.go_fd = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 100
            try:
                os.close(self.go_fd)
                os.read(read_fd, 1)
                code = body() or 0
            except BaseException:
                code = 101
            finally:
                os._exit(code)
        os.close(read_fd)

    def start(self, plan):
        manager.apply_cgroup_join(KERNEL, plan, self.pid)
        os.write(self.go_fd, b"x")
        os.close(self.go_fd)
        return self

    def wait(self, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return status
            time.sleep(0.01)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError("child did not finish in %ds" % timeout)


def test_memory_limit_oom_kills_the_child(cgroup):
    _needs(read_layout(), "memory")
    plan = cgroup({"memory": {"limit": 32 << 20, "swap": 32 << 20}})
    assert open(plan["paths"]["memory"] + "/memory.limit_in_bytes").read().strip() == str(32 << 20)

    def hog():
        chunks = []
        for _ in range(64):
            chunks.append(bytearray(4 << 20))   # 256 MiB in all, touched page by page
        return 0
    status = Child(hog).start(plan).wait()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert read_oom_count(plan) >= 1
    memory = manager.read_stats(plan)["memory"]
    assert memory["usage"]["max"] > 16 << 20 and memory["usage"]["limit"] == 32 << 20


def test_pids_limit_stops_a_fork_bomb(cgroup):
    _needs(read_layout(), "pids")
    plan = cgroup({"pids": {"limit": 8}})

    def bomb():
        forked = 0
        for _ in range(50):
            try:
                pid = os.fork()
            except OSError as exc:
                return 10 + forked if exc.errno == errno.EAGAIN else 3
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            forked += 1
        return 2
    status = Child(bomb).start(plan).wait()
    # the child itself counts: 7 more forks fit under a limit of 8, the 8th fails with EAGAIN
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 10 + 7
    assert manager.read_stats(plan)["pids"]["limit"] == 8


def test_cpu_quota_throttles(cgroup):
    _needs(read_layout(), "cpu")
    plan = cgroup({"cpu": {"quota": 10000, "period": 100000}})

    def spin():
        end = time.time() + 0.6
        while time.time() < end:
            pass
    status = Child(spin).start(plan).wait()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    throttling = manager.read_stats(plan)["cpu"]["throttling"]
    assert throttling["throttledPeriods"] >= 3 and throttling["throttledTime"] > 0


def _open_errno(path):
    def probe():
        try:
            os.close(os.open(path, os.O_RDONLY))
            return 0
        except OSError as exc:
            return 50 if exc.errno == errno.EPERM else 60
    return probe


def test_v1_device_deny_is_refused(cgroup):
    _needs(read_layout(), "devices")
    plan = cgroup({"devices": [{"allow": False, "access": "rwm"}]})
    assert plan["devices"]["kind"] == "v1"
    listed = open(plan["paths"]["devices"] + "/devices.list").read()
    assert "c 1:3 rwm" in listed and "a *:* rwm" not in listed
    assert os.WEXITSTATUS(Child(_open_errno("/dev/kmsg")).start(plan).wait()) == 50
    assert os.WEXITSTATUS(Child(_open_errno("/dev/null")).start(plan).wait()) == 0
    # a live update adds the exception without resetting the list
    manager.apply_update(KERNEL, plan, {"devices": [{"allow": False, "access": "rwm"},
                                                    {"allow": True, "type": "c", "major": 1,
                                                     "minor": 11, "access": "r"}]})
    assert "c 1:11 r" in open(plan["paths"]["devices"] + "/devices.list").read()
    assert os.WEXITSTATUS(Child(_open_errno("/dev/kmsg")).start(plan).wait()) == 0


def test_v2_ebpf_device_filter(cgroup):
    layout = read_layout()
    if not layout["v2"]:
        pytest.skip("host has no cgroup2 mount")
    # Leave the v1 devices controller out so the plan uses the eBPF filter on cgroup2; the
    # kernel checks cgroup2 device programs for every task, whatever v1 hierarchies it is in.
    layout = dict(layout, v1={k: v for k, v in layout["v1"].items() if k != "devices"})
    plan = cgroup({"devices": [{"allow": False, "access": "rwm"},
                               {"allow": True, "type": "c", "major": 1, "minor": 11,
                                "access": "w"}]}, layout)
    assert plan["devices"]["kind"] == "bpf"
    fd = os.open(plan["paths"]["unified"], os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(KERNEL.bpf_query_device_programs(fd)) == 1
    finally:
        os.close(fd)
    assert os.WEXITSTATUS(Child(_open_errno("/dev/kmsg")).start(plan).wait()) == 50   # read
    assert os.WEXITSTATUS(Child(_open_errno("/dev/null")).start(plan).wait()) == 0
    # an update swaps the program: one filter attached afterwards, and the new rules hold
    manager.apply_update(KERNEL, plan, {"devices": [{"allow": True, "type": "c", "major": 1,
                                                     "minor": 11, "access": "r"}]})
    fd = os.open(plan["paths"]["unified"], os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(KERNEL.bpf_query_device_programs(fd)) == 1
    finally:
        os.close(fd)
    assert os.WEXITSTATUS(Child(_open_errno("/dev/kmsg")).start(plan).wait()) == 0


def _block_device():
    for name in sorted(os.listdir("/sys/block")):
        try:
            return open("/sys/block/%s/dev" % name).read().strip()
        except OSError:
            continue
    pytest.skip("host has no block device in /sys/block")


def test_blkio_throttle_files_name_the_device(cgroup):
    _needs(read_layout(), "blkio")
    number = _block_device()
    major, minor = (int(x) for x in number.split(":"))
    plan = cgroup({"blockIO": {
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}],
        "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 100}]}})
    path = plan["paths"]["blkio"]
    assert open(path + "/blkio.throttle.read_bps_device").read().split() == [number, "1048576"]
    assert open(path + "/blkio.throttle.write_iops_device").read().split() == [number, "100"]


def test_net_cls_classid(tmp_path, cgroup):
    layout = read_layout()
    mounted = None
    if "net_cls" not in layout["v1"]:
        mounted = str(tmp_path / "net_cls")
        os.mkdir(mounted)
        if subprocess.run(["mount", "-t", "cgroup", "-o", "net_cls", "capsa-test", mounted],
                          capture_output=True).returncode != 0:
            pytest.skip("kernel has no net_cls controller to mount")
        layout = read_layout()
    try:
        plan = cgroup({"network": {"classID": 0x100001}}, layout)
        path = plan["paths"]["net_cls"]
        assert open(path + "/net_cls.classid").read().strip() == str(0x100001)
        child = Child(lambda: 0)
        child.start(plan)
        child.wait()
        plan2 = cgroup({"network": {"classID": 0x20002}}, layout)
        sleeper = Child(lambda: time.sleep(0.5))
        sleeper.start(plan2)
        assert "net_cls:" + path[len(layout["v1"]["net_cls"]):-1] + "1" in \
            open("/proc/%d/cgroup" % sleeper.pid).read()
        sleeper.wait()
        manager.apply_cgroup_destroy(KERNEL, plan2)
        manager.apply_cgroup_destroy(KERNEL, plan)
    finally:
        if mounted:
            subprocess.run(["umount", mounted], check=True)


def test_hugetlb_on_the_unified_hierarchy(cgroup):
    layout = read_layout()
    if "hugetlb" in layout["v1"] or "hugetlb" not in layout["v2_controllers"]:
        pytest.skip("hugetlb is not on this host's unified hierarchy")
    plan = cgroup({"hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}]})
    path = plan["paths"]["unified"]
    assert "hugetlb" in open(os.path.dirname(path) + "/cgroup.subtree_control").read()
    assert open(path + "/hugetlb.2MB.max").read().strip() == str(4 << 20)
    assert manager.read_stats(plan)["hugetlb"]["2MB"]["max"] == 4 << 20


def _cpu_ticks(pid):
    stat = open("/proc/%d/stat" % pid).read()
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[11]) + int(fields[12]), fields[0]


def test_freeze_and_thaw(cgroup):
    plan = cgroup({})

    def spin():
        end = time.time() + 5
        while time.time() < end:
            pass
    child = Child(spin).start(plan)
    time.sleep(0.1)
    manager.apply_freeze(KERNEL, plan, True)
    assert manager.read_frozen(plan) == "frozen"
    before, _ = _cpu_ticks(child.pid)
    time.sleep(0.3)
    assert _cpu_ticks(child.pid)[0] == before
    manager.apply_freeze(KERNEL, plan, False)
    assert manager.read_frozen(plan) == "thawed"
    time.sleep(0.3)
    assert _cpu_ticks(child.pid)[0] > before
    manager.apply_kill_all(KERNEL, plan, signal.SIGKILL)
    assert os.WTERMSIG(child.wait()) == signal.SIGKILL


def test_kill_all_reaches_every_process_and_destroy_waits_for_them(cgroup):
    plan = cgroup({})

    def family():
        for _ in range(3):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
        time.sleep(30)
    child = Child(family).start(plan)
    deadline = time.time() + 5
    while len(manager.read_pids(plan)) < 4 and time.time() < deadline:
        time.sleep(0.01)
    assert len(manager.read_pids(plan)) == 4
    manager.apply_kill_all(KERNEL, plan, signal.SIGKILL)
    assert os.WTERMSIG(child.wait()) == signal.SIGKILL
    # the grandchildren are reparented and reaped by init: destroy retries until they leave
    manager.apply_cgroup_destroy(KERNEL, plan)
    for path in plan["paths"].values():
        assert not os.path.exists(path)


def test_update_changes_live_limits(cgroup):
    _needs(read_layout(), "memory", "pids")
    plan = cgroup({"memory": {"limit": 64 << 20, "swap": 64 << 20}, "pids": {"limit": 10}})
    new = manager.apply_update(KERNEL, plan, {"memory": {"limit": 256 << 20, "swap": 512 << 20},
                                              "pids": {"limit": 20}})
    memory = plan["paths"]["memory"]
    assert open(memory + "/memory.limit_in_bytes").read().strip() == str(256 << 20)
    assert open(memory + "/memory.memsw.limit_in_bytes").read().strip() == str(512 << 20)
    assert open(plan["paths"]["pids"] + "/pids.max").read().strip() == "20"
    assert new["resources"]["memory"] == {"limit": 256 << 20, "swap": 512 << 20}
    # and back down: the memsw/limit order must flip for the kernel to accept it
    manager.apply_update(KERNEL, new, {"memory": {"limit": 32 << 20, "swap": 32 << 20}})
    assert open(memory + "/memory.memsw.limit_in_bytes").read().strip() == str(32 << 20)


def test_a_refused_limit_leaves_no_cgroup_behind(cgroup):
    layout = read_layout()
    plan = cgroup({"memory": {"kernel": 64 << 20}, "pids": {"limit": 5}}, create=False)
    try:
        manager.apply_cgroup_create(KERNEL, plan)
    except CapsaError as err:
        assert err.field == "linux.resources.memory.kernel"
    else:
        manager.apply_cgroup_destroy(KERNEL, plan)
        pytest.skip("this kernel still honours kernel memory limits")
    for controller, mountpoint in list(layout["v1"].items()) + [("unified", layout["v2"])]:
        if mountpoint:
            assert not [name for name in os.listdir(mountpoint)
                        if name.startswith("capsa-test-%d-" % os.getpid())]


def _unified_only(layout):
    """This host's layout seen as if only cgroup2 were there (its controllers are few, but
    cgroup.freeze, cgroup.kill and device programs need none)."""
    if not layout["v2"]:
        pytest.skip("host has no cgroup2 mount")
    return dict(layout, mode="v2", v1={})


def test_cgroup2_freeze_and_kill(cgroup):
    plan = cgroup({}, _unified_only(read_layout()))
    assert plan["freezer"] == ["v2", plan["paths"]["unified"]]
    if not os.path.exists(plan["paths"]["unified"] + "/cgroup.kill"):
        pytest.skip("kernel has no cgroup.kill (Linux < 5.14)")

    def spin():
        end = time.time() + 10
        while time.time() < end:
            pass
    child = Child(spin).start(plan)
    manager.apply_freeze(KERNEL, plan, True)
    assert manager.read_frozen(plan) == "frozen"
    before, _ = _cpu_ticks(child.pid)
    time.sleep(0.2)
    assert _cpu_ticks(child.pid)[0] == before
    manager.apply_freeze(KERNEL, plan, False)
    assert manager.read_frozen(plan) == "thawed"
    assert manager.read_pids(plan) == [child.pid]
    manager.apply_kill_all(KERNEL, plan, signal.SIGKILL)   # through cgroup.kill alone
    assert os.WTERMSIG(child.wait()) == signal.SIGKILL


def test_cpuset_pins_the_child(cgroup):
    _needs(read_layout(), "cpuset")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("host has a single CPU")
    cpu = sorted(os.sched_getaffinity(0))[-1]
    plan = cgroup({"cpu": {"cpus": str(cpu), "shares": 256}})
    status = Child(lambda: 40 + len(os.sched_getaffinity(0)) + 10 * (
        os.sched_getaffinity(0) == {cpu})).start(plan).wait()
    assert os.WEXITSTATUS(status) == 51
    assert open(plan["paths"]["cpu"] + "/cpu.shares").read().strip() == "256"


def test_a_program_the_verifier_refuses_is_explained():
    from capsa.errors import KernelError
    from capsa.runtime.cgroups.devices import ALU64_MOV_K, build_bpf_bytes
    with pytest.raises(KernelError) as info:
        KERNEL.bpf_load_device_program(build_bpf_bytes([(ALU64_MOV_K, 0, 0, 0, 1)]))  # no exit
    assert "BPF_PROG_LOAD" in info.value.message and info.value.errno == errno.EINVAL
    assert "jump" in info.value.message or "exit" in info.value.message or \
        "last insn" in info.value.message


def test_every_device_program_the_plan_builds_loads(cgroup):
    from capsa.runtime.cgroups.devices import build_bpf_bytes
    layout = _unified_only(read_layout())
    for devices in ([], [{"allow": True}], [{"allow": False, "type": "b", "major": 8}],
                    [{"allow": True, "type": "c", "major": 1, "access": "m"}] * 40):
        plan = cgroup({"devices": devices}, layout, create=False)
        fd = KERNEL.bpf_load_device_program(build_bpf_bytes(
            [tuple(insn) for insn in plan["devices"]["program"]]))
        os.close(fd)


def test_blkio_weight_lands_in_bfq_when_cfq_is_gone(cgroup):
    _needs(read_layout(), "blkio")
    plan = cgroup({"blockIO": {"weight": 300}})
    path = plan["paths"]["blkio"]
    if os.path.exists(path + "/blkio.weight"):
        assert open(path + "/blkio.weight").read().strip() == "300"
    elif os.path.exists(path + "/blkio.bfq.weight"):
        assert open(path + "/blkio.bfq.weight").read().split()[-1] == "300"
    else:
        pytest.skip("kernel has neither CFQ nor BFQ blkio weights")
