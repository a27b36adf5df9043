"""The pure plan: cgroupsPath rules, and linux.resources → file writes for v1, v2 and hybrid."""
import json

import pytest

from capsa.errors import ConfigError
from capsa.runtime.cgroups.plan import (build_cgroup_plan, build_clean_path, build_systemd_path,
                                        v2_io_weight_from_blkio, v2_swap_from_v1,
                                        v2_weight_from_shares)
from tests.unit.test_cgroups_fixture import TmpCgroupFs


def files(plan):
    return [(w[1], w[2]) for w in plan["writes"]]


def test_absolute_relative_and_default_paths(tmp_path):
    fs = TmpCgroupFs(tmp_path, "hybrid", v1=("memory", "pids"), v2=("hugetlb",))
    layout = fs.layout()
    layout["own"]["memory"] = fs.root + "/memory/runtime"
    plan = build_cgroup_plan({"cgroupsPath": "/libpod_parent/ctr"}, "c1", layout)
    assert plan["paths"] == {"memory": fs.root + "/memory/libpod_parent/ctr",
                             "pids": fs.root + "/pids/libpod_parent/ctr",
                             "unified": fs.root + "/unified/libpod_parent/ctr"}
    plan = build_cgroup_plan({"cgroupsPath": "rel/ctr"}, "c1", layout)
    assert plan["paths"]["memory"] == fs.root + "/memory/runtime/rel/ctr"
    plan = build_cgroup_plan({}, "c1", layout)
    assert plan["paths"]["memory"] == fs.root + "/memory/runtime/c1"
    assert plan["paths"]["pids"] == fs.root + "/pids/c1"
    # ".." cannot climb out of the hierarchy
    plan = build_cgroup_plan({"cgroupsPath": "/../../etc/x"}, "c1", layout)
    assert plan["paths"]["pids"] == fs.root + "/pids/etc/x"
    assert json.loads(json.dumps(plan)) == plan


def test_clean_path():
    assert build_clean_path("/a/./b/../c//") == "/a/c"
    assert build_clean_path("../../x") == "x"
    assert build_clean_path("/..") == "/"


def test_root_cgroup_is_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        build_cgroup_plan({"cgroupsPath": "/"}, "c1", TmpCgroupFs(tmp_path, "v2").layout())
    assert info.value.field == "linux.cgroupsPath"


def test_systemd_paths():
    assert build_systemd_path("system.slice:capsa:abc", "abc") == "/system.slice/capsa-abc.scope"
    assert build_systemd_path("a-b-c.slice:p:n", "x") == "/a.slice/a-b.slice/a-b-c.slice/p-n.scope"
    assert build_systemd_path("-.slice:p:n", "x") == "/p-n.scope"
    assert build_systemd_path("", "x") == "/system.slice/capsa-x.scope"
    assert build_systemd_path("user.slice:p:my.slice", "x") == "/user.slice/my.slice"
    for bad in ("a:b", "nodot:p:n", "a--b.slice:p:n", "x.slice:p:../n"):
        with pytest.raises(ConfigError):
            build_systemd_path(bad, "x")


def test_systemd_driver_needs_systemd(tmp_path):
    fs = TmpCgroupFs(tmp_path, "v2")
    with pytest.raises(ConfigError) as info:
        build_cgroup_plan({"cgroupsPath": "system.slice:capsa:c1"}, "c1", fs.layout(), True)
    assert "systemd" in info.value.line() and info.value.field == "linux.cgroupsPath"
    plan = build_cgroup_plan({"cgroupsPath": "system.slice:capsa:c1"}, "c1",
                             fs.layout(systemd_running=True), True)
    assert plan["paths"]["unified"] == fs.root + "/unified/system.slice/capsa-c1.scope"


def test_conversions():
    assert v2_weight_from_shares(2) == 1
    assert v2_weight_from_shares(1024) == 39
    assert v2_weight_from_shares(262144) == 10000
    assert v2_io_weight_from_blkio(10) == 1
    assert v2_io_weight_from_blkio(1000) == 10000
    assert v2_io_weight_from_blkio(500) == 4950
    assert v2_swap_from_v1(200, 100) == 100
    assert v2_swap_from_v1(-1, 100) == -1
    assert v2_swap_from_v1(0, -1) == -1
    assert v2_swap_from_v1(100, 100) == 0
    for swap, limit in ((100, 0), (50, 100), (100, -1)):
        with pytest.raises(ConfigError):
            v2_swap_from_v1(swap, limit)


FULL = {
    "memory": {"limit": 100 << 20, "reservation": 50 << 20, "swap": 200 << 20},
    "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "burst": 1000, "idle": 0,
            "cpus": "0", "mems": "0"},
    "pids": {"limit": 32},
    "blockIO": {"weight": 500,
                "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 0}]},
    "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
}


def test_v1_writes(tmp_path):
    fs = TmpCgroupFs(tmp_path, "v1")
    resources = dict(FULL, network={"classID": 0x100001, "priorities": [{"name": "eth0",
                                                                          "priority": 5}]})
    resources["memory"] = dict(FULL["memory"], swappiness=10, disableOOMKiller=True,
                               kernelTCP=1 << 20)
    resources["cpu"] = dict(FULL["cpu"], realtimePeriod=1000000, realtimeRuntime=0)
    plan = build_cgroup_plan({"cgroupsPath": "/x", "resources": resources}, "c1", fs.layout())
    assert files(plan) == [
        ("memory.limit_in_bytes", "104857600"), ("memory.memsw.limit_in_bytes", "209715200"),
        ("memory.soft_limit_in_bytes", "52428800"), ("memory.kmem.tcp.limit_in_bytes", "1048576"),
        ("memory.swappiness", "10"), ("memory.oom_control", "1"),
        ("cpu.shares", "1024"), ("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "50000"),
        ("cpu.cfs_burst_us", "1000"), ("cpu.rt_period_us", "1000000"), ("cpu.idle", "0"),
        ("cpuset.cpus", "0"), ("cpuset.mems", "0"), ("pids.max", "32"),
        ("blkio.weight", "500"), ("blkio.weight_device", "8:0 100"),
        ("blkio.throttle.read_bps_device", "8:0 1048576"),
        ("blkio.throttle.write_iops_device", "8:16 0"),
        ("hugetlb.2MB.limit_in_bytes", "4194304"),
        ("net_cls.classid", "1048577"), ("net_prio.ifpriomap", "eth0 5"),
    ]
    dirs = {w[1].split(".")[0]: w[0] for w in plan["writes"]}
    assert dirs["memory"] == fs.root + "/memory/x" and dirs["blkio"] == fs.root + "/blkio/x"
    assert plan["writes"][15][4] == ["blkio.bfq.weight", "500"]
    assert plan["devices"]["kind"] == "v1" and plan["freezer"] == ["v1", fs.root + "/freezer/x"]
    assert plan["enable"] == []


def test_v2_writes_convert(tmp_path):
    fs = TmpCgroupFs(tmp_path, "v2")
    resources = dict(FULL, unified={"memory.high": "90000000"}, rdma={"mlx5_1": {
        "hcaHandles": 3, "hcaObjects": 10000}})
    plan = build_cgroup_plan({"cgroupsPath": "/a/x", "resources": resources}, "c1", fs.layout())
    assert files(plan) == [
        ("memory.max", "104857600"), ("memory.swap.max", "104857600"), ("memory.low", "52428800"),
        ("cpu.weight", "39"), ("cpu.max", "50000 100000"), ("cpu.max.burst", "1000"),
        ("cpu.idle", "0"), ("cpuset.cpus", "0"), ("cpuset.mems", "0"), ("pids.max", "32"),
        ("io.bfq.weight", "500"), ("io.bfq.weight", "8:0 100"), ("io.max", "8:0 rbps=1048576"),
        ("io.max", "8:16 wiops=max"), ("hugetlb.2MB.max", "4194304"),
        ("rdma.max", "mlx5_1 hca_handle=3 hca_object=10000"), ("memory.high", "90000000"),
    ]
    assert {w[0] for w in plan["writes"]} == {fs.root + "/unified/a/x"}
    assert plan["writes"][10][4] == ["io.weight", "default 4950"]
    assert plan["writes"][11][4] == ["io.weight", "8:0 910"]
    line = "+cpuset +cpu +io +memory +hugetlb +pids +rdma"
    assert plan["enable"] == [[fs.root + "/unified", "cgroup.subtree_control", line],
                              [fs.root + "/unified/a", "cgroup.subtree_control", line]]
    assert plan["devices"]["kind"] == "bpf" and plan["freezer"] == ["v2", fs.root + "/unified/a/x"]


def test_hybrid_puts_v2_only_controllers_on_the_unified_hierarchy(tmp_path):
    fs = TmpCgroupFs(tmp_path, "hybrid", v1=("memory", "pids", "devices", "freezer"),
                     v2=("hugetlb",))
    plan = build_cgroup_plan({"cgroupsPath": "/x", "resources": {
        "memory": {"limit": 1 << 20}, "hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}},
        "c1", fs.layout())
    assert [(w[0], w[1]) for w in plan["writes"]] == [
        (fs.root + "/memory/x", "memory.limit_in_bytes"),
        (fs.root + "/unified/x", "hugetlb.2MB.max")]
    assert plan["enable"] == [[fs.root + "/unified", "cgroup.subtree_control", "+hugetlb"]]
    assert plan["devices"]["kind"] == "v1"


def test_v2_cpu_max_forms(tmp_path):
    layout = TmpCgroupFs(tmp_path, "v2").layout()
    for cpu, expected in (({"quota": -1, "period": 20000}, "max 20000"), ({"quota": 30000}, "30000"),
                          ({"period": 10000}, "max 10000")):
        plan = build_cgroup_plan({"resources": {"cpu": cpu}}, "c1", layout)
        assert files(plan) == [("cpu.max", expected)]
    plan = build_cgroup_plan({"resources": {"pids": {"limit": -1}, "memory": {"limit": -1}}},
                             "c1", layout)
    assert files(plan) == [("memory.max", "max"), ("memory.swap.max", "max"), ("pids.max", "max")]


@pytest.mark.parametrize("mode,resources,field", [
    ("v2", {"memory": {"kernel": 1 << 20}}, "linux.resources.memory.kernel"),
    ("v2", {"memory": {"disableOOMKiller": True}}, "linux.resources.memory.disableOOMKiller"),
    ("v2", {"memory": {"swappiness": 10}}, "linux.resources.memory.swappiness"),
    ("v2", {"cpu": {"realtimeRuntime": 100}}, "linux.resources.cpu.realtimeRuntime"),
    ("v2", {"network": {"classID": 1}}, "linux.resources.network.classID"),
    ("v2", {"blockIO": {"leafWeight": 100}}, "linux.resources.blockIO.leafWeight"),
    ("v1", {"unified": {"memory.high": "1"}}, "linux.resources.unified"),
    ("v1", {"memory": {"limit": "1g"}}, "linux.resources.memory.limit"),
    ("v1", {"memory": {"limit": 200, "swap": 100}}, "linux.resources.memory.swap"),
    ("v1", {"memory": {"swappiness": 101}}, "linux.resources.memory.swappiness"),
    ("v1", {"memory": {"swap": 1 << 20}}, "linux.resources.memory.swap"),
    ("v1", {"memory": {"swap": 1 << 20, "limit": -1}}, "linux.resources.memory.swap"),
    ("v1", {"cpu": {"shares": True}}, "linux.resources.cpu.shares"),
    ("v1", {"cpu": {"quota": 10}}, "linux.resources.cpu.quota"),
    ("v1", {"cpu": {"cpus": "0;rm"}}, "linux.resources.cpu.cpus"),
    ("v1", {"blockIO": {"weight": 5}}, "linux.resources.blockIO.weight"),
    ("v1", {"blockIO": {"throttleReadBpsDevice": [{"major": 8, "rate": 1}]}},
     "linux.resources.blockIO.throttleReadBpsDevice[0].minor"),
    ("v1", {"hugepageLimits": [{"pageSize": "2M", "limit": 1}]},
     "linux.resources.hugepageLimits[0].pageSize"),
    ("v1", {"network": {"priorities": [{"name": "", "priority": 1}]}},
     "linux.resources.network.priorities[0].name"),
    ("v2", {"unified": {"../etc/passwd": "x"}}, "linux.resources.unified"),
    ("v2", {"unified": {"cgroup.procs": "1"}}, "linux.resources.unified"),
])
def test_bad_values_name_their_field(tmp_path, mode, resources, field):
    with pytest.raises(ConfigError) as info:
        build_cgroup_plan({"resources": resources}, "c1", TmpCgroupFs(tmp_path, mode).layout())
    assert info.value.field == field


def test_missing_controller_is_named(tmp_path):
    fs = TmpCgroupFs(tmp_path, "v1", v1=("memory",))
    with pytest.raises(ConfigError) as info:
        build_cgroup_plan({"resources": {"pids": {"limit": 5}}}, "c1", fs.layout())
    assert "pids" in info.value.message and info.value.field == "linux.resources.pids.limit"


def test_devices_nodes_of_the_spec_are_allowed_and_defaults_follow(tmp_path):
    fs = TmpCgroupFs(tmp_path, "v2")
    plan = build_cgroup_plan({"devices": [{"type": "c", "path": "/dev/fuse", "major": 10,
                                           "minor": 229}],
                              "resources": {"devices": [{"allow": False, "access": "rwm"}]}},
                             "c1", fs.layout())
    assert plan["device_rules"][:2] == [[False, "a", -1, -1, "rwm"], [True, "c", 10, 229, "rwm"]]
    assert [True, "c", 136, -1, "rwm"] in plan["device_rules"]


def test_hybrid_enables_nothing_when_no_limit_needs_cgroup2(tmp_path):
    fs = TmpCgroupFs(tmp_path, "hybrid", v1=("memory", "pids"), v2=("hugetlb",))
    plan = build_cgroup_plan({"resources": {"memory": {"limit": 1 << 20}}}, "c1", fs.layout())
    assert plan["enable"] == [] and "unified" in plan["paths"]


def test_relative_path_on_cgroup2_sits_beside_the_runtime_not_below_it(tmp_path):
    fs = TmpCgroupFs(tmp_path, "v2")
    layout = fs.layout()
    layout["own"]["unified"] = fs.root + "/unified/user.slice/session-1.scope"
    plan = build_cgroup_plan({}, "c1", layout)
    assert plan["paths"]["unified"] == fs.root + "/unified/user.slice/c1"
    layout["own"]["unified"] = fs.root + "/unified"
    assert build_cgroup_plan({}, "c1", layout)["paths"]["unified"] == fs.root + "/unified/c1"


# linux.cgroupsPath and linux.resources as podman 4.3, ctr 1.6 and buildah 1.28 send them
CLIENT_LINUX = {
    "podman": {"cgroupsPath": "/libpod_parent/libpod-3d4163c2785b",
               "resources": {"devices": [{"allow": False, "access": "rwm"}],
                             "pids": {"limit": 2048}}},
    "buildah": {"resources": {"devices": [{"allow": False, "access": "rwm"}]}},
    "ctr": {"cgroupsPath": "/default/r1", "resources": {"cpu": {"shares": 1024}, "devices": [
        {"allow": False, "access": "rwm"}] + [
        {"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
        for major, minor in ((1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 1), (136, None),
                             (5, 2))]}},
}


@pytest.mark.parametrize("client", sorted(CLIENT_LINUX))
@pytest.mark.parametrize("mode", ["v1", "v2", "hybrid"])
def test_client_configs_plan_on_every_layout(tmp_path, client, mode):
    linux = CLIENT_LINUX[client]
    plan = build_cgroup_plan(linux, "c1", TmpCgroupFs(tmp_path, mode).layout())
    assert plan["device_rules"][0] == [False, "a", -1, -1, "rwm"]
    if linux.get("cgroupsPath"):
        assert all(path.endswith(linux["cgroupsPath"]) for path in plan["paths"].values())
    assert json.loads(json.dumps(plan)) == plan
