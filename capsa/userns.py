"""What user namespace this process runs in: the host's, or one where root is an unprivileged
host user (rootless). Host reads of /proc/self only, shared by the runtime and the engine;
imports nothing but os."""


def _read_map():
    try:
        with open("/proc/self/uid_map", "rb") as handle:
            return handle.read().split()
    except OSError:
        return None


def read_in_userns():
    """Whether this process runs in a user namespace other than the host's (rootless podman,
    `unshare -Ur`, capsa's own rootless namespace): there mknod and trusted.* xattrs are
    refused whatever the capabilities."""
    words = _read_map()
    return words is not None and words != [b"0", b"0", b"4294967295"]


def read_inside_rootless():
    """Whether this process is root of a user namespace whose root is an unprivileged host
    user (the rootless namespace, or one like it)."""
    words = _read_map()
    return bool(words) and len(words) >= 3 and words[0] == b"0" and words[1] != b"0"


def read_setgroups_allowed():
    """False when this process's user namespace denies setgroups(2) for good (`unshare -Ur`
    and any unprivileged one-id map do)."""
    try:
        with open("/proc/self/setgroups", "rb") as handle:
            return handle.read().strip() != b"deny"
    except OSError:
        return True
