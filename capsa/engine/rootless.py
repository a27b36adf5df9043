"""Rootless `capsa`: an unprivileged user's engine runs inside a user and mount namespace of its
own (podman's model), where it is root: overlay mounts, layer ownership and the container's
namespaces all work there, and nothing it mounts is seen by the host.

Owns the user's default store, entering the namespace, and what rootless cannot do (yet).
Imports os and capsa's errors and kernel seam, lazily; must not import the runtime's commands.
"""
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
_HELPERS = ("/usr/bin/newuidmap", "/usr/bin/newgidmap")


def read_rootless():
    """True for an unprivileged caller: capsa then keeps its store in the user's home and
    enters a user namespace of its own before any command."""
    return os.geteuid() != 0


def read_default_store(environ):
    """$XDG_DATA_HOME/capsa, else ~/.local/share/capsa (podman keeps ~/.local/share/containers)."""
    base = environ.get("XDG_DATA_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "capsa")


def read_subordinate_range(path, name, own_id):
    """(start, count) of the first /etc/subuid or /etc/subgid line for this user, or None."""
    try:
        with open(path) as handle:
            for line in handle:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] in (name, str(own_id)) and \
                        fields[1].isdigit() and fields[2].isdigit() and int(fields[2]) > 0:
                    return int(fields[1]), int(fields[2])
    except OSError:
        return None
    return None


def build_id_maps(uid, gid, uid_range, gid_range):
    """The maps of the engine's namespace: root is the caller; ids 1… its subordinate range,
    when it has one for both uids and gids (then image files keep their owners)."""
    if uid_range and gid_range:
        return (["0", str(uid), "1", "1", str(uid_range[0]), str(uid_range[1])],
                ["0", str(gid), "1", "1", str(gid_range[0]), str(gid_range[1])])
    return None


def apply_enter_namespace(kernel=None):
    """unshare a user and a mount namespace and become root in it. With /etc/subuid and
    /etc/subgid ranges (and newuidmap/newgidmap), a child maps them from outside; without, the
    caller maps its own ids only (and setgroups is denied, the kernel's rule)."""
    import pwd
    from capsa.errors import KernelError
    if kernel is None:
        from capsa.syscalls.kernel import Kernel
        kernel = Kernel()
    uid, gid = os.geteuid(), os.getegid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    maps = None
    if all(os.access(helper, os.X_OK) for helper in _HELPERS):
        maps = build_id_maps(uid, gid, read_subordinate_range("/etc/subuid", name, uid),
                             read_subordinate_range("/etc/subgid", name, gid))
    if maps is None:
        kernel.unshare(CLONE_NEWUSER | CLONE_NEWNS)
        kernel.write_file("/proc/self/setgroups", "deny")
        kernel.write_file("/proc/self/uid_map", "0 %d 1\n" % uid)
        kernel.write_file("/proc/self/gid_map", "0 %d 1\n" % gid)
    else:
        _map_from_a_child(kernel, maps)
    kernel.setresgid(0, 0, 0)
    kernel.setresuid(0, 0, 0)
    try:
        # what the engine mounts from now on stays in its own namespace
        kernel.mount(None, "/", None, MS_REC | MS_PRIVATE)
    except KernelError:
        pass
    return "subordinate" if maps else "own"


def _map_from_a_child(kernel, maps):
    """newuidmap/newgidmap must run outside the new namespace: a child waits until we have
    unshared, maps us, and reports back through its exit status."""
    from capsa.errors import KernelError
    parent = os.getpid()
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        status = 1
        try:
            os.close(ready_w)
            os.read(ready_r, 1)
            for helper, args in zip(_HELPERS, maps):
                code, err = kernel.run_helper(helper, [os.path.basename(helper), str(parent)]
                                              + args)
                if code != 0:
                    os.write(2, ("capsa: %s: %s\n" % (os.path.basename(helper), err.strip()))
                             .encode())
                    break
            else:
                status = 0
        finally:
            os._exit(status)
    os.close(ready_r)
    try:
        kernel.unshare(CLONE_NEWUSER | CLONE_NEWNS)
    finally:
        os.write(ready_w, b"x")
        os.close(ready_w)
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise KernelError("newuidmap/newgidmap could not map this user's subordinate ids",
                          hint="check /etc/subuid and /etc/subgid, or remove the user's lines "
                               "to run with its own id only")


def check_rootless_request(req, command):
    """What a rootless engine cannot do yet, refused in one line each."""
    from capsa.errors import UsageError
    if req["detach"] or command == "create":
        raise UsageError("rootless capsa runs containers in the foreground only",
                         field="--detach" if req["detach"] else "create",
                         hint="run as root for detached containers, or drop -d")
    if req["network"] not in ("none", "host"):
        raise UsageError("a rootless container cannot join the %r network: bridges need root"
                         % req["network"], field="--network",
                         hint="use --network none (the rootless default) or host")
    if req["publish"]:
        raise UsageError("ports cannot be published by a rootless container", field="--publish",
                         hint="use --network host and listen on the port directly")


def build_unmapped_options_removed(spec, uid_map, gid_map):
    """Drop mount options naming ids the engine's namespace does not map (devpts gid=5 where
    only the caller's own id is mapped): the kernel refuses them with EINVAL."""
    from capsa.runtime.spec import map_id
    for mount in spec.get("mounts") or ():
        options = mount.get("options")
        if not options:
            continue
        kept = []
        for option in options:
            key, eq, value = option.partition("=")
            if eq and key in ("uid", "gid") and value.isdigit():
                if map_id(uid_map if key == "uid" else gid_map, int(value)) is None:
                    continue
            kept.append(option)
        mount["options"] = kept
    return spec


def read_own_maps():
    """This process's uid_map and gid_map, as the kernel shows them (inside → outside)."""
    maps = []
    for name in ("uid_map", "gid_map"):
        with open("/proc/self/" + name) as handle:
            maps.append("\n".join(" ".join(line.split()) for line in handle if line.strip()))
    return maps
