"""Rootless `capsa`: an unprivileged user's engine runs inside a user and mount namespace of its
own (podman's model), where it is root: overlay mounts, layer ownership and the container's
namespaces all work there, and nothing it mounts is seen by the host.

Owns the user's default store, the rootless namespace (made once, kept by a pause process,
joined by every command) and what rootless cannot do. Imports os, and capsa's errors, kernel
seam and state reader lazily; must not import the runtime's commands.
"""
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
_HELPERS = ("/usr/bin/newuidmap", "/usr/bin/newgidmap")


def read_rootless():
    """True for an unprivileged caller, and for a capsa started inside the rootless namespace
    (conmon's exit command): root there is an ordinary user outside."""
    if os.geteuid() != 0:
        return True
    from capsa.userns import read_inside_rootless
    return read_inside_rootless()


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


def apply_enter_namespace(store_root, kernel=None):
    """Enter the user's rootless namespace (a user and a mount namespace where the caller is
    root), made on first use and kept by a pause process, as podman does: every command,
    conmon's exit command included, joins the same one, so detached containers and their
    mounts stay reachable. Returns "joined", "made" or "inside"."""
    if kernel is None:
        from capsa.syscalls.kernel import Kernel
        kernel = Kernel()
    from capsa.userns import read_inside_rootless
    if os.geteuid() == 0 and read_inside_rootless():
        return "inside"
    import fcntl
    os.makedirs(store_root, mode=0o700, exist_ok=True)
    pid_file = os.path.join(store_root, "pause.pid")
    how = "joined"
    # two first commands at once must not make two namespaces: one would hold containers
    # that no later command could reach
    lock = os.open(pid_file + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pid = _read_pause(pid_file)
        if pid is None:
            pid = _start_pause(kernel, pid_file)
            how = "made"
    finally:
        os.close(lock)
    _join(kernel, pid)
    return how


def _read_pause(pid_file):
    """The pause process's pid if it still runs (same start time as recorded), else None."""
    from capsa.runtime.state import read_start_time
    try:
        with open(pid_file) as handle:
            pid, start = handle.read().split()
        pid = int(pid)
    except (OSError, ValueError):
        return None
    return pid if str(read_start_time(pid)) == start else None


def _join(kernel, pid):
    from capsa.errors import KernelError
    fds = []
    try:
        for name in ("user", "mnt"):
            fds.append(os.open("/proc/%d/ns/%s" % (pid, name), os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise KernelError("cannot reach the rootless namespace of pause process %d: %s"
                          % (pid, exc.strerror), hint="remove pause.pid from the store and retry")
    try:
        kernel.setns(fds[0], CLONE_NEWUSER)
        kernel.setns(fds[1], CLONE_NEWNS)
    finally:
        for fd in fds:
            os.close(fd)
    kernel.setresgid(0, 0, 0)
    kernel.setresuid(0, 0, 0)


def _start_pause(kernel, pid_file):
    """Fork the pause process: it leaves our session, unshares a user and a mount namespace,
    is mapped (by us, from outside, through newuidmap/newgidmap when the user has subordinate
    ranges; by itself to its own id otherwise), makes its mounts private and then only waits
    (catatonit -P where installed). Its pid and start time go to pid_file."""
    import pwd
    from capsa.errors import KernelError
    from capsa.runtime.state import read_start_time
    uid, gid = os.geteuid(), os.getegid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    maps = None
    if all(os.access(helper, os.X_OK) for helper in _HELPERS):
        maps = build_id_maps(uid, gid, read_subordinate_range("/etc/subuid", name, uid),
                             read_subordinate_range("/etc/subgid", name, gid))
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    child = os.fork()
    if child == 0:
        _pause_main(kernel, maps, uid, gid, to_child_r, to_parent_w,
                    (to_child_w, to_parent_r), pid_file + ".new")
    os.close(to_child_r)
    os.close(to_parent_w)
    try:
        if os.read(to_parent_r, 1) != b"u":
            raise KernelError("the rootless namespace could not be made (user namespaces off?)")
        if maps:
            for helper, args in zip(_HELPERS, maps):
                code, err = kernel.run_helper(helper, [os.path.basename(helper), str(child)]
                                              + args)
                if code != 0:
                    raise KernelError("%s could not map this user's subordinate ids: %s"
                                      % (os.path.basename(helper), err.strip()),
                                      hint="check /etc/subuid and /etc/subgid")
        os.write(to_child_w, b"m")
        if os.read(to_parent_r, 1) != b"r":
            raise KernelError("the rootless pause process failed to start")
    except BaseException:
        try:
            os.kill(child, 9)
        except OSError:
            pass
        raise
    finally:
        os.close(to_child_w)
        os.close(to_parent_r)
    # the pause process detached itself (double fork): reap the intermediate
    os.waitpid(child, 0)
    pause = int(_read_line(pid_file + ".new") or 0)
    start = read_start_time(pause) if pause else None
    if not pause or start is None:
        raise KernelError("the rootless pause process did not start")
    with open(pid_file + ".new", "w") as handle:
        handle.write("%d %s\n" % (pause, start))
    os.replace(pid_file + ".new", pid_file)
    return pause


def _read_line(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _pause_main(kernel, maps, uid, gid, from_parent, to_parent, others, pid_file_new):
    """In the forked child; never returns."""
    try:
        for fd in others:
            os.close(fd)
        os.setsid()
        kernel.unshare(CLONE_NEWUSER | CLONE_NEWNS)
        os.write(to_parent, b"u")
        if os.read(from_parent, 1) != b"m":
            os._exit(1)
        if maps is None:
            kernel.write_file("/proc/self/setgroups", "deny")
            kernel.write_file("/proc/self/uid_map", "0 %d 1\n" % uid)
            kernel.write_file("/proc/self/gid_map", "0 %d 1\n" % gid)
        kernel.setresgid(0, 0, 0)
        kernel.setresuid(0, 0, 0)
        kernel.mount(None, "/", None, MS_REC | MS_PRIVATE)
        pause = os.fork()
        if pause != 0:
            os._exit(0)
        # the grandchild: reparented to init, it keeps the namespaces for everyone
        with open(pid_file_new, "w") as handle:
            handle.write("%d" % os.getpid())
        os.write(to_parent, b"r")
        os.close(to_parent)
        os.close(from_parent)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, 65536)
        if os.access("/usr/bin/catatonit", os.X_OK):
            os.execv("/usr/bin/catatonit", ["catatonit", "-P"])
        while True:
            import signal
            signal.pause()
    except BaseException:
        os._exit(1)


def check_rootless_request(req):
    """What a rootless engine cannot do yet, refused in one line each."""
    from capsa.errors import UsageError
    if req["network"] not in ("slirp4netns", "none", "host"):
        raise UsageError("a rootless container cannot join the %r network: bridges need root"
                         % req["network"], field="--network",
                         hint="use slirp4netns (the rootless default), none or host")
    if req["publish"] and req["network"] != "slirp4netns":
        raise UsageError("ports are published through slirp4netns only", field="--publish",
                         hint="drop --network to use slirp4netns, the rootless default")


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
