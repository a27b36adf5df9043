"""Unit tests of the pure rootfs plan: option table, validation, /dev, cgroup views, masks."""
import json

import pytest

from capsa.errors import ConfigError
from capsa.runtime import mounts
from capsa.runtime.mounts import (build_mount_extensions, build_mount_features, build_mount_options,
                                  build_rootfs_plan)
from capsa.syscalls import fs

FACTS = {"userns": False, "no_pivot": False, "terminal": False,
         "cgroup_layout": {"mode": "v2", "v1": {}, "v2": "/sys/fs/cgroup"},
         "cgroup_paths": {"unified": "/sys/fs/cgroup/c1"}}


def with_mount_ns(spec):
    spec.setdefault("linux", {}).setdefault("namespaces", [{"type": "mount"}])
    return spec


def plan_of(mounts_=None, facts=None, **linux):
    spec = with_mount_ns({"root": {"path": "rootfs"}, "mounts": mounts_ or [], "linux": linux})
    plan = build_rootfs_plan(spec, "/b", dict(FACTS, **(facts or {})))
    assert json.loads(json.dumps(plan)) == plan
    return plan


def steps_of(plan, op):
    return [step for step in plan["steps"] if step["op"] == op]


def config_error(spec_mounts=None, **linux):
    with pytest.raises(ConfigError) as info:
        plan_of(spec_mounts, **linux)
    return info.value


def test_features_come_from_the_tables():
    words = build_mount_features()
    assert words == sorted(words)
    for word in ("ro", "rw", "rro", "rrw", "bind", "rbind", "rprivate", "unbindable", "tmpcopyup",
                 "nosymfollow", "rnosymfollow", "strictatime", "rnoatime", "sync", "dirsync"):
        assert word in words
    assert "idmap" in words and "ridmap" in words
    assert build_mount_extensions() == {"idmap": {"enabled": True}}
    for word in words:  # everything advertised is accepted by the parser
        build_mount_options([word], word not in mounts.SUPERBLOCK_OPTIONS, "mounts[0].options")


def test_root_path_is_resolved_against_the_bundle():
    assert plan_of()["rootfs"] == "/b/rootfs"
    spec = with_mount_ns({"root": {"path": "/abs/root/../r", "readonly": True}})
    plan = build_rootfs_plan(spec, "/b", FACTS)
    assert plan["rootfs"] == "/abs/r" and plan["readonly"] is True


@pytest.mark.parametrize("root, field", [(None, "root.path"), ({"path": ""}, "root.path"),
                                         ({"path": "r", "readonly": "yes"}, "root.readonly")])
def test_bad_root(root, field):
    with pytest.raises(ConfigError) as info:
        build_rootfs_plan(with_mount_ns({"root": root}), "/b", FACTS)
    assert info.value.field == field


def test_bind_options_translate_to_attrs():
    plan = plan_of([{"destination": "/data/../data/", "type": "bind", "source": "vol",
                     "options": ["rbind", "ro", "nosuid", "rnodev", "noatime", "rslave"]}])
    (step,) = steps_of(plan, "bind")
    assert step["source"] == "/b/vol" and step["dest"] == "/data" and step["recursive"] is True
    assert step["attrs"] == [fs.MOUNT_ATTR_RDONLY | fs.MOUNT_ATTR_NOSUID | fs.MOUNT_ATTR_NOATIME,
                             fs.MOUNT_ATTR__ATIME]
    assert step["rattrs"] == [fs.MOUNT_ATTR_NODEV, 0]
    assert step["propagation"] == [[fs.MS_SLAVE, True]]


def test_later_option_wins():
    opts = build_mount_options(["ro", "rw", "noexec", "exec", "nosuid"], True, "f")
    assert opts["attrs"] == [fs.MOUNT_ATTR_NOSUID, fs.MOUNT_ATTR_RDONLY | fs.MOUNT_ATTR_NOEXEC]


def test_atime_values_always_clear_the_whole_field():
    for word in ("strictatime", "relatime", "noatime", "atime", "nostrictatime"):
        attrs = build_mount_options([word], True, "f")["attrs"]
        assert attrs[1] & fs.MOUNT_ATTR__ATIME == fs.MOUNT_ATTR__ATIME, word
    assert build_mount_options(["strictatime"], True, "f")["attrs"][0] == fs.MOUNT_ATTR_STRICTATIME


def test_a_plain_bind_is_not_recursive_and_a_file_bind_keeps_its_path():
    (step,) = steps_of(plan_of([{"destination": "/etc/hosts", "source": "/h/hosts",
                                 "options": ["bind"]}]), "bind")
    assert step["recursive"] is False and step["source"] == "/h/hosts"


def test_fs_mount_data_and_superblock_flags():
    (step,) = steps_of(plan_of([{"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                                 "options": ["nosuid", "newinstance", "ptmxmode=0666", "sync"]}]),
                       "fs")
    assert step["fstype"] == "devpts" and step["attrs"] == [fs.MOUNT_ATTR_NOSUID, 0]
    assert step["data"] == [["newinstance", None], ["ptmxmode", "0666"], ["sync", None]]


def test_proc_and_sysfs_need_real_directories():
    plan = plan_of([{"destination": "/proc", "type": "proc"},
                    {"destination": "/tmp", "type": "tmpfs", "options": ["tmpcopyup"]}])
    proc, tmp = steps_of(plan, "fs")[:2]
    assert proc["strict"] is True and proc["source"] == "proc"
    assert tmp["strict"] is False and tmp["tmpcopyup"] is True


@pytest.mark.parametrize("mount, field, words", [
    ({"destination": "/x", "type": "bind", "source": "/s", "options": ["rbind", "nosiud"]},
     "mounts[0].options", "unknown option 'nosiud'"),
    ({"destination": "", "type": "tmpfs"}, "mounts[0].destination", "non-empty"),
    ({"destination": "/x\0", "type": "tmpfs"}, "mounts[0].destination", "NUL"),
    ({"destination": "/", "type": "tmpfs"}, "mounts[0].destination", "root"),
    ({"destination": "/x", "options": ["nosuid"]}, "mounts[0].type", "needs a filesystem type"),
    ({"destination": "/x", "type": "bind"}, "mounts[0].source", "needs a source"),
    ({"destination": "/x", "type": "proc", "options": ["tmpcopyup"]}, "mounts[0].options", "tmpfs"),
    ({"destination": "/x", "type": "bind", "source": "/s", "options": ["sync"]},
     "mounts[0].options", "filesystem option"),
    ({"destination": "/x", "type": "bind", "source": "/s", "options": ["idmap"]},
     "mounts[0].uidMappings", "needs the container's user namespace"),
    ({"destination": "/x", "type": "tmpfs", "options": ["idmap"]}, "mounts[0].options",
     "only on bind mounts"),
    ({"destination": "/x", "type": "bind", "source": "/s", "options": ["bind"],
      "uidMappings": [{"containerID": 0, "hostID": 1, "size": 0}]},
     "mounts[0].uidMappings[0].size", "from 1"),
    ({"destination": "/x", "type": "tmpfs", "options": "ro"}, "mounts[0].options", "list"),
    ({"destination": "/x", "type": "tmpfs", "options": [""]}, "mounts[0].options", "non-empty"),
    ("tmpfs", "mounts[0]", "object"),
    ({"destination": "/proc", "type": "tmpfs"}, "mounts[0].type", "only a proc filesystem"),
    ({"destination": "/proc/self/attr", "type": "tmpfs"}, "mounts[0].destination", "inside /proc"),
])
def test_bad_mounts_name_the_field(mount, field, words):
    err = config_error([mount])
    assert err.field == field and words in err.line()


def test_bad_linux_fields():
    assert config_error(rootfsPropagation="sideways").field == "linux.rootfsPropagation"
    assert config_error(maskedPaths=["/ok", "rel"]).field == "linux.maskedPaths[1]"
    assert config_error(readonlyPaths="/proc").field == "linux.readonlyPaths"
    assert config_error(devices=[{"path": "/etc/x", "type": "c"}]).field == "linux.devices[0].path"
    assert config_error(devices=[{"path": "/dev/x", "type": "q"}]).field == "linux.devices[0].type"
    err = config_error(devices=[{"path": "/dev/x", "type": "c", "major": -1, "minor": 1}])
    assert err.field == "linux.devices[0].major"
    err = config_error(devices=[{"path": "/dev/x", "type": "c", "major": 1, "minor": 2,
                                 "fileMode": 0o17777}])
    assert err.field == "linux.devices[0].fileMode"


def test_rootfs_propagation():
    assert plan_of()["propagation"] == [fs.MS_PRIVATE, True]
    assert plan_of(rootfsPropagation="shared")["propagation"] == [fs.MS_SHARED, False]
    assert plan_of(rootfsPropagation="rslave")["propagation"] == [fs.MS_SLAVE, True]


def test_default_devices_links_and_ptmx():
    plan = plan_of([{"destination": "/dev", "type": "tmpfs"}],
                   devices=[{"path": "/dev/null", "type": "c", "major": 1, "minor": 3,
                             "fileMode": 0o600, "uid": 7},
                            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}])
    devices = steps_of(plan, "device")
    assert [d["path"] for d in devices] == ["/dev/null", "/dev/zero", "/dev/full", "/dev/random",
                                            "/dev/urandom", "/dev/tty", "/dev/fuse"]
    assert devices[0]["mode"] == 0o600 and devices[0]["uid"] == 7
    assert devices[5]["major"] == 5 and devices[5]["minor"] == 0
    assert not any(d["bind"] for d in devices)
    links = dict((s["dest"], (s["target"], s["replace"])) for s in steps_of(plan, "symlink"))
    assert links == {"/dev/fd": ("/proc/self/fd", False), "/dev/stdin": ("/proc/self/fd/0", False),
                     "/dev/stdout": ("/proc/self/fd/1", False),
                     "/dev/stderr": ("/proc/self/fd/2", False), "/dev/ptmx": ("pts/ptmx", True)}
    assert steps_of(plan, "mkdir") == [{"op": "mkdir", "field": "/dev", "dest": "/dev/shm",
                                        "mode": 0o1777}]


def test_user_namespace_binds_devices_from_the_host():
    devices = steps_of(plan_of(facts={"userns": True}), "device")
    assert devices and all(d["bind"] for d in devices)


def test_bind_mounted_dev_is_left_alone():
    plan = plan_of([{"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind"]}])
    assert not steps_of(plan, "device") and not steps_of(plan, "symlink")


CGROUP = {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
          "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
HYBRID = {"mode": "hybrid", "v2": "/sys/fs/cgroup/unified",
          "v1": {"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                 "memory": "/sys/fs/cgroup/memory", "devices": "/sys/fs/cgroup/devices",
                 "name=systemd": "/sys/fs/cgroup/systemd"}}


def test_cgroup_v2_with_cgroupns_mounts_cgroup2_read_only():
    plan = plan_of([CGROUP], namespaces=[{"type": "mount"}, {"type": "cgroup"}])
    (step,) = plan["steps"][:1]
    assert step["op"] == "fs" and step["fstype"] == "cgroup2"
    assert step["attrs"][0] & fs.MOUNT_ATTR_RDONLY


def test_cgroup_v2_without_cgroupns_binds_the_own_cgroup():
    (step,) = plan_of([CGROUP])["steps"][:1]
    assert step["op"] == "bind" and step["source"] == "/sys/fs/cgroup/c1"
    assert step["dest"] == "/sys/fs/cgroup" and step["attrs"][0] & fs.MOUNT_ATTR_RDONLY


def test_cgroup_hybrid_is_a_read_only_v1_tree_of_the_own_cgroups():
    paths = {"cpu": "/sys/fs/cgroup/cpu,cpuacct/c1", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct/c1",
             "memory": "/sys/fs/cgroup/memory/c1", "unified": "/sys/fs/cgroup/unified/c1"}
    plan = plan_of([CGROUP], facts={"cgroup_layout": HYBRID, "cgroup_paths": paths})
    steps = [s for s in plan["steps"] if s["field"] == "mounts[0]"]
    assert steps[0]["op"] == "fs" and steps[0]["fstype"] == "tmpfs"
    assert not steps[0]["attrs"][0] & fs.MOUNT_ATTR_RDONLY  # filled first, made read-only last
    binds = [(s["source"], s["dest"]) for s in steps if s["op"] == "bind"]
    assert binds == [("/sys/fs/cgroup/cpu,cpuacct/c1", "/sys/fs/cgroup/cpu,cpuacct"),
                     ("/sys/fs/cgroup/memory/c1", "/sys/fs/cgroup/memory"),
                     ("/sys/fs/cgroup/unified/c1", "/sys/fs/cgroup/unified")]
    assert all(s["attrs"][0] & fs.MOUNT_ATTR_RDONLY for s in steps if s["op"] == "bind")
    links = [(s["dest"], s["target"]) for s in steps if s["op"] == "symlink"]
    assert links == [("/sys/fs/cgroup/cpu", "cpu,cpuacct"), ("/sys/fs/cgroup/cpuacct", "cpu,cpuacct")]
    assert steps[-1] == {"op": "setattr", "field": "mounts[0]", "dest": "/sys/fs/cgroup",
                         "attrs": [fs.MOUNT_ATTR_RDONLY, 0], "cgroupfs": True}
    # every step of the tree is marked, so a rootless create without cgroups can drop them all
    assert all(s.get("cgroupfs") for s in steps)


def test_cgroup_rw_when_the_spec_says_so():
    mount = dict(CGROUP, options=["nosuid"])
    plan = plan_of([mount], facts={"cgroup_layout": HYBRID,
                                   "cgroup_paths": {"memory": "/sys/fs/cgroup/memory/c1"}})
    assert not [s for s in plan["steps"] if s["op"] == "setattr"]
    (bind,) = steps_of(plan, "bind")
    assert not bind["attrs"][0] & fs.MOUNT_ATTR_RDONLY


def test_masked_and_readonly_paths_are_cleaned():
    plan = plan_of(maskedPaths=["/proc/kcore", "/proc//acpi/"], readonlyPaths=["/proc/sys"])
    assert plan["masked"] == ["/proc/kcore", "/proc/acpi"]
    assert plan["readonly_paths"] == ["/proc/sys"]


def test_lxcfs_files_may_cover_proc_entries():
    (step,) = steps_of(plan_of([{"destination": "/proc/meminfo", "source": "/var/lib/lxcfs/proc/meminfo",
                                 "options": ["bind"]}]), "bind")
    assert step["dest"] == "/proc/meminfo"


IDMAPPED = {"destination": "/data", "type": "bind", "source": "/vol", "options": ["rbind", "ridmap"],
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 1000}],
            "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 10}]}


def test_idmap_without_a_container_user_namespace_keeps_host_ids():
    (step,) = steps_of(plan_of([IDMAPPED]), "bind")
    assert step["idmap"] == {"uid_map": "0 100000 1000\n", "gid_map": "0 200000 10\n",
                             "recursive": True}


def test_idmap_without_mappings_uses_the_container_user_namespace():
    linux = {"uidMappings": [{"containerID": 0, "hostID": 99000, "size": 65536}],
             "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]}
    mount = dict(IDMAPPED, options=["bind", "idmap"])
    del mount["uidMappings"], mount["gidMappings"]
    (step,) = steps_of(plan_of([mount], facts={"userns": True}, **linux), "bind")
    assert step["idmap"] == {"uid_map": "0 99000 65536\n", "gid_map": "0 200000 65536\n",
                             "recursive": False}
    (step,) = steps_of(plan_of([IDMAPPED], facts={"userns": True}, **linux), "bind")
    assert step["idmap"]["uid_map"] == "0 100000 1000\n"


def test_relative_destinations_are_relative_to_the_container_root():
    (step,) = steps_of(plan_of([{"destination": "run/../data", "type": "tmpfs"}]), "fs")
    assert step["dest"] == "/data"


def test_a_mount_namespace_is_required():
    with pytest.raises(ConfigError) as info:
        plan_of(namespaces=[{"type": "pid"}])
    assert info.value.field == "linux.namespaces" and "mount namespace" in info.value.message
    assert plan_of(namespaces=[{"type": "mount", "path": "/proc/1/ns/mnt"}])["rootfs"] == "/b/rootfs"
