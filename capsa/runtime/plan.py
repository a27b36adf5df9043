"""The plan: everything a container needs, built from config.json and host facts as pure data.

build_plan calls each section's builder (process, namespaces, rootfs, cgroups, security, hooks)
and returns JSON-serialisable dicts and lists; read_facts is the only host read. Must not
import the kernel seam or any apply_* code that changes state.
"""
import os

from capsa.errors import ConfigError
from capsa.runtime import spec as specs


# The host program a declared container runs as its init (minimal_containers' `init=@/path`):
# opened on the host before pivot_root and run with execveat, never copied into the rootfs.
HOST_INIT_ANNOTATION = "org.capsa.init.host-path"


def read_facts(systemd_cgroup=False):
    """Host facts the plan depends on; cheap reads only."""
    from capsa.runtime.cgroups.layout import read_layout, read_systemd_facts
    from capsa.userns import read_in_userns, read_setgroups_allowed
    from capsa.runtime.apply.security import read_security_facts
    layout = read_layout()
    if systemd_cgroup and layout["systemd_running"]:
        layout["systemd"] = read_systemd_facts()
    return {"cgroup_layout": layout, "security": read_security_facts(),
            "systemd_cgroup": systemd_cgroup, "euid": os.geteuid(), "egid": os.getegid(),
            "in_userns": read_in_userns(), "setgroups": read_setgroups_allowed()}


def _mounts_cgroupfs(spec):
    mounts = spec.get("mounts")
    return isinstance(mounts, list) and any(isinstance(mount, dict) and
                                            mount.get("type") in ("cgroup", "cgroup2")
                                            for mount in mounts)


def build_plan(spec, bundle, container_id, facts, options):
    """-> plan dict. `options`: no_pivot, preserve_fds, console_socket (from the command line)."""
    from capsa.runtime.mounts import build_rootfs_plan
    from capsa.runtime.cgroups.plan import build_cgroup_plan
    from capsa.runtime.apply.security import build_security_plan

    version = spec.get("ociVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise ConfigError("unsupported ociVersion %r" % (version,), field="ociVersion",
                          hint="capsa implements runtime-spec 1.x")
    linux = spec.get("linux")
    if linux is None:
        linux = {}
    if not isinstance(linux, dict):
        raise ConfigError("must be an object", field="linux")
    new, join = specs.build_namespaces(linux)
    userns = specs.build_id_maps(linux, "user" in new)
    if userns is not None:
        userns["writer"] = specs.build_map_writer(userns, facts.get("euid", 0),
                                                  facts.get("egid", 0))
    if "user" in new and userns is None:
        raise ConfigError("a new user namespace needs uidMappings and gidMappings",
                          field="linux.uidMappings")
    process = specs.build_process(spec.get("process"))
    hostname = spec.get("hostname")
    domainname = spec.get("domainname")
    for key, value in (("hostname", hostname), ("domainname", domainname)):
        if value is not None:
            if not isinstance(value, str) or len(value) > 64:
                raise ConfigError("must be a string of at most 64 bytes", field=key)
            if "uts" not in new:
                raise ConfigError("setting %s needs a new uts namespace" % key, field=key,
                                  hint='add {"type": "uts"} to linux.namespaces')
    if process["terminal"] and not options.get("console_socket") and not options.get("tty_ok"):
        raise ConfigError("process.terminal is true but no --console-socket was given",
                          field="process.terminal",
                          hint="pass --console-socket, or set terminal to false")
    if options.get("console_socket") and not process["terminal"]:
        raise ConfigError("--console-socket was given but process.terminal is false",
                          field="process.terminal", hint="set terminal to true, or drop the flag")
    annotations = spec.get("annotations")
    if annotations is None:
        annotations = {}
    if not isinstance(annotations, dict):
        raise ConfigError("must be an object of strings", field="annotations")
    host_init = annotations.get(HOST_INIT_ANNOTATION)
    if host_init is not None and (not isinstance(host_init, str) or not host_init.startswith("/")):
        raise ConfigError("must be an absolute host path", field="annotations." +
                          HOST_INIT_ANNOTATION)

    cgroup = build_cgroup_plan(linux, container_id, facts["cgroup_layout"],
                               facts.get("systemd_cgroup", False))
    facts = dict(facts)
    # device nodes are bind-mounted, not made, in any user namespace (runc's rule)
    facts.update(userns="user" in new or "user" in join or bool(facts.get("in_userns")),
                 no_pivot=bool(options.get("no_pivot")),
                 terminal=process["terminal"], cgroup_paths=cgroup.get("paths", {}))
    rootfs = build_rootfs_plan(spec, bundle, facts)
    security = build_security_plan(spec, facts["security"])
    needs_fork = bool({"pid", "time"} & (set(new) | set(join)))
    # a cgroupfs mounted fresh must see the container's cgroup namespace as its root
    cgroupfs_mounted = any(step.get("fstype") in ("cgroup", "cgroup2")
                           for step in rootfs.get("steps", ()))
    return {
        "id": container_id,
        "bundle": bundle,
        "rootfs_path": rootfs["rootfs"],
        "oci_version": version,
        "namespaces": {"new": new, "join": join},
        "userns": userns,
        # a new namespace mapped by the caller alone denies setgroups; so does one inherited
        # (and a child of a "deny" namespace inherits the deny, user_namespaces(7))
        "setgroups": (userns or {}).get("writer") != "self" and facts.get("setgroups", True),
        "needs_fork": needs_fork,
        # the cgroupfs mount needs the container's cgroup (namespace) before the rootfs; under
        # --systemd-cgroup its folders exist only once systemd has made the unit
        "rootfs_needs_cgroupns": (cgroupfs_mounted and ("cgroup" in new or "cgroup" in join)) or
                                 (bool(cgroup.get("systemd")) and _mounts_cgroupfs(spec)),
        "hostname": hostname,
        "domainname": domainname,
        "sysctl": specs.build_sysctl(linux, new, join),
        "time_offsets": specs.build_time_offsets(linux, "time" in new),
        "personality": specs.build_personality(linux),
        "process": process,
        "hooks": specs.build_hooks(spec),
        "rootfs": rootfs,
        "cgroup": cgroup,
        "security": security,
        "annotations": annotations,
        "preserve_fds": int(options.get("preserve_fds") or 0),
        "console_socket": options.get("console_socket"),
        "pidfd_socket": options.get("pidfd_socket"),
        "new_keyring": not options.get("no_new_keyring"),
        "host_init": host_init,
    }
