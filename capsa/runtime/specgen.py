"""The default config.json that `capsa-runtime spec` writes: the same facts as `runc spec`.

Owns the default spec, its rootless variant and the switch to the hardened profile. Pure
data built from literals; imports nothing at module level (the hardened profile is imported
only when asked for).
"""

OCI_VERSION = "1.2.0"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_CAPS = ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# devpts gid=5 is the tty group of Debian-like images (and of capsa's busybox image).
_MOUNTS = (
    ("/proc", "proc", "proc", None),
    ("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
    ("/dev/pts", "devpts", "devpts",
     ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")),
    ("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777", "size=65536k")),
    ("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
    ("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
    ("/sys/fs/cgroup", "cgroup", "cgroup", ("nosuid", "noexec", "nodev", "relatime", "ro")),
)
NAMESPACES = ("pid", "network", "ipc", "uts", "mount", "cgroup")


def build_default_spec(args=None, rootless=False, terminal=True, hardened=False, uid=None,
                       gid=None):
    """Return a fresh OCI spec dict: busybox-friendly `sh` in a read-only ./rootfs.

    rootless: a user namespace mapping container root to the caller (uid/gid, default the
    effective ids), no network namespace, /sys bind-mounted, no uid=/gid= mount options and no
    device cgroup rules. hardened: Docker-like capabilities, seccomp and masked paths.
    """
    caps = list(DEFAULT_CAPS)
    spec = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": bool(terminal),
            "user": {"uid": 0, "gid": 0},
            "args": list(args) if args is not None else ["sh"],
            "env": [DEFAULT_PATH, "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": list(caps), "permitted": list(caps)},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "capsa",
        "mounts": [_build_mount(*m) for m in _MOUNTS],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": ns} for ns in NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }
    if hardened:
        _apply_hardened(spec)
    if rootless:
        _apply_rootless(spec, uid, gid)
    return spec


def _build_mount(destination, kind, source, options):
    mount = {"destination": destination, "type": kind, "source": source}
    if options is not None:
        mount["options"] = list(options)
    return mount


def _apply_rootless(spec, uid, gid):
    import os
    linux = spec["linux"]
    # an unprivileged user cannot create a network namespace it could configure, nor set
    # device cgroup rules; a fresh sysfs needs CAP_SYS_ADMIN over the host's net namespace.
    linux["namespaces"] = [ns for ns in linux["namespaces"]
                           if ns["type"] not in ("network", "user")] + [{"type": "user"}]
    linux.pop("resources", None)
    linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid() if uid is None else uid,
                             "size": 1}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid() if gid is None else gid,
                             "size": 1}]
    mounts = []
    for mount in spec["mounts"]:
        if mount["destination"] == "/sys":
            mounts.append({"destination": "/sys", "type": "none", "source": "/sys",
                           "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
            continue
        if "options" in mount:
            # only one id is mapped: gid=5 / uid= name ids that do not exist in the namespace
            mount["options"] = [o for o in mount["options"]
                                if not o.startswith(("uid=", "gid="))]
        mounts.append(mount)
    spec["mounts"] = mounts


def _apply_hardened(spec):
    try:
        from capsa.runtime.security import defaults
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("capsa.runtime.security"):
            raise
        from capsa.errors import ConfigError
        raise ConfigError("the hardened profile is not in this build of capsa", field="--hardened",
                          hint="run without --hardened")
    spec["process"]["capabilities"] = defaults.build_hardened_process_caps()
    spec["linux"]["seccomp"] = defaults.build_hardened_seccomp()
    spec["linux"]["maskedPaths"] = list(defaults.HARDENED_MASKED_PATHS)
    spec["linux"]["readonlyPaths"] = list(defaults.HARDENED_READONLY_PATHS)
