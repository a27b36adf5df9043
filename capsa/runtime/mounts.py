"""The mount-option table and the pure root-filesystem plan: spec mounts, /dev, cgroup views, masks.

`build_rootfs_plan` turns a spec into a JSON-serialisable list of steps that
capsa.runtime.apply.rootfs carries out; `features` reads the same tables. Imports only
posixpath, the fs constants and errors: no syscalls, no host reads.
"""
import posixpath

from capsa.errors import ConfigError
from capsa.syscalls.fs import (
    MOUNT_ATTR__ATIME, MOUNT_ATTR_NOATIME, MOUNT_ATTR_NODEV, MOUNT_ATTR_NODIRATIME,
    MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NOSYMFOLLOW, MOUNT_ATTR_RDONLY,
    MOUNT_ATTR_RELATIME, MOUNT_ATTR_STRICTATIME, MS_PRIVATE, MS_SHARED, MS_SLAVE, MS_UNBINDABLE)

# Per-mount attributes, applied with mount_setattr(2) to the top mount (or fsmount(2) attr flags):
# option -> (attrs to set, attrs to clear). The atime family is one 3-bit field: setting any value
# must clear MOUNT_ATTR__ATIME first (mount_setattr(2)).
MOUNT_OPTIONS = {
    "ro": (MOUNT_ATTR_RDONLY, 0), "rw": (0, MOUNT_ATTR_RDONLY),
    "nosuid": (MOUNT_ATTR_NOSUID, 0), "suid": (0, MOUNT_ATTR_NOSUID),
    "nodev": (MOUNT_ATTR_NODEV, 0), "dev": (0, MOUNT_ATTR_NODEV),
    "noexec": (MOUNT_ATTR_NOEXEC, 0), "exec": (0, MOUNT_ATTR_NOEXEC),
    "noatime": (MOUNT_ATTR_NOATIME, MOUNT_ATTR__ATIME), "atime": (0, MOUNT_ATTR_NOATIME),
    "relatime": (MOUNT_ATTR_RELATIME, MOUNT_ATTR__ATIME), "norelatime": (0, 0),
    "strictatime": (MOUNT_ATTR_STRICTATIME, MOUNT_ATTR__ATIME),
    "nostrictatime": (0, MOUNT_ATTR_STRICTATIME),
    "nodiratime": (MOUNT_ATTR_NODIRATIME, 0), "diratime": (0, MOUNT_ATTR_NODIRATIME),
    "nosymfollow": (MOUNT_ATTR_NOSYMFOLLOW, 0), "symfollow": (0, MOUNT_ATTR_NOSYMFOLLOW),
}

# The same attributes applied to every mount of the tree (mount_setattr AT_RECURSIVE, kernel 5.12).
RECURSIVE_OPTIONS = dict(("r" + name, value) for name, value in MOUNT_OPTIONS.items())

# Superblock options: handed to the filesystem (fsconfig flag); meaningless on a bind mount.
SUPERBLOCK_OPTIONS = frozenset(("sync", "async", "dirsync", "lazytime", "nolazytime", "mand",
                                "nomand", "acl", "noacl", "iversion", "noiversion"))

# option -> (propagation type, recursive)
PROPAGATION_OPTIONS = {
    "private": (MS_PRIVATE, False), "rprivate": (MS_PRIVATE, True),
    "shared": (MS_SHARED, False), "rshared": (MS_SHARED, True),
    "slave": (MS_SLAVE, False), "rslave": (MS_SLAVE, True),
    "unbindable": (MS_UNBINDABLE, False), "runbindable": (MS_UNBINDABLE, True),
}

# Words with a meaning of their own: bind kinds, runc's extensions, and no-ops runc accepts.
SPECIAL_OPTIONS = frozenset(("bind", "rbind", "tmpcopyup", "idmap", "ridmap", "defaults", "silent",
                             "loud"))

# Words engines leave in config.json for themselves (SELinux relabel, volume copy, chown).
ENGINE_OPTIONS = frozenset(("z", "Z", "U", "copy", "nocopy", "notmpcopyup"))

DEFAULT_DEVICES = (("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7),
                   ("/dev/random", 1, 8), ("/dev/urandom", 1, 9), ("/dev/tty", 5, 0))
DEV_LINKS = (("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
             ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"))
DEVICE_TYPES = {"c": 0o020000, "u": 0o020000, "b": 0o060000, "p": 0o010000}

# Filesystems the kernel refuses to mount unless the destination is a plain directory (never a
# symlink: CVE-2019-19921, CVE-2019-16884 pointed /proc at a host-controlled place).
STRICT_TARGETS = frozenset(("proc", "sysfs"))


# The only files a mount may cover inside /proc: those lxcfs emulates. Anything else could hide
# or redirect /proc/self/attr and friends from the LSM (CVE-2019-16884).
PROC_MOUNTS_ALLOWED = frozenset((
    "/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps",
    "/proc/uptime", "/proc/loadavg", "/proc/slabinfo", "/proc/sys/kernel/ns_last_pid",
    "/proc/sys/crypto/fips_enabled"))


def build_mount_features():
    """Every mount option word capsa accepts: what `features` advertises as mountOptions."""
    words = set(MOUNT_OPTIONS) | set(RECURSIVE_OPTIONS) | set(PROPAGATION_OPTIONS)
    return sorted(words | SUPERBLOCK_OPTIONS | SPECIAL_OPTIONS)


def build_mount_extensions():
    """features.json linux.mountExtensions: idmapped mounts (mount_setattr, kernel 5.12)."""
    return {"idmap": {"enabled": True}}


def _clean(path, field, relative_ok=False):
    if not isinstance(path, str) or not path:
        raise ConfigError("must be a non-empty path string", field=field)
    if "\0" in path:
        raise ConfigError("contains a NUL byte", field=field)
    if not path.startswith("/") and not relative_ok:
        raise ConfigError("%r is not absolute" % path, field=field,
                          hint="write the path as the container sees it, starting with /")
    return posixpath.normpath("/" + path.lstrip("/"))


def _add_attrs(pair, attrs):
    attrs[0] = (attrs[0] & ~pair[1]) | pair[0]
    attrs[1] = (attrs[1] & ~pair[0]) | pair[1]
    if (attrs[0] | attrs[1]) & MOUNT_ATTR__ATIME:
        # mount_setattr(2) takes an atime value only with the whole field in attr_clr.
        attrs[1] |= MOUNT_ATTR__ATIME


def build_mount_options(options, is_bind, field):
    """Translate option words into {attrs, rattrs, propagation, data, recursive, tmpcopyup}.

    `attrs`/`rattrs` are [set, clear] for mount_setattr; `data` is [[key, value-or-None]] for
    fsconfig; `propagation` is [[type, recursive]] in the order given.
    """
    if options is None:
        options = []
    if not isinstance(options, list):
        raise ConfigError("must be a list of option strings", field=field)
    out = {"attrs": [0, 0], "rattrs": [0, 0], "propagation": [], "data": [],
           "recursive": False, "tmpcopyup": False, "idmap": None}
    for index, word in enumerate(options):
        if not isinstance(word, str) or not word:
            raise ConfigError("option %d must be a non-empty string" % index, field=field)
        if word in MOUNT_OPTIONS:
            _add_attrs(MOUNT_OPTIONS[word], out["attrs"])
        elif word in RECURSIVE_OPTIONS:
            _add_attrs(RECURSIVE_OPTIONS[word], out["rattrs"])
        elif word in PROPAGATION_OPTIONS:
            out["propagation"].append(list(PROPAGATION_OPTIONS[word]))
        elif word == "rbind":
            out["recursive"] = True
        elif word == "tmpcopyup":
            out["tmpcopyup"] = True
        elif word in ("idmap", "ridmap"):
            out["idmap"] = word
        elif word in SPECIAL_OPTIONS or word in ENGINE_OPTIONS:
            continue
        elif is_bind and word in SUPERBLOCK_OPTIONS:
            raise ConfigError("%r is a filesystem option and has no effect on a bind mount" % word,
                              field=field, hint="remove it, or set it on the source mount")
        elif is_bind:
            raise ConfigError("unknown option %r for a bind mount" % word, field=field,
                              hint="use one of: " + ", ".join(build_mount_features()))
        elif "=" in word:
            key, value = word.split("=", 1)
            out["data"].append([key, value])
        else:
            # Filesystem-specific flags (newinstance, nr_inodes...): the filesystem judges them.
            out["data"].append([word, None])
    return out


def _is_bind(mount, options):
    return mount.get("type") == "bind" or "bind" in options or "rbind" in options


def build_mount(mount, index, bundle_dir):
    """One spec mount as a plan step {"op": "bind"|"fs", ...}; ConfigError names the field."""
    field = "mounts[%d]" % index
    if not isinstance(mount, dict):
        raise ConfigError("must be an object with destination, type, source, options", field=field)
    # runtime-spec 1.2 allows relative destinations on Linux: relative to the container's /.
    dest = _clean(mount.get("destination"), field + ".destination", relative_ok=True)
    if dest == "/":
        raise ConfigError("cannot mount over the container's root", field=field + ".destination",
                          hint="set root.path to the filesystem instead")
    options = mount.get("options") or []
    fstype = mount.get("type")
    if fstype is not None and not isinstance(fstype, str):
        raise ConfigError("must be a string", field=field + ".type")
    source = mount.get("source")
    if source is not None and (not isinstance(source, str) or "\0" in source):
        raise ConfigError("must be a path string", field=field + ".source")
    bind = isinstance(options, list) and _is_bind(mount, options)
    if dest == "/proc" and not bind and fstype != "proc":
        raise ConfigError("only a proc filesystem may be mounted on /proc", field=field + ".type",
                          hint='use "type": "proc"')
    if dest.startswith("/proc/") and dest not in PROC_MOUNTS_ALLOWED:
        raise ConfigError("mounts inside /proc are refused, except on " +
                          ", ".join(sorted(PROC_MOUNTS_ALLOWED)), field=field + ".destination")
    opts = build_mount_options(options, bind, field + ".options")
    step = {"field": field, "dest": dest, "attrs": opts["attrs"], "rattrs": opts["rattrs"],
            "propagation": opts["propagation"]}
    has_maps = bool(mount.get("uidMappings") or mount.get("gidMappings"))
    if (opts["idmap"] or has_maps) and not bind:
        raise ConfigError("idmapped mounts work only on bind mounts", field=field + ".options",
                          hint='add "bind" or "rbind", or drop idmap and the mappings')
    if bind:
        step["idmap"] = None
        if opts["idmap"] or has_maps:
            step["idmap"] = {"mount": mount, "recursive": opts["idmap"] == "ridmap"}
        if not source:
            raise ConfigError("a bind mount needs a source", field=field + ".source")
        if opts["tmpcopyup"]:
            raise ConfigError("tmpcopyup works only with type tmpfs", field=field + ".options")
        step.update(op="bind", source=posixpath.normpath(posixpath.join(bundle_dir, source)),
                    recursive=opts["recursive"])
        return step
    if not fstype or fstype == "none":
        raise ConfigError("a mount that is not a bind needs a filesystem type",
                          field=field + ".type",
                          hint='set "type" (e.g. tmpfs), or add "bind" or "rbind" to options')
    if opts["tmpcopyup"] and fstype != "tmpfs":
        raise ConfigError("tmpcopyup works only with type tmpfs", field=field + ".options")
    step.update(op="fs", fstype=fstype, source=source or fstype, data=opts["data"],
                tmpcopyup=opts["tmpcopyup"], strict=fstype in STRICT_TARGETS)
    return step


def _id_ranges(value, field):
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError("must be a list of {containerID, hostID, size}", field=field)
    ranges = []
    for index, item in enumerate(value):
        where = "%s[%d]" % (field, index)
        if not isinstance(item, dict):
            raise ConfigError("must be an object {containerID, hostID, size}", field=where)
        numbers = []
        for key in ("containerID", "hostID", "size"):
            number = item.get(key)
            if not isinstance(number, int) or isinstance(number, bool) or not \
                    0 <= number <= 0xFFFFFFFF or (key == "size" and number == 0):
                raise ConfigError("must be an integer from %d to 4294967295" % (key == "size"),
                                  field=where + "." + key)
            numbers.append(number)
        ranges.append(numbers)
    return ranges


def build_idmap(step, linux, userns):
    """The uid_map/gid_map texts of an idmapped bind ("containerID hostID size" lines, host ids
    as given); no mappings on the mount: the container's own."""
    mount = step["idmap"]["mount"]
    maps = {}
    for kind, key in (("uid", "uidMappings"), ("gid", "gidMappings")):
        field = "%s.%s" % (step["field"], key)
        ranges = _id_ranges(mount.get(key), field)
        if not ranges and userns:
            ranges = _id_ranges(linux.get(key), "linux." + key)
        if not ranges:
            raise ConfigError("idmap without mappings needs the container's user namespace",
                              field=field, hint="give uidMappings and gidMappings on the mount")
        maps[kind] = "".join("%d %d %d\n" % tuple(r) for r in ranges)
    return {"uid_map": maps["uid"], "gid_map": maps["gid"], "recursive": step["idmap"]["recursive"]}


def build_cgroup_steps(step, facts, has_cgroupns):
    """A `cgroup` mount as the container's own cgroups: cgroup2 on v2, a v1 tree of binds otherwise.

    Read-only when asked, everywhere in the tree (CVE-2023-25809: a writable /sys/fs/cgroup let a
    rootless container escape its limits).
    """
    layout = facts.get("cgroup_layout") or {}
    paths = facts.get("cgroup_paths") or {}
    dest, field = step["dest"], step["field"]
    readonly = step["attrs"][0] & MOUNT_ATTR_RDONLY
    sub_attrs = [step["attrs"][0] | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
                 step["attrs"][1]]
    if layout.get("mode") == "v2":
        if has_cgroupns or not paths.get("unified"):
            return [dict(step, fstype="cgroup2", source="cgroup", data=[], attrs=sub_attrs)]
        return [_cgroup_bind(field, paths["unified"], dest, sub_attrs)]
    tmpfs_attrs = [MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC, MOUNT_ATTR_RDONLY]
    steps = [{"op": "fs", "field": field, "dest": dest, "fstype": "tmpfs", "source": "tmpfs",
              "data": [["mode", "755"]], "attrs": tmpfs_attrs, "rattrs": [0, 0],
              "propagation": step["propagation"], "tmpcopyup": False, "strict": False}]
    by_mountpoint = {}
    for controller, mountpoint in sorted((layout.get("v1") or {}).items()):
        by_mountpoint.setdefault(mountpoint, []).append(controller)
    for mountpoint, controllers in sorted(by_mountpoint.items()):
        source = [paths[c] for c in controllers if paths.get(c)]
        if not source:
            continue  # a hierarchy the container has no cgroup in: never show the host's root
        name = posixpath.basename(mountpoint.rstrip("/"))
        steps.append(_cgroup_bind(field, source[0], posixpath.join(dest, name), sub_attrs))
        for controller in controllers:
            if controller != name and "=" not in controller and controller in name.split(","):
                steps.append({"op": "symlink", "field": field, "target": name,
                              "dest": posixpath.join(dest, controller), "replace": False})
    if layout.get("v2") and paths.get("unified"):
        name = posixpath.basename(layout["v2"].rstrip("/"))
        steps.append(_cgroup_bind(field, paths["unified"], posixpath.join(dest, name), sub_attrs))
    if readonly:
        steps.append({"op": "setattr", "field": field, "dest": dest,
                      "attrs": [MOUNT_ATTR_RDONLY, 0]})
    return steps


def _cgroup_bind(field, source, dest, attrs):
    return {"op": "bind", "field": field, "source": source, "dest": dest, "recursive": False,
            "attrs": list(attrs), "rattrs": [0, 0], "propagation": []}


def build_devices(linux, userns):
    """The default devices merged with linux.devices (same path: the spec wins), as plan steps."""
    devices = {}
    order = []
    for path, major, minor in DEFAULT_DEVICES:
        devices[path] = {"op": "device", "field": "linux.devices", "path": path, "type": "c",
                         "major": major, "minor": minor, "mode": 0o666, "uid": 0, "gid": 0}
        order.append(path)
    given = linux.get("devices") or []
    if not isinstance(given, list):
        raise ConfigError("must be a list of device objects", field="linux.devices")
    for index, device in enumerate(given):
        step = build_device(device, "linux.devices[%d]" % index)
        if step["path"] not in devices:
            order.append(step["path"])
        devices[step["path"]] = step
    steps = []
    for path in order:
        step = devices[path]
        step["bind"] = bool(userns)
        steps.append(step)
    return steps


def build_device(device, field):
    if not isinstance(device, dict):
        raise ConfigError("must be an object with path, type, major, minor", field=field)
    path = _clean(device.get("path"), field + ".path")
    if not path.startswith("/dev/"):
        raise ConfigError("%r is not under /dev" % path, field=field + ".path",
                          hint="device nodes may only be created inside /dev")
    kind = device.get("type")
    if kind not in DEVICE_TYPES:
        raise ConfigError("unknown device type %r" % (kind,), field=field + ".type",
                          hint="use c, b, u or p")
    numbers = []
    for key in ("major", "minor"):
        value = device.get(key, 0 if kind == "p" else None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError("must be a non-negative integer", field=field + "." + key)
        numbers.append(value)
    mode = device.get("fileMode", 0o666)
    ids = []
    for key in ("uid", "gid"):
        value = device.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError("must be a non-negative integer", field=field + "." + key)
        ids.append(value)
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
        raise ConfigError("must be permission bits between 0 and 0o7777", field=field + ".fileMode")
    return {"op": "device", "field": field, "path": path, "type": kind, "major": numbers[0],
            "minor": numbers[1], "mode": mode, "uid": ids[0], "gid": ids[1]}


def _paths(linux, key):
    values = linux.get(key) or []
    if not isinstance(values, list):
        raise ConfigError("must be a list of absolute paths", field="linux." + key)
    return [_clean(value, "linux.%s[%d]" % (key, index)) for index, value in enumerate(values)]


def build_rootfs_plan(spec, bundle_dir, facts):
    """The whole root-filesystem plan: {"rootfs", "readonly", "propagation", "no_pivot", "steps",
    "masked", "readonly_paths"}. Pure; every step names the spec field it came from."""
    root = spec.get("root")
    if not isinstance(root, dict) or not isinstance(root.get("path"), str) or not root["path"]:
        raise ConfigError("missing root filesystem path", field="root.path",
                          hint='set "root": {"path": "rootfs"}')
    if "\0" in root["path"]:
        raise ConfigError("contains a NUL byte", field="root.path")
    readonly = root.get("readonly", False)
    if not isinstance(readonly, bool):
        raise ConfigError("must be true or false", field="root.readonly")
    linux = spec.get("linux") or {}
    if not isinstance(linux, dict):
        raise ConfigError("must be an object", field="linux")
    propagation = linux.get("rootfsPropagation") or "rprivate"
    if propagation not in PROPAGATION_OPTIONS:
        raise ConfigError("unknown propagation %r" % (propagation,),
                          field="linux.rootfsPropagation",
                          hint="use one of: " + ", ".join(sorted(PROPAGATION_OPTIONS)))
    namespaces = linux.get("namespaces") or []
    types = [ns.get("type") for ns in namespaces if isinstance(ns, dict)]
    if "mount" not in types:
        # Every step below changes the mount table: in the host's namespace it would stay there.
        raise ConfigError("a container root filesystem needs a mount namespace",
                          field="linux.namespaces", hint='add {"type": "mount"}')
    has_cgroupns = "cgroup" in types
    mounts = spec.get("mounts") or []
    if not isinstance(mounts, list):
        raise ConfigError("must be a list of mount objects", field="mounts")
    steps = []
    setup_dev = True
    for index, mount in enumerate(mounts):
        step = build_mount(mount, index, bundle_dir)
        if step.get("idmap"):
            step["idmap"] = build_idmap(step, linux, facts.get("userns"))
        if step["dest"] == "/dev" and step["op"] == "bind":
            setup_dev = False  # runc's rule: a bind-mounted /dev is the user's, left untouched
        if step["op"] == "fs" and step["fstype"] == "cgroup":
            # marked: a rootless create that may not make its cgroups drops them (runc too)
            steps.extend(dict(part, cgroupfs=True)
                         for part in build_cgroup_steps(step, facts, has_cgroupns))
        else:
            steps.append(step)
    if setup_dev:
        steps.extend(build_devices(linux, facts.get("userns")))
        for target, path in DEV_LINKS:
            steps.append({"op": "symlink", "field": "/dev", "target": target, "dest": path,
                          "replace": False})
        # One ptmx per devpts instance: the container must use the one of its own /dev/pts.
        steps.append({"op": "symlink", "field": "/dev", "target": "pts/ptmx", "dest": "/dev/ptmx",
                      "replace": True})
        steps.append({"op": "mkdir", "field": "/dev", "dest": "/dev/shm", "mode": 0o1777})
    rootfs = posixpath.normpath(posixpath.join(bundle_dir, root["path"]))
    return {"rootfs": rootfs, "readonly": readonly,
            "propagation": list(PROPAGATION_OPTIONS[propagation]),
            "no_pivot": bool(facts.get("no_pivot")), "steps": steps,
            "masked": _paths(linux, "maskedPaths"),
            "readonly_paths": _paths(linux, "readonlyPaths")}
