"""Switching the container process to its user: supplementary groups, gid, uid, umask.

Effectful through the kernel object only; capabilities across the switch are the security
module's (keepcaps before, capset after). Must not import launch or command modules.
"""
from capsa.errors import ConfigError, KernelError


def apply_identity(kernel, process, setgroups_allowed=True, field="process.user"):
    groups = list(process["additional_gids"])
    try:
        if setgroups_allowed:
            kernel.setgroups(groups)
        elif groups:
            raise ConfigError("additionalGids need setgroups, which this user namespace denies",
                              field=field + ".additionalGids")
        kernel.setresgid(process["gid"], process["gid"], process["gid"])
        kernel.setresuid(process["uid"], process["uid"], process["uid"])
    except KernelError as err:
        raise ConfigError("cannot switch to uid %d gid %d: %s" % (process["uid"], process["gid"],
                                                                  err.message), field=field,
                          hint="is the id mapped in the container's user namespace?")
    if process.get("umask") is not None:
        kernel.umask(process["umask"])
    else:
        kernel.umask(0o022)
