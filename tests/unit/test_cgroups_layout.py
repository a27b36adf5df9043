"""Layout detection from mountinfo and /proc/self/cgroup texts: v1, v2, hybrid, namespaces."""
import json

from capsa.runtime.cgroups.layout import build_layout, build_mounts, read_layout

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
"""
V2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1 = """\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
"""


def test_hybrid_names_each_controller_and_the_unified_mount():
    layout = build_layout(HYBRID, "4:memory:/a/b\n2:cpu,cpuacct:/\n0::/c\n", ["hugetlb"])
    assert layout["mode"] == "hybrid"
    assert layout["v1"] == {"cpu": "/sys/fs/cgroup/cpu,cpuacct",
                            "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                            "memory": "/sys/fs/cgroup/memory",
                            "name=systemd": "/sys/fs/cgroup/systemd"}
    assert layout["v2"] == "/sys/fs/cgroup/unified"
    assert layout["v2_controllers"] == ["hugetlb"]
    assert layout["own"]["memory"] == "/sys/fs/cgroup/memory/a/b"
    assert layout["own"]["unified"] == "/sys/fs/cgroup/unified/c"
    assert json.loads(json.dumps(layout)) == layout


def test_pure_v2_and_pure_v1():
    assert build_layout(V2, "0::/user.slice\n", ["cpu", "memory"])["mode"] == "v2"
    assert build_layout(V2)["v1"] == {}
    layout = build_layout(V1)
    assert layout["mode"] == "v1" and layout["v2"] is None
    assert sorted(layout["v1"]) == ["memory", "pids"]


def test_only_a_named_hierarchy_beside_cgroup2_is_still_v2():
    text = ("40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n" + V2)
    assert build_layout(text)["mode"] == "v2"


def test_mount_inside_a_cgroup_namespace_strips_the_mount_root():
    text = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    layout = build_layout(text, "4:memory:/docker/abc/inner\n")
    assert layout["own"]["memory"] == "/sys/fs/cgroup/memory/inner"


def test_escaped_mountpoints_and_first_mount_wins():
    text = ("35 31 0:32 / /tmp/a\\040b rw - cgroup cgroup rw,net_cls\n"
            "36 31 0:32 / /tmp/later rw - cgroup cgroup rw,net_cls\n")
    assert build_mounts(text)[0][1] == "/tmp/a b"
    assert build_layout(text)["v1"]["net_cls"] == "/tmp/a b"


def test_read_layout_on_this_host_matches_proc_mounts():
    layout = read_layout()
    with open("/proc/self/mountinfo") as handle:
        mounts = handle.read()
    assert (" - cgroup2 " in mounts) == (layout["v2"] is not None)
    for controller, mountpoint in layout["v1"].items():
        assert " %s " % mountpoint in mounts
