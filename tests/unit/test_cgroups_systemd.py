"""The systemd cgroup driver without systemd: unit names, resources → unit properties (v1 and
v2, runc's conversions), device rules → DevicePolicy/DeviceAllow, and the manager's order of
calls against a tmpdir laid out like cgroupfs with a recording stand-in for PID 1."""
import os

import pytest

from capsa.errors import ConfigError
from capsa.runtime.cgroups import manager
from capsa.runtime.cgroups.plan import build_cgroup_plan, build_systemd_names
from capsa.runtime.cgroups.systemd import (
    INFINITY, build_cpu_quota_properties, build_cpuset_mask, build_device_properties,
    build_effective_devices, build_proc_devices, build_resource_properties,
    build_unified_properties)
from capsa.runtime.cgroups.devices import DEFAULT_ALLOWED
from tests.unit.test_cgroups_fixture import TmpCgroupFs, TmpCgroupKernel

NAMES = {"c": {"136": "pts", "4": "tty", "10": "misc"}, "b": {"8": "sd", "7": "loop"}}


def props(entries):
    return {name: (signature, value) for name, signature, value in entries}


def test_unit_names_follow_slice_prefix_name():
    assert build_systemd_names("system.slice:capsa:c1", "c1") == \
        ("system.slice", "capsa-c1.scope", "/system.slice/capsa-c1.scope")
    assert build_systemd_names("", "c9") == \
        ("system.slice", "capsa-c9.scope", "/system.slice/capsa-c9.scope")
    assert build_systemd_names(":p:n", "x")[:2] == ("system.slice", "p-n.scope")
    assert build_systemd_names("machine-pod.slice::n", "x") == \
        ("machine-pod.slice", "n.scope", "/machine.slice/machine-pod.slice/n.scope")
    assert build_systemd_names("user.slice:p:my.slice", "x")[1] == "my.slice"
    with pytest.raises(ConfigError) as info:
        build_systemd_names("system.slice:capsa:", "x")
    assert info.value.field == "linux.cgroupsPath"


def test_v1_properties_are_runc_names_and_units():
    resources = {"memory": {"limit": 64 << 20, "reservation": 1 << 20, "swap": 128 << 20},
                 "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1"},
                 "blockIO": {"weight": 300}, "pids": {"limit": 50}}
    got = props(build_resource_properties(resources, "v1", 252))
    assert got == {"MemoryLimit": ("t", 64 << 20), "CPUShares": ("t", 512),
                   "CPUQuotaPerSecUSec": ("t", 500000), "CPUQuotaPeriodUSec": ("t", 100000),
                   "BlockIOWeight": ("t", 300), "TasksMax": ("t", 50)}


def test_v2_properties_convert_as_runc_does():
    resources = {"memory": {"limit": 64 << 20, "reservation": 1 << 20, "swap": 96 << 20},
                 "cpu": {"shares": 1024, "cpus": "0-2,4", "mems": "0"},
                 "blockIO": {"weight": 500}, "pids": {"limit": -1}}
    got = props(build_resource_properties(resources, "v2", 252))
    assert got == {"MemoryMax": ("t", 64 << 20), "CPUWeight": ("t", 39),
                   "IOWeight": ("t", 4950), "TasksMax": ("t", INFINITY),
                   "MemoryLow": ("t", 1 << 20), "MemorySwapMax": ("t", 32 << 20),
                   "AllowedCPUs": ("ay", [0x17]), "AllowedMemoryNodes": ("ay", [0x01])}
    # an old systemd has no AllowedCPUs (v244) and no CPUQuotaPeriodUSec (v242)
    old = props(build_resource_properties({"cpu": {"cpus": "0", "quota": 1, "period": 1000}},
                                          "v2", 239))
    assert "AllowedCPUs" not in old and "CPUQuotaPeriodUSec" not in old


def test_unlimited_values_are_infinity_and_zero_means_unset():
    got = props(build_resource_properties({"memory": {"limit": -1, "swap": -1},
                                           "pids": {"limit": 0}}, "v2", 252))
    assert got == {"MemoryMax": ("t", INFINITY), "MemorySwapMax": ("t", INFINITY)}
    assert build_resource_properties({}, "v1", 252) == []


def test_cpu_quota_rounds_up_to_systemds_one_percent():
    assert build_cpu_quota_properties(12345, 100000, 252) == [
        ["CPUQuotaPerSecUSec", "t", 130000], ["CPUQuotaPeriodUSec", "t", 100000]]
    # no period: runc's default 100 ms is assumed but not sent
    assert build_cpu_quota_properties(20000, 0, 252) == [["CPUQuotaPerSecUSec", "t", 200000]]
    assert build_cpu_quota_properties(-1, 0, 252) == [["CPUQuotaPerSecUSec", "t", INFINITY]]
    assert build_cpu_quota_properties(0, 0, 252) == []


def test_cpuset_mask_and_unified_keys():
    assert build_cpuset_mask("0-2,4") == [0x17]
    assert build_cpuset_mask("9") == [0, 0x02]
    got = props(build_unified_properties({"memory.high": "1048576", "pids.max": "max",
                                          "cpu.max": "25000 50000", "io.max": "8:0 rbps=1"}))
    assert got == {"MemoryHigh": ("t", 1 << 20), "TasksMax": ("t", INFINITY),
                   "CPUQuotaPerSecUSec": ("t", 500000), "CPUQuotaPeriodUSec": ("t", 50000)}


def test_device_emulation_follows_the_v1_kernel():
    rules = [[False, "a", -1, -1, "rwm"], [True, "c", 1, 3, "rw"], [True, "c", 1, 3, "m"],
             [True, "b", 8, 0, "rwm"], [False, "b", 8, 0, "w"], [False, "c", 5, 1, "rwm"]]
    assert build_effective_devices(rules) == (False, [["c", 1, 3, "rwm"], ["b", 8, 0, "rm"]])
    assert build_effective_devices([[True, "a", -1, -1, "rwm"], [False, "c", 1, 3, "w"]]) == \
        (True, [["c", 1, 3, "w"]])


def test_default_devices_become_a_strict_allow_list():
    got, warnings = build_device_properties([list(rule) for rule in DEFAULT_ALLOWED], NAMES)
    assert warnings == []
    assert got[0] == ["DevicePolicy", "s", "strict"]
    allow = got[1][2]
    assert ["char-*", "m"] in allow and ["block-*", "m"] in allow
    assert ["/dev/char/1:3", "rwm"] in allow and ["char-pts", "rwm"] in allow
    assert not any(spec.startswith("/dev/block") for spec, _ in allow)
    assert len(allow) == len(DEFAULT_ALLOWED)


def test_devices_systemd_cannot_name_are_left_out_with_a_warning():
    rules = [[True, "b", 250, -1, "r"], [True, "c", -1, 3, "r"], [True, "a", 7, -1, "rw"]]
    got, warnings = build_device_properties(rules, NAMES)
    assert got[1][2] == [["block-loop", "rw"]]
    assert len(warnings) == 3 and "250" in warnings[0]


def test_allow_all_is_policy_auto_and_denies_over_it_are_warned():
    got, warnings = build_device_properties([[True, "a", -1, -1, "rwm"]], NAMES)
    assert got == [["DevicePolicy", "s", "auto"], ["DeviceAllow", "a(ss)", []]]
    assert warnings == []
    _, warnings = build_device_properties([[True, "a", -1, -1, "rwm"],
                                           [False, "b", 8, -1, "rwm"]], NAMES)
    assert "deny" in warnings[0]


def test_proc_devices_parse():
    text = "Character devices:\n  1 mem\n136 pts\n\nBlock devices:\n  7 loop\n  8 sd\n"
    assert build_proc_devices(text) == {"c": {"1": "mem", "136": "pts"},
                                        "b": {"7": "loop", "8": "sd"}}


def _layout(fs):
    layout = fs.layout(systemd_running=True)
    layout["systemd"] = {"version": 252, "devices": NAMES}
    return layout


def test_plan_carries_the_unit_and_joins_name_systemd(tmp_path):
    fs = TmpCgroupFs(tmp_path, "hybrid", v1=("memory", "pids", "devices"))
    layout = _layout(fs)
    layout["v1"]["name=systemd"] = fs.root + "/systemd"
    plan = build_cgroup_plan({"cgroupsPath": "system.slice:capsa:c1",
                              "resources": {"memory": {"limit": 1 << 30}}}, "c1", layout, True)
    unit = plan["systemd"]
    assert unit["unit"] == "capsa-c1.scope" and unit["slice"] == "system.slice"
    got = props(unit["properties"])
    assert got["Slice"] == ("s", "system.slice") and got["Delegate"] == ("b", True)
    assert got["DefaultDependencies"] == ("b", False) and got["BlockIOAccounting"] == ("b", True)
    assert got["MemoryLimit"] == ("t", 1 << 30) and got["DevicePolicy"] == ("s", "strict")
    assert "PIDs" not in got     # added once the init exists
    assert plan["paths"]["name=systemd"] == fs.root + "/systemd/system.slice/capsa-c1.scope"
    # the cgroupfs driver leaves the name=systemd hierarchy alone
    plain = build_cgroup_plan({"cgroupsPath": "/x"}, "c1", layout)
    assert plain["systemd"] is None and "name=systemd" not in plain["paths"]


class Pid1:
    """Stands in for systemd on a TmpCgroupFs: makes the unit's folders in the hierarchies it
    manages and writes its own value of each limit there, as systemd does; removes them on stop."""

    MANAGED = ("memory", "pids", "devices", "unified")

    def __init__(self, fs, kernel):
        self.fs = fs
        self.calls = []
        kernel.systemd_start_unit = self.start
        kernel.systemd_stop_unit = self.stop
        kernel.systemd_set_unit_properties = self.set
        self.kernel = kernel

    def _dirs(self, unit):
        return [os.path.join(self.fs.root, name, "system.slice", unit) for name in self.MANAGED
                if os.path.isdir(os.path.join(self.fs.root, name))]

    def start(self, name, properties):
        self.calls.append(("start", name, properties))
        self.kernel.log.append(("systemd-start", name))
        for path in self._dirs(name):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.isdir(path):
                os.mkdir(path)
                self.fs.populate(path, self.fs.controller_of(path))
        memory = os.path.join(self.fs.root, "memory", "system.slice", name)
        # no MemoryLimit property: systemd writes "no limit" over whatever is there
        limit = props(properties).get("MemoryLimit", ("t", "-1"))[1]
        with open(memory + "/memory.limit_in_bytes", "w") as handle:
            handle.write(str(limit))

    def stop(self, name):
        self.calls.append(("stop", name))
        self.kernel.log.append(("systemd-stop", name))
        for path in self._dirs(name):
            if os.path.isdir(path):
                self.kernel.rmdir(path)

    def set(self, name, properties):
        self.calls.append(("set", name, properties))
        self.kernel.log.append(("systemd-set", name))


def _systemd_plan(tmp_path, resources):
    fs = TmpCgroupFs(tmp_path, "hybrid", v1=("memory", "pids", "devices", "freezer"))
    plan = build_cgroup_plan({"cgroupsPath": "system.slice:capsa:c1", "resources": resources},
                             "c1", _layout(fs), True)
    kernel = TmpCgroupKernel(fs)
    return fs, kernel, Pid1(fs, kernel), plan


def test_join_starts_the_unit_with_the_pid_then_writes_and_joins_everything(tmp_path):
    fs, kernel, pid1, plan = _systemd_plan(tmp_path, {"memory": {"limit": 64 << 20},
                                                      "pids": {"limit": 9}})
    manager.apply_systemd_join(kernel, plan, 4242)
    start = pid1.calls[0]
    assert start[:2] == ("start", "capsa-c1.scope")
    assert props(start[2])["PIDs"] == ("au", [4242])
    assert props(start[2])["MemoryLimit"] == ("t", 64 << 20)
    assert kernel.log[0] == ("systemd-start", "capsa-c1.scope")
    for name in ("memory", "pids", "devices", "freezer", "unified"):
        assert fs.read(name, "system.slice/capsa-c1.scope/cgroup.procs") == "4242"
    assert fs.read("memory/system.slice/capsa-c1.scope/memory.limit_in_bytes") == str(64 << 20)
    assert fs.read("pids/system.slice/capsa-c1.scope/pids.max") == "9"
    assert fs.read("devices/system.slice/capsa-c1.scope/devices.allow")  # capsa's rules too
    assert plan["existed"] == []


def test_destroy_stops_the_unit_first_and_removes_what_systemd_left(tmp_path):
    fs, kernel, pid1, plan = _systemd_plan(tmp_path, {})
    manager.apply_systemd_join(kernel, plan, 7)
    for name in ("memory", "pids", "devices", "freezer", "unified"):
        with open(os.path.join(fs.root, name, "system.slice/capsa-c1.scope/cgroup.procs"),
                  "w") as handle:
            handle.write("")
    before = len(kernel.log)
    manager.apply_cgroup_destroy(kernel, plan)
    assert kernel.log[before] == ("systemd-stop", "capsa-c1.scope")
    for name in ("memory", "pids", "devices", "freezer", "unified"):
        assert not os.path.exists(os.path.join(fs.root, name, "system.slice/capsa-c1.scope"))
    # the slice folder capsa made for freezer (systemd leaves freezer alone) is gone too
    assert not os.path.exists(os.path.join(fs.root, "freezer", "system.slice"))


def test_update_tells_systemd_before_writing_the_files(tmp_path):
    fs, kernel, pid1, plan = _systemd_plan(tmp_path, {"memory": {"limit": 64 << 20},
                                                      "pids": {"limit": 9}})
    manager.apply_systemd_join(kernel, plan, 7)
    before = len(kernel.log)
    manager.apply_update(kernel, plan, {"memory": {"limit": 128 << 20},
                                        "devices": [{"allow": True, "type": "c", "major": 10,
                                                     "minor": 200, "access": "rwm"}]})
    assert kernel.log[before] == ("systemd-set", "capsa-c1.scope")
    sent = props(pid1.calls[-1][2])
    # the merged resources: the pids limit is told again, so systemd's copy stays whole
    assert sent["MemoryLimit"] == ("t", 128 << 20) and sent["TasksMax"] == ("t", 9)
    assert ["/dev/char/10:200", "rwm"] in sent["DeviceAllow"][1]
    assert fs.read("memory/system.slice/capsa-c1.scope/memory.limit_in_bytes") == str(128 << 20)


def test_v2_plan_asks_for_v2_properties_and_joins_the_unified_unit(tmp_path):
    """A pure cgroup v2 host under systemd, the common production case."""
    fs = TmpCgroupFs(tmp_path, "v2")
    plan = build_cgroup_plan({"cgroupsPath": "machine.slice:libpod:abc",
                              "resources": {"memory": {"limit": 1 << 30, "swap": 3 << 29},
                                            "cpu": {"shares": 2048, "quota": 150000},
                                            "pids": {"limit": 99}}},
                             "abc", _layout(fs), True)
    got = props(plan["systemd"]["properties"])
    assert plan["systemd"]["unit"] == "libpod-abc.scope"
    assert got["MemoryMax"] == ("t", 1 << 30) and got["MemorySwapMax"] == ("t", 1 << 29)
    assert got["CPUWeight"] == ("t", 79) and got["CPUQuotaPerSecUSec"] == ("t", 1500000)
    assert got["IOAccounting"] == ("b", True) and "BlockIOAccounting" not in got
    assert "MemoryLimit" not in got and "CPUShares" not in got
    assert plan["paths"] == {"unified": fs.root + "/unified/machine.slice/libpod-abc.scope"}
    # the limits are written to the unit's own files after systemd made it
    assert [fs.root + "/unified/machine.slice/libpod-abc.scope", "memory.max", str(1 << 30)] == \
        plan["writes"][0][:3]
