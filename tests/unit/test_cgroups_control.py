"""The cgroup commands' pure parts: update flags, byte sizes, events lines, the ps filter."""
import json

import pytest

from capsa.errors import UsageError
from capsa.runtime.cgroups.control import (build_event, build_ps_table, build_ram_bytes,
                                           build_update_resources)
from capsa.runtime.cgroups.manager import build_merged_resources


def test_ram_bytes():
    assert build_ram_bytes("-1", "memory") == -1
    assert build_ram_bytes("1048576", "memory") == 1048576
    assert build_ram_bytes("64m", "memory") == 64 << 20
    assert build_ram_bytes("1G", "memory") == 1 << 30
    assert build_ram_bytes("512MiB", "memory") == 512 << 20
    assert build_ram_bytes("100kb", "memory") == 100 << 10
    assert build_ram_bytes("1.5g", "memory") == 3 << 29
    for bad in ("", "m", "-2", "lots", "5x"):
        with pytest.raises(UsageError) as info:
            build_ram_bytes(bad, "memory_swap")
        assert "--memory-swap" in info.value.message


def test_every_runc_flag_maps():
    opts = {"blkio_weight": "300", "cpu_period": "100000", "cpu_quota": "-1", "cpu_burst": "10",
            "cpu_share": "512", "cpu_rt_period": "1000000", "cpu_rt_runtime": "950000",
            "cpu_idle": "1", "cpuset_cpus": "0-1", "cpuset_mems": "0", "memory": "64m",
            "memory_reservation": "32m", "memory_swap": "-1", "kernel_memory": "8m",
            "kernel_memory_tcp": "1m", "pids_limit": "100"}
    assert build_update_resources(opts, None) == {
        "blockIO": {"weight": 300},
        "cpu": {"period": 100000, "quota": -1, "burst": 10, "shares": 512,
                "realtimePeriod": 1000000, "realtimeRuntime": 950000, "idle": 1,
                "cpus": "0-1", "mems": "0"},
        "memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": -1, "kernel": 8 << 20,
                   "kernelTCP": 1 << 20},
        "pids": {"limit": 100},
    }


def test_resources_file_wins_and_is_checked():
    # what `podman update --cpus 0.5 --memory 64m` writes for --resources
    sample = '{"memory":{"limit":67108864,"swap":134217728},"cpu":{"quota":50000,"period":100000}}'
    seen = []
    resources = build_update_resources({"resources": "/tmp/x", "memory": "1g"},
                                       lambda path: seen.append(path) or sample)
    assert seen == ["/tmp/x"] and resources == json.loads(sample)
    with pytest.raises(UsageError):
        build_update_resources({"resources": "-"}, lambda path: "{not json")
    with pytest.raises(UsageError):
        build_update_resources({"resources": "-"}, lambda path: "[1]")


@pytest.mark.parametrize("opts", [{"cpu_share": "-5"}, {"pids_limit": "many"},
                                  {"l3_cache_schema": "L3:0=f"}, {"mem_bw_schema": "MB:0=70"}])
def test_bad_flags(opts):
    with pytest.raises(UsageError):
        build_update_resources(opts, None)


def test_memory_update_keeps_swap_off():
    merged = build_merged_resources({"memory": {"limit": 64, "swap": 64}, "pids": {"limit": 5}},
                                    {"memory": {"limit": 128}})
    assert merged == {"memory": {"limit": 128, "swap": 128}, "pids": {"limit": 5}}
    merged = build_merged_resources({"memory": {"limit": 64, "swap": 256}},
                                    {"memory": {"limit": 128}})
    assert merged["memory"] == {"limit": 128, "swap": 256}


def test_events_lines():
    assert build_event("oom", "c1") == '{"type":"oom","id":"c1"}\n'
    assert json.loads(build_event("stats", "c1", {"pids": {"current": 2}})) == {
        "type": "stats", "id": "c1", "data": {"pids": {"current": 2}}}


def test_ps_table_keeps_header_and_container_rows():
    output = ("UID          PID    PPID  C STIME TTY          TIME CMD\n"
              "root           1       0  0 10:00 ?        00:00:01 /sbin/init\n"
              "root         812       1  0 10:01 ?        00:00:00 sh -c sleep 812\n"
              "root         900     812  0 10:01 ?        00:00:00 sleep 1\n")
    assert build_ps_table(output, [812, 900]).splitlines() == output.splitlines()[0:1] + \
        output.splitlines()[2:]
    with pytest.raises(UsageError):
        build_ps_table("USER COMMAND\nroot x\n", [1])
