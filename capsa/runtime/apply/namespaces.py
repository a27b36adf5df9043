"""Entering namespaces: joining them by path, unsharing new ones, id maps, host and time identity.

Effectful through the kernel object only; must not import the launch or command modules.
"""
import os

from capsa.errors import ConfigError, KernelError
from capsa.runtime.spec import NAMESPACES


def build_unshare_flags(types):
    flags = 0
    for kind in types:
        flags |= NAMESPACES[kind][0]
    return flags


def apply_join(kernel, join, types):
    """setns into each namespace of `types` that the plan joins by path, in the plan's order."""
    for kind in types:
        path = join.get(kind)
        if not path:
            continue
        try:
            fd = kernel.open(path, os.O_RDONLY)
        except KernelError as err:
            raise ConfigError("cannot open namespace %s: %s" % (path, err.message),
                              field="linux.namespaces[%s].path" % kind)
        try:
            kernel.setns(fd, NAMESPACES[kind][0])
        except KernelError as err:
            raise ConfigError("cannot join %s namespace %s: %s" % (kind, path, err.message),
                              field="linux.namespaces[%s].path" % kind,
                              hint="is it a %s namespace file (/proc/<pid>/ns/%s)?" %
                              (kind, NAMESPACES[kind][1]))
        finally:
            kernel.close(fd)


def apply_unshare(kernel, types):
    if types:
        kernel.unshare(build_unshare_flags(types))


_HELPERS = {"newuidmap": "/usr/bin/newuidmap", "newgidmap": "/usr/bin/newgidmap"}


def apply_id_maps(kernel, pid, userns):
    """Write a child's uid_map and gid_map from the host side (the parent)."""
    base = "/proc/%d/" % pid
    writer = userns.get("writer", "root")
    if writer == "helper":
        for tool, key in (("newuidmap", "uid_map"), ("newgidmap", "gid_map")):
            argv = [tool, str(pid)] + userns[key].split()
            status, err = kernel.run_helper(_HELPERS[tool], argv)
            if status != 0:
                raise ConfigError("%s refused the %s: %s" % (tool, key.replace("_", " "),
                                                             err.strip() or "exit %d" % status),
                                  field="linux.uidMappings" if key == "uid_map"
                                  else "linux.gidMappings",
                                  hint="an unprivileged user may map only its own id, or the "
                                       "ranges /etc/subuid and /etc/subgid give it (package "
                                       "uidmap)")
        return
    if writer == "self":
        # an unprivileged gid_map is accepted only once setgroups(2) is off for good
        kernel.write_file(base + "setgroups", "deny")
    kernel.write_file(base + "uid_map", userns["uid_map"])
    kernel.write_file(base + "gid_map", userns["gid_map"])


def apply_host_identity(kernel, hostname, domainname):
    if hostname is not None:
        kernel.sethostname(hostname)
    if domainname is not None:
        kernel.setdomainname(domainname)


def apply_time_offsets(kernel, offsets):
    """timens_offsets can only be written before any process enters the new time namespace."""
    if offsets:
        kernel.write_file("/proc/self/timens_offsets", offsets)
