"""Validation of config.json sections the core owns: each bad input names its field."""
import json

import pytest

from capsa.errors import ConfigError
from capsa.runtime import spec as specs


def _error(fn, *args):
    with pytest.raises(ConfigError) as info:
        fn(*args)
    return info.value


def test_read_spec_missing_and_malformed(tmp_path):
    err = _error(specs.read_spec, str(tmp_path))
    assert "no config.json in bundle" in err.line() and "capsa-runtime spec" in err.line()
    (tmp_path / "config.json").write_text("{nope")
    assert "is not valid JSON" in _error(specs.read_spec, str(tmp_path)).line()
    (tmp_path / "config.json").write_text("[]")
    assert "must hold a JSON object" in _error(specs.read_spec, str(tmp_path)).line()


def test_namespaces_new_and_joined_in_join_order():
    new, join = specs.build_namespaces({"namespaces": [
        {"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}, {"type": "user"},
        {"type": "pid"}, {"type": "time"}, {"type": "cgroup"}]})
    assert new == ["user", "pid", "time", "mount", "cgroup"]
    assert join == {"network": "/proc/1/ns/net"}


@pytest.mark.parametrize("entries, field, text", [
    ([{"type": "nope"}], "linux.namespaces[0].type", "unknown namespace type"),
    ([{"type": "pid"}, {"type": "pid"}], "linux.namespaces[1].type", "listed twice"),
    ([{"type": "pid", "path": "rel"}], "linux.namespaces[0].path", "must be absolute"),
])
def test_bad_namespaces(entries, field, text):
    err = _error(specs.build_namespaces, {"namespaces": entries})
    assert err.field == field and text in err.message


def test_id_maps_text_and_lookup():
    maps = specs.build_id_maps({"uidMappings": [{"containerID": 0, "hostID": 1000, "size": 10}],
                                "gidMappings": [{"containerID": 0, "hostID": 2000, "size": 1}]},
                               True)
    assert maps == {"uid_map": "0 1000 10\n", "gid_map": "0 2000 1\n"}
    assert specs.map_id(maps["uid_map"], 5) == 1005
    assert specs.map_id(maps["uid_map"], 10) is None


def test_id_maps_need_user_namespace_and_both_sides():
    err = _error(specs.build_id_maps, {"uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]},
                 False)
    assert err.field == "linux.uidMappings" and "user namespace" in err.message
    err = _error(specs.build_id_maps, {"uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]},
                 True)
    assert "both" in err.message
    err = _error(specs.build_id_maps, {"uidMappings": [{"containerID": 0, "hostID": 1, "size": 0}],
                                       "gidMappings": []}, True)
    assert err.field == "linux.uidMappings[0].size"


def test_time_offsets():
    text = specs.build_time_offsets({"timeOffsets": {"boottime": {"secs": 3600},
                                                     "monotonic": {"secs": -5, "nanosecs": 7}}},
                                    True)
    assert text == "boottime 3600 0\nmonotonic -5 7\n"
    err = _error(specs.build_time_offsets, {"timeOffsets": {"realtime": {"secs": 1}}}, True)
    assert err.field == "linux.timeOffsets.realtime"
    err = _error(specs.build_time_offsets, {"timeOffsets": {"boottime": {"secs": 1}}}, False)
    assert "time namespace" in err.message


def _process(**extra):
    process = {"args": ["sh"], "env": ["PATH=/bin"], "cwd": "/"}
    process.update(extra)
    return process


def test_process_plan_full():
    plan = specs.build_process(_process(
        user={"uid": 1000, "gid": 100, "additionalGids": [5, 6], "umask": 0o077},
        rlimits=[{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}],
        terminal=True, consoleSize={"height": 24, "width": 80}, oomScoreAdj=-500,
        noNewPrivileges=True, ioPriority={"class": "IOPRIO_CLASS_IDLE", "priority": 7},
        scheduler={"policy": "SCHED_BATCH", "nice": 5, "flags": ["SCHED_FLAG_RESET_ON_FORK"]},
        execCPUAffinity={"initial": "0", "final": "0-1"}))
    assert plan["uid"] == 1000 and plan["gid"] == 100 and plan["additional_gids"] == [5, 6]
    assert plan["umask"] == 0o077
    assert plan["rlimits"] == [[7, 100, 200, "RLIMIT_NOFILE"]]
    assert plan["console_size"] == [24, 80] and plan["terminal"]
    assert plan["io_priority"] == (3 << 13) | 7
    assert plan["scheduler"][:3] == [3, 1, 5]
    assert plan["cpu_affinity"] == {"initial": [0], "final": [0, 1]}


@pytest.mark.parametrize("extra, field", [
    ({"args": []}, "process.args"),
    ({"args": ["sh", 3]}, "process.args[1]"),
    ({"env": ["NOEQUALS"]}, "process.env[0]"),
    ({"cwd": "relative"}, "process.cwd"),
    ({"user": {"uid": -1}}, "process.user.uid"),
    ({"rlimits": [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]}, "process.rlimits[0].type"),
    ({"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 2, "hard": 1}]}, "process.rlimits[0]"),
    ({"rlimits": [{"type": "RLIMIT_CORE", "soft": 1, "hard": 1}] * 2}, "process.rlimits[1].type"),
    ({"oomScoreAdj": 1001}, "process.oomScoreAdj"),
    ({"ioPriority": {"class": "NOPE"}}, "process.ioPriority.class"),
    ({"scheduler": {"policy": "SCHED_NOPE"}}, "process.scheduler.policy"),
    ({"execCPUAffinity": {"initial": "a-b"}}, "process.execCPUAffinity.initial"),
])
def test_bad_process_fields(extra, field):
    assert _error(specs.build_process, _process(**extra)).field == field


def test_hooks_validated():
    plan = specs.build_hooks({"hooks": {"prestart": [{"path": "/bin/true", "timeout": 3}]}})
    assert plan == {"prestart": [{"path": "/bin/true", "args": ["/bin/true"], "env": [],
                                  "timeout": 3}]}
    assert _error(specs.build_hooks, {"hooks": {"prestop": []}}).field == "hooks.prestop"
    assert _error(specs.build_hooks, {"hooks": {"poststop": [{"path": "rel"}]}}).field == \
        "hooks.poststop[0].path"
    assert _error(specs.build_hooks, {"hooks": {"poststop": [{"path": "/x", "timeout": 0}]}}
                  ).field == "hooks.poststop[0].timeout"


def test_sysctl_only_for_owned_namespaces():
    assert specs.build_sysctl({"sysctl": {"net.ipv4.ip_forward": "1"}}, ["network"]) == \
        {"net.ipv4.ip_forward": "1"}
    err = _error(specs.build_sysctl, {"sysctl": {"net.ipv4.ip_forward": "1"}}, [])
    assert err.field == "linux.sysctl.net.ipv4.ip_forward" and "network namespace" in err.message
    err = _error(specs.build_sysctl, {"sysctl": {"kernel.shmmax": "1"}}, ["network"])
    assert "ipc" in err.message
    err = _error(specs.build_sysctl, {"sysctl": {"vm.swappiness": "1"}}, ["network", "ipc"])
    assert "not namespaced" in err.message


def test_personality():
    assert specs.build_personality({"personality": {"domain": "LINUX32"}}) == 8
    assert _error(specs.build_personality, {"personality": {"domain": "X"}}).field == \
        "linux.personality.domain"
