"""Fixture, no tests: a temporary directory laid out like cgroupfs (v1, v2 or hybrid).

TmpCgroupKernel is the real Kernel with mkdir/rmdir behaving as cgroupfs does: a new dir comes
with its controller files, rmdir removes them. Used only by tests/unit/test_cgroups*.py.
"""
import os

from capsa.runtime.cgroups.layout import build_layout
from capsa.syscalls.kernel import Kernel

V1_FILES = {
    "memory": {"memory.limit_in_bytes": "9223372036854771712", "memory.memsw.limit_in_bytes":
               "9223372036854771712", "memory.soft_limit_in_bytes": "9223372036854771712",
               "memory.swappiness": "60", "memory.oom_control": "oom_kill_disable 0\noom_kill 0",
               "memory.kmem.limit_in_bytes": "9223372036854771712",
               "memory.kmem.tcp.limit_in_bytes": "9223372036854771712",
               "memory.use_hierarchy": "1", "memory.usage_in_bytes": "4096",
               "memory.max_usage_in_bytes": "8192", "memory.failcnt": "0",
               "memory.stat": "cache 10\nrss 20\ntotal_cache 30"},
    "cpu": {"cpu.shares": "1024", "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1",
            "cpu.cfs_burst_us": "0", "cpu.rt_period_us": "1000000", "cpu.rt_runtime_us": "0",
            "cpu.idle": "0", "cpu.stat": "nr_periods 5\nnr_throttled 2\nthrottled_time 900"},
    "cpuacct": {"cpuacct.usage": "1000", "cpuacct.usage_percpu": "600 400",
                "cpuacct.stat": "user 3\nsystem 1"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "pids": {"pids.max": "max", "pids.current": "1"},
    "blkio": {"blkio.weight": "500", "blkio.leaf_weight": "500", "blkio.weight_device": "",
              "blkio.throttle.read_bps_device": "", "blkio.throttle.write_bps_device": "",
              "blkio.throttle.read_iops_device": "", "blkio.throttle.write_iops_device": "",
              "blkio.throttle.io_service_bytes_recursive": "8:0 Read 512\n8:0 Write 256\nTotal 768"},
    "devices": {"devices.allow": "", "devices.deny": "", "devices.list": "a *:* rwm"},
    "freezer": {"freezer.state": "THAWED"},
    "net_cls": {"net_cls.classid": "0"},
    "net_prio": {"net_prio.ifpriomap": ""},
    "hugetlb": {"hugetlb.2MB.limit_in_bytes": "0", "hugetlb.2MB.usage_in_bytes": "0"},
}
V2_FILES = {
    "": {"cgroup.procs": "", "cgroup.subtree_control": "", "cgroup.freeze": "0",
         "cgroup.events": "populated 0\nfrozen 0", "cgroup.kill": "", "cpu.stat":
         "usage_usec 7\nuser_usec 5\nsystem_usec 2"},
    "memory": {"memory.max": "max", "memory.low": "0", "memory.swap.max": "max",
               "memory.current": "4096", "memory.events": "max 0\noom_kill 3",
               "memory.stat": "file 10"},
    "cpu": {"cpu.weight": "100", "cpu.max": "max 100000", "cpu.max.burst": "0", "cpu.idle": "0"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "pids": {"pids.max": "max", "pids.current": "0"},
    "io": {"io.weight": "default 100", "io.max": "", "io.stat": "8:0 rbytes=5 wbytes=6 rios=1 wios=2"},
    "hugetlb": {"hugetlb.2MB.max": "max", "hugetlb.2MB.current": "0"},
    "rdma": {"rdma.max": ""},
}


class TmpCgroupFs:
    """Mounts (as directories) under `root`; `mountinfo` and `cgroup_text` describe them."""

    def __init__(self, root, mode, v1=("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer",
                                       "blkio", "pids", "net_cls", "net_prio", "hugetlb"),
                 v2=("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma")):
        self.root = str(root)
        self.mode = mode
        self.v1 = list(v1) if mode in ("v1", "hybrid") else []
        self.v2 = list(v2) if mode in ("v2", "hybrid") else []
        if mode == "hybrid":
            self.v2 = [name for name in self.v2 if name not in self.v1]
        lines = []
        for index, name in enumerate(self.v1):
            mount = os.path.join(self.root, name)
            self.populate(mount, name)
            lines.append("%d 1 0:%d / %s rw,relatime - cgroup cgroup rw,%s"
                         % (30 + index, 30 + index, mount, name))
        if mode != "v1":
            mount = os.path.join(self.root, "unified")
            self.populate(mount, "unified")
            lines.append("99 1 0:99 / %s rw,relatime - cgroup2 cgroup2 rw" % mount)
        lines.append("100 1 0:5 / /proc rw - proc proc rw")
        self.mountinfo = "\n".join(lines) + "\n"
        self.cgroup_text = "".join("%d:%s:/\n" % (i + 1, name) for i, name in enumerate(self.v1))
        self.cgroup_text += "0::/\n"

    def layout(self, systemd_running=False):
        return build_layout(self.mountinfo, self.cgroup_text, self.v2, systemd_running)

    def controller_of(self, path):
        rel = os.path.relpath(path, self.root)
        return rel.split(os.sep)[0]

    def populate(self, path, controller):
        os.makedirs(path, exist_ok=True)
        if controller == "unified":
            files = dict(V2_FILES[""])
            for name in self.v2:
                files.update(V2_FILES.get(name, {}))
        else:
            files = dict(V1_FILES.get(controller, {}))
            files.update({"cgroup.procs": "", "tasks": "", "cgroup.event_control": ""})
        for name, value in files.items():
            with open(os.path.join(path, name), "w") as handle:
                handle.write(value)

    def read(self, *parts):
        with open(os.path.join(self.root, *parts)) as handle:
            return handle.read()


class TmpCgroupKernel(Kernel):
    """The real Kernel over a TmpCgroupFs: mkdir brings the controller files, as cgroupfs does."""

    def __init__(self, fs):
        self.fs = fs
        self.log = []

    def mkdir(self, path, mode=0o755):
        Kernel.mkdir(self, path, mode)
        self.fs.populate(path, self.fs.controller_of(path))
        self.log.append(("mkdir", path))

    def rmdir(self, path):
        if not os.path.isdir(path):
            return Kernel.rmdir(self, path)  # ENOENT as the kernel says it
        for entry in os.scandir(path):
            if entry.is_file():
                os.unlink(entry.path)
        Kernel.rmdir(self, path)
        self.log.append(("rmdir", path))

    def write_file(self, path, data, dirfd=None):
        # cgroupfs files take one value per write; the fixture keeps the last and logs them all.
        if os.path.isfile(path):
            os.truncate(path, 0)
        Kernel.write_file(self, path, data, dirfd)
        self.log.append(("write", path, data))

    # A tmpdir is no cgroup: the device filter calls are kept in the log, with /dev/null as
    # the program's fd so the manager's close() calls stay real.
    attached = ()

    def bpf_load_device_program(self, insns):
        self.log.append(("bpf_load", len(insns)))
        return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)

    def bpf_query_device_programs(self, cgroup_fd):
        return list(self.attached)

    def bpf_prog_fd_by_id(self, prog_id):
        self.log.append(("bpf_fd_by_id", prog_id))
        return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)

    def bpf_attach_device_program(self, cgroup_fd, prog_fd):
        self.log.append(("bpf_attach",))

    def bpf_detach_device_program(self, cgroup_fd, prog_fd):
        self.log.append(("bpf_detach",))
