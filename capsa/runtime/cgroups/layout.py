"""The host's cgroup layout (v1, v2 or hybrid), read from the mounts themselves.

Owns parsing /proc/self/mountinfo and /proc/self/cgroup into plain JSON-serialisable data, and
the facts the systemd driver needs. Imports only os at load time; never writes anything.
"""
import os

# v1 controllers a mount's super options may name; anything else there is a mount option.
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls",
                  "net_prio", "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc")


def _unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo (fs/proc_namespace.c).
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def build_mounts(mountinfo_text):
    """[(root, mountpoint, fstype, super_options)] of every cgroup and cgroup2 mount, in order."""
    mounts = []
    for line in mountinfo_text.splitlines():
        before, sep, after = line.partition(" - ")
        if not sep:
            continue
        tail = after.split()
        if len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        head = before.split()
        mounts.append((_unescape(head[3]), _unescape(head[4]), tail[0], tail[2].split(",")))
    return mounts


def build_own_paths(cgroup_text):
    """/proc/self/cgroup → {controller: path}; the v2 line ("0::/x") is keyed "unified"."""
    own = {}
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            own["unified"] = parts[2]
            continue
        for name in parts[1].split(","):
            if name:
                own[name] = parts[2]
    return own


def _join_own(mountpoint, root, path):
    # Inside a cgroup namespace or a bind of a sub-tree, the mount's root is a prefix of the
    # path /proc/self/cgroup shows; what lies below the mount is only the rest of it.
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return (mountpoint.rstrip("/") + "/" + path.strip("/")).rstrip("/")


def build_layout(mountinfo_text, cgroup_text="", v2_controllers=(), systemd_running=False):
    """Pure: the layout dict from the texts of mountinfo, /proc/self/cgroup and cgroup.controllers."""
    v1 = {}
    roots = {}
    v2 = None
    v2_root = "/"
    for root, mountpoint, fstype, options in build_mounts(mountinfo_text):
        if fstype == "cgroup2":
            # The first cgroup2 mount of the whole tree wins; later ones are binds into containers.
            if v2 is None or (v2_root != "/" and root == "/"):
                v2, v2_root = mountpoint, root
            continue
        for option in options:
            if option in V1_CONTROLLERS or option.startswith("name="):
                if option not in v1 or (roots[option] != "/" and root == "/"):
                    v1[option] = mountpoint
                    roots[option] = root
    controllers = [name for name in v1 if not name.startswith("name=")]
    if v2 is None:
        mode = "v1"
    elif controllers:
        mode = "hybrid"
    else:
        mode = "v2"
    own_paths = build_own_paths(cgroup_text)
    own = {}
    for name, mountpoint in v1.items():
        own[name] = _join_own(mountpoint, roots[name], own_paths.get(name, "/"))
    if v2 is not None:
        own["unified"] = _join_own(v2, v2_root, own_paths.get("unified", "/"))
    return {"mode": mode, "v1": v1, "v2": v2, "v2_controllers": list(v2_controllers),
            "own": own, "systemd_running": bool(systemd_running)}


def _read_text(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode()
    except OSError:
        return ""


def read_layout(mountinfo_text=None, cgroup_text=None, v2_controllers=None, systemd_running=None):
    """The host's layout: {"mode", "v1": {controller: mountpoint}, "v2", "v2_controllers", "own",
    "systemd_running"}. Arguments left None are read from /proc/self and the cgroup2 mount."""
    if mountinfo_text is None:
        mountinfo_text = _read_text("/proc/self/mountinfo")
    if cgroup_text is None:
        cgroup_text = _read_text("/proc/self/cgroup")
    layout = build_layout(mountinfo_text, cgroup_text, (), False)
    if v2_controllers is None:
        v2_controllers = []
        if layout["v2"]:
            v2_controllers = _read_text(layout["v2"] + "/cgroup.controllers").split()
    layout["v2_controllers"] = list(v2_controllers)
    if systemd_running is None:
        # sd_booted(3): systemd is PID 1 exactly when this directory exists.
        systemd_running = os.path.isdir("/run/systemd/system")
    layout["systemd_running"] = bool(systemd_running)
    return layout


def read_systemd_facts():
    """What the systemd driver's translation needs: systemd's major version (property names
    changed over time) and /proc/devices' names (systemd allows "char-NAME", not "c 136:*")."""
    from capsa.runtime.cgroups.systemd import build_proc_devices
    from capsa.syscalls.dbus import read_systemd_version
    return {"version": read_systemd_version(),
            "devices": build_proc_devices(_read_text("/proc/devices"))}
