"""minimal_containers' limit keys → OCI linux.resources, and that the plan accepts the result."""
import pytest

from capsa.errors import ConfigError
from capsa.runtime.cgroups.features import SUPPORTED, build_cgroup_features, build_resource_keys
from capsa.runtime.cgroups.limits import build_bytes, build_classid, build_resources_from_limits
from capsa.runtime.cgroups.plan import build_cgroup_plan
from tests.unit.test_cgroups_fixture import TmpCgroupFs


def test_every_key_maps():
    resources = build_resources_from_limits({
        "max_physical_memory": "512M", "max_memory": "1G", "max_processes": "100",
        "cpu_share": "512", "net_classid": "0x100001",
        "iops_limit": ["8:0 1000", "8:16 50"], "io_bw_limit": "8:0 10485760"})
    assert resources == {
        "memory": {"limit": 512 << 20, "swap": 1 << 30},
        "pids": {"limit": 100},
        "cpu": {"shares": 512},
        "network": {"classID": 0x100001},
        "blockIO": {
            "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 1000},
                                       {"major": 8, "minor": 16, "rate": 50}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 1000},
                                        {"major": 8, "minor": 16, "rate": 50}],
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 10485760}],
            "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 10485760}]},
    }


def test_the_plan_accepts_the_mapping_on_v1(tmp_path):
    resources = build_resources_from_limits({"max_memory": "64m", "net_classid": "10:1",
                                             "io_bw_limit": "8:0 1000"})
    assert resources["memory"] == {"limit": 64 << 20, "swap": 64 << 20}
    assert resources["network"] == {"classID": 0x100001}
    plan = build_cgroup_plan({"resources": resources}, "c1", TmpCgroupFs(tmp_path, "v1").layout())
    assert ("net_cls.classid", "1048577") in [(w[1], w[2]) for w in plan["writes"]]
    assert ("blkio.throttle.write_bps_device", "8:0 1000") in [(w[1], w[2]) for w in plan["writes"]]


def test_sizes_and_classids():
    assert build_bytes("1048576", "k") == 1048576
    assert build_bytes("4k", "k") == 4096
    assert build_bytes("2GB", "k") == 2 << 30
    assert build_classid("1048577") == 0x100001
    assert build_classid("ffff:ffff") == 0xFFFFFFFF


@pytest.mark.parametrize("config,field", [
    ({"max_physical_memory": "lots"}, "max_physical_memory"),
    ({"max_physical_memory": "0"}, "max_physical_memory"),
    ({"max_physical_memory": "2G", "max_memory": "1G"}, "max_memory"),
    ({"max_processes": "-1"}, "max_processes"),
    ({"cpu_share": "1"}, "cpu_share"),
    ({"cpu_share": ["5", "6"]}, "cpu_share"),
    ({"net_classid": "10:1:2"}, "net_classid"),
    ({"net_classid": "10000:1"}, "net_classid"),
    ({"iops_limit": "8:0"}, "iops_limit"),
    ({"io_bw_limit": "sda 100"}, "io_bw_limit"),
])
def test_bad_values_name_the_key(config, field):
    with pytest.raises(ConfigError) as info:
        build_resources_from_limits(config)
    assert info.value.field == field


SAMPLES = {"memory": {"limit": 1 << 20, "reservation": 1 << 19, "swap": 2 << 20, "kernel": 1 << 20,
                      "kernelTCP": 1 << 20, "swappiness": 10, "disableOOMKiller": True,
                      "useHierarchy": True},
           "cpu": {"shares": 100, "quota": 5000, "period": 10000, "burst": 10,
                   "realtimeRuntime": 10, "realtimePeriod": 1000, "cpus": "0", "mems": "0",
                   "idle": 1},
           "pids": {"limit": 3},
           "blockIO": {"weight": 100, "leafWeight": 100,
                       "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
                       "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1}],
                       "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 1}],
                       "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 1}],
                       "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 1}]},
           "network": {"classID": 1, "priorities": [{"name": "lo", "priority": 1}]},
           "rdma": {"hcaHandles": 1, "hcaObjects": 1},
           "unified": {"*": "1"}}


def test_features_advertise_what_the_plan_accepts(tmp_path):
    assert set(SUPPORTED["v2"]) <= set(build_resource_keys())
    assert build_cgroup_features()["v1"] and build_cgroup_features()["v2"]
    for mode in ("v1", "v2"):
        layout = TmpCgroupFs(tmp_path / mode, mode, v1=("memory", "cpu", "cpuset", "pids", "blkio",
                                                        "net_cls", "net_prio", "rdma")).layout()
        for area, keys in SUPPORTED[mode].items():
            if area in ("devices", "hugepageLimits"):
                continue
            for key in keys:
                value = SAMPLES[area][key]
                if area == "rdma":
                    resources = {"rdma": {"mlx5_0": {key: value}}}
                elif area == "unified":
                    resources = {"unified": {"memory.high": value}}
                else:
                    resources = {area: {key: value}}
                    if key == "swap":
                        resources[area]["limit"] = 1 << 20
                plan = build_cgroup_plan({"resources": resources}, "c", layout)
                assert plan["writes"], (mode, area, key)
