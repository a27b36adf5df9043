"""config.json: loading it from a bundle, the tables of what capsa understands, and validation.

Owns the namespace, rlimit, scheduler and io-priority tables (the `features` command reads them)
and the checks of the process, namespace, id-mapping, hook and host-identity sections. Pure
apart from reading the bundle's config.json; must not import apply or syscalls modules.
"""
from capsa import jsonlite as json
import os

from capsa.errors import ConfigError

# OCI namespace type -> (clone flag, /proc/<pid>/ns/ name)
NAMESPACES = {
    "user": (0x10000000, "user"),
    "pid": (0x20000000, "pid"),
    "network": (0x40000000, "net"),
    "mount": (0x00020000, "mnt"),
    "ipc": (0x08000000, "ipc"),
    "uts": (0x04000000, "uts"),
    "cgroup": (0x02000000, "cgroup"),
    "time": (0x00000080, "time"),
}
# Joining order: the user namespace first, so the others' owners grant us the rights to enter.
NAMESPACE_ORDER = ("user", "ipc", "uts", "network", "pid", "time", "mount", "cgroup")

RLIMITS = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}
SCHED_POLICIES = {"SCHED_OTHER": 0, "SCHED_FIFO": 1, "SCHED_RR": 2, "SCHED_BATCH": 3,
                  "SCHED_ISO": 4, "SCHED_IDLE": 5, "SCHED_DEADLINE": 6}
SCHED_FLAGS = {"SCHED_FLAG_RESET_ON_FORK": 0x01, "SCHED_FLAG_RECLAIM": 0x02,
               "SCHED_FLAG_DL_OVERRUN": 0x04, "SCHED_FLAG_KEEP_POLICY": 0x08,
               "SCHED_FLAG_KEEP_PARAMS": 0x10, "SCHED_FLAG_UTIL_CLAMP_MIN": 0x20,
               "SCHED_FLAG_UTIL_CLAMP_MAX": 0x40}
IOPRIO_CLASSES = {"IOPRIO_CLASS_RT": 1, "IOPRIO_CLASS_BE": 2, "IOPRIO_CLASS_IDLE": 3}
PERSONALITY_DOMAINS = {"LINUX": 0x0000, "LINUX32": 0x0008}
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
              "poststop")
TIME_CLOCKS = {"monotonic": "monotonic", "boottime": "boottime"}
MAX_ID = 0xFFFFFFFF


def read_spec(bundle):
    """Load <bundle>/config.json; a missing or malformed file is one clear error."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ConfigError("no config.json in bundle %s" % bundle,
                          hint="create one with: capsa-runtime spec --bundle " + bundle)
    except OSError as exc:
        raise ConfigError("cannot read %s: %s" % (path, exc.strerror))
    try:
        spec = json.loads(data)
    except ValueError as exc:
        raise ConfigError("%s is not valid JSON: %s" % (path, exc))
    if not isinstance(spec, dict):
        raise ConfigError("%s must hold a JSON object" % path)
    return spec


def _want(value, kinds, field, what):
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in (
            kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ConfigError("must be %s" % what, field=field)
    return value


def _uint(value, field, limit=MAX_ID):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > limit:
        raise ConfigError("must be a whole number from 0 to %d, not %r" % (limit, value), field=field)
    return value


def _strings(value, field):
    _want(value, list, field, "a list of strings")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError("must be a string, not %r" % (item,), field="%s[%d]" % (field, index))
    return value


def build_namespaces(linux):
    """-> (new: [type], join: {type: path}) in NAMESPACE_ORDER; duplicates and unknowns refused."""
    entries = linux.get("namespaces") or []
    _want(entries, list, "linux.namespaces", "a list")
    seen = {}
    for index, entry in enumerate(entries):
        field = "linux.namespaces[%d]" % index
        _want(entry, dict, field, "an object with type and optional path")
        kind = entry.get("type")
        if kind not in NAMESPACES:
            raise ConfigError("unknown namespace type %r" % (kind,), field=field + ".type",
                              hint="use one of " + ", ".join(sorted(NAMESPACES)))
        if kind in seen:
            raise ConfigError("namespace %s is listed twice" % kind, field=field + ".type")
        path = entry.get("path") or ""
        if path and not os.path.isabs(path):
            raise ConfigError("namespace path must be absolute, not %r" % path, field=field + ".path")
        seen[kind] = path
    new = [kind for kind in NAMESPACE_ORDER if kind in seen and not seen[kind]]
    join = dict((kind, seen[kind]) for kind in NAMESPACE_ORDER if kind in seen and seen[kind])
    return new, join


def build_id_maps(linux, has_userns):
    """uid/gid mappings -> the text written to /proc/<pid>/{uid,gid}_map, or None."""
    maps = {}
    for key in ("uidMappings", "gidMappings"):
        entries = linux.get(key) or []
        _want(entries, list, "linux." + key, "a list")
        if entries and not has_userns:
            raise ConfigError("mappings need a new user namespace", field="linux." + key,
                              hint='add {"type": "user"} to linux.namespaces')
        lines = []
        for index, entry in enumerate(entries):
            field = "linux.%s[%d]" % (key, index)
            _want(entry, dict, field, "an object with containerID, hostID and size")
            inner = _uint(entry.get("containerID"), field + ".containerID")
            outer = _uint(entry.get("hostID"), field + ".hostID")
            size = _uint(entry.get("size"), field + ".size")
            if size == 0:
                raise ConfigError("size must be at least 1", field=field + ".size")
            lines.append("%d %d %d\n" % (inner, outer, size))
        maps[key] = "".join(lines)
    if has_userns and not (maps["uidMappings"] and maps["gidMappings"]):
        if not maps["uidMappings"] and not maps["gidMappings"]:
            return None
        raise ConfigError("a user namespace needs both uidMappings and gidMappings",
                          field="linux.uidMappings")
    if not has_userns:
        return None
    return {"uid_map": maps["uidMappings"], "gid_map": maps["gidMappings"]}


def build_map_writer(userns, euid, egid):
    """Who may write the maps (user_namespaces(7)): "root" writes any map; an unprivileged
    caller writes only a one-line map of its own id ("self", with setgroups denied first for
    gid_map); any other map needs the setuid helpers newuidmap/newgidmap ("helper")."""
    if euid == 0:
        return "root"
    own_uid = _single(userns["uid_map"])
    own_gid = _single(userns["gid_map"])
    if own_uid is not None and own_uid[1:] == (euid, 1) and \
            own_gid is not None and own_gid[1:] == (egid, 1):
        return "self"
    return "helper"


def _single(text):
    lines = text.splitlines()
    if len(lines) != 1:
        return None
    return tuple(int(word) for word in lines[0].split())


def map_id(id_map_text, inner):
    """Host id for container id `inner` under a map text, or None when it is not mapped."""
    if not id_map_text:
        return inner
    for line in id_map_text.splitlines():
        first, host, size = (int(part) for part in line.split())
        if first <= inner < first + size:
            return host + inner - first
    return None


def build_time_offsets(linux, has_timens):
    offsets = linux.get("timeOffsets")
    if not offsets:
        return ""
    _want(offsets, dict, "linux.timeOffsets", "an object")
    if not has_timens:
        raise ConfigError("time offsets need a new time namespace", field="linux.timeOffsets",
                          hint='add {"type": "time"} to linux.namespaces')
    lines = []
    for clock, value in sorted(offsets.items()):
        field = "linux.timeOffsets." + clock
        if clock not in TIME_CLOCKS:
            raise ConfigError("unknown clock %r" % clock, field=field, hint="use monotonic or boottime")
        _want(value, dict, field, "an object with secs and nanosecs")
        secs = value.get("secs", 0)
        nanos = value.get("nanosecs", 0)
        if not isinstance(secs, int) or isinstance(secs, bool):
            raise ConfigError("secs must be a whole number", field=field + ".secs")
        if not isinstance(nanos, int) or not 0 <= nanos < 1000000000:
            raise ConfigError("nanosecs must be from 0 to 999999999", field=field + ".nanosecs")
        lines.append("%s %d %d\n" % (TIME_CLOCKS[clock], secs, nanos))
    return "".join(lines)


def build_process(process, field="process"):
    """Validate an OCI process object -> the plan's process dict (used by create and exec)."""
    _want(process, dict, field, "an object")
    args = process.get("args")
    if not args:
        raise ConfigError("args must name the program to run", field=field + ".args",
                          hint='e.g. "args": ["sh"]')
    _strings(args, field + ".args")
    env = process.get("env") or []
    _strings(env, field + ".env")
    for index, item in enumerate(env):
        if "=" not in item:
            raise ConfigError("environment entry %r has no '='" % item,
                              field="%s.env[%d]" % (field, index), hint="write NAME=value")
    cwd = process.get("cwd") or "/"
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise ConfigError("cwd must be an absolute path, not %r" % (cwd,), field=field + ".cwd")
    user = process.get("user") or {}
    _want(user, dict, field + ".user", "an object")
    uid = _uint(user.get("uid", 0), field + ".user.uid")
    gid = _uint(user.get("gid", 0), field + ".user.gid")
    gids = [_uint(g, "%s.user.additionalGids[%d]" % (field, i))
            for i, g in enumerate(user.get("additionalGids") or [])]
    umask = user.get("umask")
    if umask is not None:
        umask = _uint(umask, field + ".user.umask", 0o7777)
    rlimits = []
    seen = set()
    for index, entry in enumerate(process.get("rlimits") or []):
        sub = "%s.rlimits[%d]" % (field, index)
        _want(entry, dict, sub, "an object with type, soft and hard")
        kind = entry.get("type")
        if kind not in RLIMITS:
            raise ConfigError("unknown rlimit %r" % (kind,), field=sub + ".type",
                              hint="use e.g. RLIMIT_NOFILE")
        if kind in seen:
            raise ConfigError("rlimit %s is listed twice" % kind, field=sub + ".type")
        seen.add(kind)
        soft = _uint(entry.get("soft", 0), sub + ".soft", 2 ** 64 - 1)
        hard = _uint(entry.get("hard", 0), sub + ".hard", 2 ** 64 - 1)
        if soft > hard:
            raise ConfigError("soft limit %d is above hard limit %d" % (soft, hard), field=sub)
        rlimits.append([RLIMITS[kind], soft, hard, kind])
    console = process.get("consoleSize") or {}
    _want(console, dict, field + ".consoleSize", "an object with height and width")
    oom = process.get("oomScoreAdj")
    if oom is not None and (not isinstance(oom, int) or not -1000 <= oom <= 1000):
        raise ConfigError("must be from -1000 to 1000", field=field + ".oomScoreAdj")
    plan = {
        "args": list(args), "env": list(env), "cwd": cwd, "uid": uid, "gid": gid,
        "additional_gids": gids, "umask": umask, "rlimits": rlimits,
        "terminal": bool(process.get("terminal")),
        "console_size": [_uint(console.get("height", 0), field + ".consoleSize.height", 65535),
                         _uint(console.get("width", 0), field + ".consoleSize.width", 65535)],
        "oom_score_adj": oom,
        "no_new_privileges": bool(process.get("noNewPrivileges")),
        "io_priority": _build_io_priority(process.get("ioPriority"), field + ".ioPriority"),
        "scheduler": _build_scheduler(process.get("scheduler"), field + ".scheduler"),
        "cpu_affinity": _build_affinity(process.get("execCPUAffinity"), field + ".execCPUAffinity"),
    }
    return plan


def _build_io_priority(value, field):
    if not value:
        return None
    _want(value, dict, field, "an object with class and priority")
    klass = value.get("class")
    if klass not in IOPRIO_CLASSES:
        raise ConfigError("unknown class %r" % (klass,), field=field + ".class",
                          hint="use IOPRIO_CLASS_RT, IOPRIO_CLASS_BE or IOPRIO_CLASS_IDLE")
    priority = _uint(value.get("priority", 0), field + ".priority", 7)
    return (IOPRIO_CLASSES[klass] << 13) | priority


def _build_scheduler(value, field):
    if not value:
        return None
    _want(value, dict, field, "an object")
    policy = value.get("policy")
    if policy not in SCHED_POLICIES:
        raise ConfigError("unknown policy %r" % (policy,), field=field + ".policy",
                          hint="use one of " + ", ".join(SCHED_POLICIES))
    flags = 0
    for index, name in enumerate(value.get("flags") or []):
        if name not in SCHED_FLAGS:
            raise ConfigError("unknown flag %r" % (name,), field="%s.flags[%d]" % (field, index))
        flags |= SCHED_FLAGS[name]
    nice = value.get("nice", 0)
    if not isinstance(nice, int) or not -20 <= nice <= 19:
        raise ConfigError("nice must be from -20 to 19", field=field + ".nice")
    return [SCHED_POLICIES[policy], flags, nice,
            _uint(value.get("priority", 0), field + ".priority", 99),
            _uint(value.get("runtime", 0), field + ".runtime", 2 ** 64 - 1),
            _uint(value.get("deadline", 0), field + ".deadline", 2 ** 64 - 1),
            _uint(value.get("period", 0), field + ".period", 2 ** 64 - 1)]


def parse_cpu_list(text, field):
    """'0-3,7' -> [0, 1, 2, 3, 7]."""
    cpus = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ConfigError("bad cpu list %r" % text, field=field, hint="write e.g. 0-3,7")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def _build_affinity(value, field):
    if not value:
        return None
    _want(value, dict, field, "an object with initial and final")
    return {"initial": parse_cpu_list(value.get("initial", ""), field + ".initial") or None,
            "final": parse_cpu_list(value.get("final", ""), field + ".final") or None}


def build_hooks(spec):
    hooks = spec.get("hooks") or {}
    _want(hooks, dict, "hooks", "an object")
    plan = {}
    for kind, entries in hooks.items():
        if kind not in HOOK_KINDS:
            raise ConfigError("unknown hook kind %r" % kind, field="hooks." + kind,
                              hint="use one of " + ", ".join(HOOK_KINDS))
        _want(entries, list, "hooks." + kind, "a list")
        plan[kind] = []
        for index, hook in enumerate(entries):
            field = "hooks.%s[%d]" % (kind, index)
            _want(hook, dict, field, "an object with path")
            path = hook.get("path")
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError("path must be absolute", field=field + ".path")
            timeout = hook.get("timeout")
            if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
                raise ConfigError("timeout must be a positive number of seconds",
                                  field=field + ".timeout")
            plan[kind].append({"path": path,
                               "args": list(_strings(hook.get("args") or [path], field + ".args")),
                               "env": list(_strings(hook.get("env") or [], field + ".env")),
                               "timeout": timeout})
    return plan


def build_sysctl(linux, new_namespaces, joined=()):
    """Validate sysctls: only keys a namespace of the container's isolates (as runc). One
    joined by path counts (rootless podman hands over the network namespace slirp4netns
    serves); the launcher refuses a joined network namespace that is the host's own."""
    owned = set(new_namespaces) | set(joined)
    sysctl = linux.get("sysctl") or {}
    _want(sysctl, dict, "linux.sysctl", "an object of key: value strings")
    for key, value in sysctl.items():
        field = "linux.sysctl." + key
        if not isinstance(value, str):
            raise ConfigError("value must be a string", field=field)
        if "/" in key.replace(".", "") or ".." in key or not key:
            raise ConfigError("bad sysctl name", field=field)
        if key.startswith("net.") and "network" not in owned:
            raise ConfigError("needs a network namespace of the container's", field=field,
                              hint="the host's network sysctls are not the container's to set")
        elif key.startswith(("kernel.msg", "kernel.sem", "kernel.shm", "fs.mqueue.")) or \
                key == "kernel.shm_rmid_forced":
            if "ipc" not in owned:
                raise ConfigError("needs an ipc namespace of the container's", field=field)
        elif key in ("kernel.hostname", "kernel.domainname"):
            if "uts" not in owned:
                raise ConfigError("needs a uts namespace of the container's", field=field)
        elif not key.startswith(("net.", "kernel.msg", "kernel.sem", "kernel.shm", "fs.mqueue.")):
            raise ConfigError("sysctl %s is not namespaced: it would change the host" % key,
                              field=field)
    return dict(sysctl)


def build_personality(linux):
    persona = linux.get("personality")
    if not persona:
        return None
    _want(persona, dict, "linux.personality", "an object with domain")
    domain = persona.get("domain")
    if domain not in PERSONALITY_DOMAINS:
        raise ConfigError("unknown domain %r" % (domain,), field="linux.personality.domain",
                          hint="use LINUX or LINUX32")
    if persona.get("flags"):
        raise ConfigError("personality flags are not supported", field="linux.personality.flags",
                          hint="remove them")
    return PERSONALITY_DOMAINS[domain]
