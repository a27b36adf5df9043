"""Capabilities, no_new_privs, LSM exec labels and seccomp of the container process: the plan built
from config.json (pure), the host facts it needs, compiling the filter before fork, and applying
it all in the init around the uid switch. Must not import launch or command modules; libseccomp
only through capsa.syscalls.seccomp and only in prepare_security (host side, before fork).
"""
import os

from capsa.errors import ConfigError, ContainerError, KernelError
from capsa.runtime.security import tables

PROC_SUPER_MAGIC = 0x9FA0
EPERM = 1
ENOENT = 2
ENOSYS = 38
_MAX_U64 = (1 << 64) - 1

# id(plan["seccomp"]) -> (that dict, BPF bytes): filled by prepare_security before fork, read by
# the init, which can no longer import libseccomp or anything else (imports are sealed).
_PROGRAMS = {}


# ---------------------------------------------------------------- host facts

def read_security_facts():
    """Cheap host reads for build_security_plan: cap_last_cap, active LSMs, seccomp actions.
    libseccomp is not loaded here (only a spec with linux.seccomp needs it)."""
    try:
        last = int(_read_text("/proc/sys/kernel/cap_last_cap"))
    except (OSError, ValueError):
        last = len(tables.CAPABILITIES) - 1
    try:
        actions = _read_text("/proc/sys/kernel/seccomp/actions_avail").split()
    except OSError:
        actions = None
    return {"cap_last_cap": last, "lsms": read_active_lsms(), "seccomp_actions": actions}


def read_seccomp_facts():
    """libseccomp's version, the architectures it knows and the filter flags the kernel takes
    (loads libseccomp: for `features`, not for every create)."""
    from capsa.syscalls import seccomp as libseccomp
    version = libseccomp.read_libseccomp_version()
    facts = {"libseccomp": version, "seccomp_arches": [], "seccomp_flags": []}
    if version:
        known = set(libseccomp.read_known_arches(list(tables.SECCOMP_ARCHES.values())))
        facts["seccomp_arches"] = sorted(name for name, lib in tables.SECCOMP_ARCHES.items()
                                         if lib in known)
    bits = libseccomp.read_supported_flags(list(tables.SECCOMP_FLAGS.values()))
    facts["seccomp_flags"] = sorted(name for name, bit in tables.SECCOMP_FLAGS.items()
                                    if bit in bits)
    return facts


def read_active_lsms():
    """Active LSMs among those capsa labels for: securityfs's list, else each LSM's own sign."""
    try:
        names = _read_text("/sys/kernel/security/lsm").strip().split(",")
        return sorted(name for name in names if name in tables.LSM_EXEC_ATTRS)
    except OSError:
        pass
    active = []
    try:
        if _read_text("/sys/module/apparmor/parameters/enabled").strip() == "Y":
            active.append("apparmor")
    except OSError:
        pass
    if os.path.exists("/sys/fs/selinux/enforce"):
        active.append("selinux")
    return active


def _read_text(path):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode()
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the plan (pure)

def build_security_plan(spec, facts):
    """-> {"caps", "no_new_privileges", "apparmor", "selinux", "seccomp", "seccomp_before_start"}:
    JSON-serialisable; every field checked, errors name the JSON path and the fix."""
    process = spec.get("process")
    if process is None:
        process = {}
    if not isinstance(process, dict):
        raise ConfigError("must be an object", field="process")
    nnp = process.get("noNewPrivileges", False)
    if not isinstance(nnp, bool):
        raise ConfigError("must be true or false", field="process.noNewPrivileges")
    linux = spec.get("linux")
    if linux is None:
        linux = {}
    if not isinstance(linux, dict):
        raise ConfigError("must be an object", field="linux")
    seccomp = build_seccomp_plan(linux.get("seccomp"), facts)
    return {
        "caps": build_caps_plan(process.get("capabilities"), facts),
        "no_new_privileges": nnp,
        "apparmor": _build_label(process, "apparmorProfile", "apparmor", facts),
        "selinux": _build_label(process, "selinuxLabel", "selinux", facts),
        "seccomp": seccomp,
        # a notify fd must reach the listener while `create` still runs (runc does the same)
        "seccomp_before_start": bool(seccomp and seccomp["listener"]),
    }


def build_caps_plan(capabilities, facts):
    """process.capabilities -> numbers and masks. Absent sets are empty (runc: no capability
    unless asked for); names must be known to the running kernel."""
    field = "process.capabilities"
    if capabilities is None:
        capabilities = {}
    if not isinstance(capabilities, dict):
        raise ConfigError("must be an object with bounding, effective, permitted, inheritable "
                          "and ambient lists", field=field)
    last = facts.get("cap_last_cap", len(tables.CAPABILITIES) - 1)
    sets = {}
    for key in tables.CAP_SETS:
        names = capabilities.get(key)
        if names is None:
            names = []
        if not isinstance(names, list):
            raise ConfigError("must be a list of capability names", field="%s.%s" % (field, key))
        numbers = []
        for index, name in enumerate(names):
            numbers.append(_cap_number(name, last, "%s.%s[%d]" % (field, key, index)))
        sets[key] = sorted(set(numbers))
    for key in capabilities:
        if key not in tables.CAP_SETS:
            raise ConfigError("unknown capability set %r" % key, field=field,
                              hint="use " + ", ".join(tables.CAP_SETS))
    bounding = set(sets["bounding"])
    permitted = set(sets["permitted"])
    for key, allowed, why in (("effective", permitted, "permitted"),
                              ("inheritable", bounding, "bounding")):
        for number in sets[key]:
            if number not in allowed:
                raise ConfigError("%s is not in the %s set, so the kernel refuses it" % (
                    tables.CAPABILITIES[number], why), field="%s.%s" % (field, key),
                    hint="add it to %s.%s too, or remove it" % (field, why))
    return {
        "drop": [number for number in range(last + 1) if number not in bounding],
        "bounding": sets["bounding"],
        "effective": _mask(sets["effective"]),
        "permitted": _mask(sets["permitted"]),
        "inheritable": _mask(sets["inheritable"]),
        "ambient": sets["ambient"],
    }


def _cap_number(name, last, field):
    if not isinstance(name, str):
        raise ConfigError("must be a capability name such as CAP_CHOWN, not %r" % (name,),
                          field=field)
    key = name.upper()
    if not key.startswith("CAP_"):
        key = "CAP_" + key
    number = tables.CAP_NUMBERS.get(key)
    if number is None:
        raise ConfigError("unknown capability %r" % name, field=field,
                          hint="use a name from capabilities(7), such as CAP_NET_BIND_SERVICE")
    if number > last:
        raise ConfigError("%s is not known to this kernel (it knows up to %s)" % (
            key, tables.CAPABILITIES[last]), field=field, hint="remove it")
    return number


def _mask(numbers):
    mask = 0
    for number in numbers:
        mask |= 1 << number
    return mask


def _build_label(process, key, lsm, facts):
    value = process.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or "\n" in value or "\0" in value:
        raise ConfigError("must be a one-line string", field="process." + key)
    if lsm not in facts.get("lsms", ()):
        if lsm == "apparmor" and value == "unconfined":
            return None  # what a host without AppArmor gives anyway (engines pass it explicitly)
        title = {"apparmor": "AppArmor", "selinux": "SELinux"}[lsm]
        raise ConfigError("%s is not active on this host, so %r cannot be applied" % (
            title, value), field="process." + key,
            hint="remove process.%s, or enable %s on the host" % (key, title))
    return value


def build_seccomp_plan(section, facts):
    """linux.seccomp -> {"default", "arches", "flags", "rules", "listener", ...} or None.
    Rules follow runc: one rule per name; args on distinct indexes are ANDed in one rule,
    repeated indexes give one rule per arg; a rule whose action is the default is dropped."""
    field = "linux.seccomp"
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError("must be an object", field=field)
    available = facts.get("seccomp_actions")
    default = _action(section.get("defaultAction"), section.get("defaultErrnoRet"), available,
                      field + ".defaultAction", field + ".defaultErrnoRet")
    if section.get("defaultAction") == "SCMP_ACT_NOTIFY":
        raise ConfigError("SCMP_ACT_NOTIFY cannot be the default action", field=field +
                          ".defaultAction", hint="notify on named syscalls instead")
    arches = []
    for index, name in enumerate(_list(section.get("architectures"), field + ".architectures")):
        if name not in tables.SECCOMP_ARCHES:
            raise ConfigError("unknown architecture %r" % (name,),
                              field="%s.architectures[%d]" % (field, index),
                              hint="use names such as SCMP_ARCH_X86_64, SCMP_ARCH_AARCH64")
        if tables.SECCOMP_ARCHES[name] not in arches:
            arches.append(tables.SECCOMP_ARCHES[name])
    flags = 0
    flag_names = []
    for index, name in enumerate(_list(section.get("flags"), field + ".flags")):
        if name not in tables.SECCOMP_FLAGS:
            raise ConfigError("unknown seccomp flag %r" % (name,),
                              field="%s.flags[%d]" % (field, index),
                              hint="use " + ", ".join(sorted(tables.SECCOMP_FLAGS)))
        flags |= tables.SECCOMP_FLAGS[name]
        flag_names.append(name)
    rules = []
    other_names = set()
    notify = False
    for index, call in enumerate(_list(section.get("syscalls"), field + ".syscalls")):
        where = "%s.syscalls[%d]" % (field, index)
        if not isinstance(call, dict):
            raise ConfigError("must be an object with names and action", field=where)
        names = call.get("names")
        if not isinstance(names, list) or not names:
            raise ConfigError("must be a non-empty list of syscall names", field=where + ".names")
        action = _action(call.get("action"), call.get("errnoRet"), available, where + ".action",
                         where + ".errnoRet")
        args = _build_args(call.get("args"), where + ".args")
        for position, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise ConfigError("must be a syscall name", field="%s.names[%d]" % (where, position))
            if call.get("action") == "SCMP_ACT_NOTIFY":
                notify = True
                if name in tables.SECCOMP_NO_NOTIFY:
                    raise ConfigError("SCMP_ACT_NOTIFY cannot be used for %s: the runtime needs "
                                      "it after loading the filter" % name,
                                      field="%s.names[%d]" % (where, position))
            if action == default:
                other_names.add(name)
                continue
            for group in args:
                rules.append({"name": name, "action": action, "args": group, "field": where})
    listener_path = section.get("listenerPath") or ""
    metadata = section.get("listenerMetadata") or ""
    for key, value in (("listenerPath", listener_path), ("listenerMetadata", metadata)):
        if not isinstance(value, str):
            raise ConfigError("must be a string", field=field + "." + key)
    if notify and not listener_path:
        raise ConfigError("SCMP_ACT_NOTIFY needs a listener", field=field + ".listenerPath",
                          hint="set listenerPath to the unix socket of your seccomp agent")
    kernel_flags = flags
    if not notify:
        # only means something for a listener, and seccomp(2) refuses it without one
        kernel_flags &= ~tables.SECCOMP_FLAGS["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
    else:
        kernel_flags |= tables.SECCOMP_FLAG_NEW_LISTENER
        if flags & tables.SECCOMP_FLAGS["SECCOMP_FILTER_FLAG_TSYNC"]:
            kernel_flags |= tables.SECCOMP_FLAG_TSYNC_ESRCH
    # runc's rule: syscalls newer than the profile answer ENOSYS unless the default already
    # lets them through (allow, log, trace) or already is ENOSYS
    stub = section["defaultAction"] not in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE") \
        and default != tables.SECCOMP_ACTIONS["SCMP_ACT_ERRNO"][0] | ENOSYS
    return {"default": default, "arches": arches, "flag_names": flag_names,
            "flags": kernel_flags, "rules": rules, "other_names": sorted(other_names),
            "enosys_stub": stub, "listener": notify,
            "listener_path": listener_path if notify else "", "metadata": metadata}


def _list(value, field):
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError("must be a list", field=field)
    return value


def _action(name, errno_ret, available, field, errno_field):
    if name not in tables.SECCOMP_ACTIONS:
        raise ConfigError("unknown seccomp action %r" % (name,), field=field,
                          hint="use one of " + ", ".join(sorted(tables.SECCOMP_ACTIONS)))
    value, word = tables.SECCOMP_ACTIONS[name]
    if available is not None and word not in available:
        raise ConfigError("%s is not supported by this kernel" % name, field=field,
                          hint="/proc/sys/kernel/seccomp/actions_avail lists what is")
    if name in tables.SECCOMP_ACTIONS_WITH_ERRNO:
        if errno_ret is None:
            errno_ret = EPERM
        if not isinstance(errno_ret, int) or isinstance(errno_ret, bool) or \
                not 0 <= errno_ret <= 0xFFFF:
            raise ConfigError("must be an errno number from 0 to 65535", field=errno_field)
        return value | errno_ret
    if errno_ret is not None:
        raise ConfigError("only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take an errno", field=errno_field,
                          hint="remove it, or change the action")
    return value


def _build_args(args, field):
    """-> list of arg groups, each a list of [index, op, value, valueTwo] (one libseccomp rule)."""
    args = _list(args, field)
    if not args:
        return [[]]
    out = []
    for index, arg in enumerate(args):
        where = "%s[%d]" % (field, index)
        if not isinstance(arg, dict):
            raise ConfigError("must be an object with index, value, op", field=where)
        number = arg.get("index")
        if not isinstance(number, int) or isinstance(number, bool) or \
                not 0 <= number < tables.SECCOMP_MAX_ARGS:
            raise ConfigError("must be an argument index from 0 to 5", field=where + ".index")
        op = tables.SECCOMP_OPERATORS.get(arg.get("op"))
        if op is None:
            raise ConfigError("unknown operator %r" % (arg.get("op"),), field=where + ".op",
                              hint="use one of " + ", ".join(sorted(tables.SECCOMP_OPERATORS)))
        values = []
        for key in ("value", "valueTwo"):
            value = arg.get(key, 0)
            if value is None:
                value = 0
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_U64:
                raise ConfigError("must be a whole number from 0 to 2^64-1", field=where + "." + key)
            values.append(value)
        out.append([number, op, values[0], values[1]])
    indexes = [arg[0] for arg in out]
    if len(set(indexes)) == len(indexes):
        return [out]
    return [[arg] for arg in out]


def build_security_features(facts):
    """The linux.capabilities/seccomp/apparmor/selinux part of features.json, from the tables.
    Reads libseccomp's facts itself when `facts` lacks them (read_seccomp_facts)."""
    if "libseccomp" not in facts:
        facts = dict(facts)
        facts.update(read_seccomp_facts())
    last = facts.get("cap_last_cap", len(tables.CAPABILITIES) - 1)
    available = facts.get("seccomp_actions")
    actions = sorted(name for name, (_, word) in tables.SECCOMP_ACTIONS.items()
                     if available is None or word in available)
    lsms = facts.get("lsms", ())
    return {
        "capabilities": list(tables.CAPABILITIES[:last + 1]),
        "seccomp": {
            "enabled": bool(facts.get("libseccomp")),
            "actions": actions,
            "operators": sorted(tables.SECCOMP_OPERATORS),
            "archs": list(facts.get("seccomp_arches") or []),
            "knownFlags": sorted(tables.SECCOMP_FLAGS),
            "supportedFlags": list(facts.get("seccomp_flags") or []),
        },
        "apparmor": {"enabled": "apparmor" in lsms},
        "selinux": {"enabled": "selinux" in lsms},
    }


# ---------------------------------------------------------------- before fork (host side)

def prepare_security(plan, cache_dir=None):
    """Compile the seccomp filter with libseccomp, on the host, before fork: the init cannot
    import or load libraries once it is inside the container. -> names skipped as unknown.
    Compiling Docker's profile takes ~17 ms, reading it back from `cache_dir` (default
    $CAPSA_SECCOMP_CACHE, else /run/capsa-seccomp for root; "" disables) well under 1 ms."""
    seccomp = plan.get("seccomp")
    if not seccomp:
        return []
    from capsa.syscalls import seccomp as libseccomp
    if seccomp["flag_names"]:
        wanted = [tables.SECCOMP_FLAGS[name] for name in seccomp["flag_names"]]
        supported = libseccomp.read_supported_flags(wanted)
        for name in seccomp["flag_names"]:
            if tables.SECCOMP_FLAGS[name] not in supported:
                raise ConfigError("%s is not supported by this kernel" % name,
                                  field="linux.seccomp.flags", hint="remove it")
    if cache_dir is None:
        cache_dir = os.environ.get("CAPSA_SECCOMP_CACHE")
        if cache_dir is None and os.geteuid() == 0:
            # beside, not below, the default --root /run/capsa: there every folder is a container
            cache_dir = "/run/capsa-seccomp"
    key = None
    cached = None
    if cache_dir:
        key = _cache_key(seccomp, libseccomp.read_libseccomp_version())
        cached = _read_cache(cache_dir, key)
    if cached is None:
        program, skipped = libseccomp.compile_filter(seccomp)
        if key:
            _write_cache(cache_dir, key, program, skipped)
    else:
        program, skipped = cached
    if len(_PROGRAMS) >= 16:
        _PROGRAMS.clear()  # a long-lived caller (the engine in-process) must not pile them up
    _PROGRAMS[id(seccomp)] = (seccomp, program)
    return skipped


def _cache_key(seccomp, version):
    from capsa import jsonlite as json
    try:
        from _sha256 import sha256  # the builtin: 1 ms to import, hashlib costs 4 to 19 ms
    except ImportError:
        from hashlib import sha256
    text = json.dumps([seccomp, version, os.uname().machine], sort_keys=True)
    return sha256(text.encode()).hexdigest()


def _read_cache(cache_dir, key):
    """A cached program, trusted only in a folder and file of our own that nobody else can
    write; anything odd is a miss (the caller compiles again)."""
    from capsa import jsonlite as json
    try:
        info = os.lstat(cache_dir)
        if info.st_uid != os.geteuid() or info.st_mode & 0o022 or not os.path.isdir(cache_dir):
            return None
        fd = os.open(os.path.join(cache_dir, key + ".bpf"),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or info.st_mode & 0o022 or info.st_size > 1 << 20:
            return None
        data = os.read(fd, info.st_size)
    finally:
        os.close(fd)
    header, _, program = data.partition(b"\n")
    if not program or len(program) % 8:
        return None
    try:
        skipped = json.loads(header)["skipped"]
    except (ValueError, KeyError, TypeError):
        return None
    return program, skipped


def _write_cache(cache_dir, key, program, skipped):
    """Best effort: a cache that cannot be written only costs the next start-up a compile."""
    from capsa import jsonlite as json
    path = os.path.join(cache_dir, key + ".bpf")
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        os.makedirs(cache_dir, 0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, json.dumps({"skipped": skipped}).encode() + b"\n" + program)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def read_prepared_program(seccomp):
    """The BPF prepare_security compiled for this seccomp plan, or None."""
    entry = _PROGRAMS.get(id(seccomp))
    if entry is None or entry[0] is not seccomp:
        return None
    return entry[1]


# ---------------------------------------------------------------- in the init

def apply_before_identity(kernel, plan):
    """Before the uid switch: shrink the bounding set (needs CAP_SETPCAP, which the switch may
    take) and keep the permitted set across setresuid (capabilities(7): a uid change from 0
    clears it unless keep-caps is set)."""
    for number in plan["caps"]["drop"]:
        try:
            kernel.cap_bound_drop(number)
        except KernelError as err:
            raise ContainerError("cannot drop %s from the bounding set: %s" % (
                tables.CAPABILITIES[number], err.message), field="process.capabilities.bounding")
    kernel.set_keepcaps(True)


def apply_after_identity(kernel, plan, send_fd):
    """After the uid switch, in this order: LSM exec labels (before no_new_privs, which limits
    label transitions), capabilities, ambient, no_new_privs, and the seccomp filter last.
    Capabilities the runtime itself does not hold cannot be granted and are left out."""
    _apply_labels(kernel, plan)
    caps = plan["caps"]
    seccomp = plan["seccomp"]
    held_effective, held_permitted, held_inheritable = kernel.capget()
    permitted = caps["permitted"] & held_permitted
    effective = caps["effective"] & permitted
    inheritable = caps["inheritable"] & (held_permitted | held_inheritable)
    loaded = False
    sys_admin = 1 << tables.CAP_SYS_ADMIN
    if seccomp and not plan["no_new_privileges"] and not effective & sys_admin:
        # Without no_new_privs, seccomp(2) needs CAP_SYS_ADMIN (else EACCES): load while the
        # runtime still holds it, as runc does; the filter then also sees the capset below.
        if not held_effective & sys_admin and held_permitted & sys_admin:
            kernel.capset(held_effective | sys_admin, held_permitted, held_inheritable)
        _apply_seccomp(kernel, seccomp, send_fd)
        loaded = True
    try:
        kernel.capset(effective, permitted, inheritable)
        kernel.cap_ambient_clear()
        for number in caps["ambient"]:
            # ambient needs the capability in permitted and inheritable (PR_CAP_AMBIENT_RAISE
            # EPERM otherwise); like runc, one the kernel refuses is left out
            if permitted & inheritable & (1 << number):
                kernel.cap_ambient_raise(number)
        kernel.set_keepcaps(False)
    except KernelError as err:
        raise ContainerError("cannot set the capabilities: " + err.message,
                             field="process.capabilities")
    if plan["no_new_privileges"]:
        kernel.set_no_new_privs()
    if seccomp and not loaded:
        _apply_seccomp(kernel, seccomp, send_fd)


def _apply_labels(kernel, plan):
    labels = []
    if plan["apparmor"]:
        labels.append(("apparmor", "exec " + plan["apparmor"], "process.apparmorProfile"))
    if plan["selinux"]:
        labels.append(("selinux", plan["selinux"], "process.selinuxLabel"))
    if not labels:
        return
    try:
        fd = kernel.open("/proc/thread-self/attr", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except KernelError as err:
        raise ContainerError("cannot open /proc/thread-self/attr: " + err.message,
                             field=labels[0][2], hint="mount proc at /proc in the container")
    try:
        if kernel.fstatfs_type(fd) != PROC_SUPER_MAGIC:
            raise ContainerError("/proc/thread-self/attr is not on procfs", field=labels[0][2],
                                 hint="mount proc at /proc in the container")
        for lsm, value, field in labels:
            _write_label(kernel, fd, tables.LSM_EXEC_ATTRS[lsm], value, field)
    finally:
        kernel.close(fd)


def _write_label(kernel, fd, names, value, field):
    for position, name in enumerate(names):
        try:
            kernel.write_file(name, value, dirfd=fd)
            return
        except KernelError as err:
            if err.errno == ENOENT and position + 1 < len(names):
                continue
            raise ContainerError("cannot set the exec label %r: %s" % (value, err.message),
                                 field=field, hint="is the profile or label loaded on the host?")


def _apply_seccomp(kernel, seccomp, send_fd):
    program = read_prepared_program(seccomp)
    if program is None:
        raise ContainerError("the seccomp filter was not compiled before fork",
                             field="linux.seccomp", hint="call prepare_security(plan) first")
    try:
        fd = kernel.seccomp_load(program, seccomp["flags"])
    except KernelError as err:
        raise ContainerError("cannot load the seccomp filter: " + err.message,
                             field="linux.seccomp", hint=err.hint)
    if seccomp["listener"]:
        try:
            send_fd(fd, seccomp["listener_path"], seccomp["metadata"])
        finally:
            kernel.close(fd)


# ---------------------------------------------------------------- host side, for NOTIFY

def build_listener_message(metadata, state):
    """The container process state the runtime-spec sends to a seccomp agent with the fd."""
    from capsa import jsonlite as json
    if isinstance(state, (str, bytes)):
        state = json.loads(state)
    return json.dumps({"ociVersion": state.get("ociVersion", "1.2.0"), "fds": ["seccompFd"],
                       "pid": state.get("pid", 0), "metadata": metadata or "",
                       "state": state}).encode()


def apply_send_notify_fd(fd, listener_path, metadata, state):
    """Connect to listenerPath and send the notify fd with the state message (SCM_RIGHTS)."""
    from capsa.runtime.sync import send_fd_to_path
    try:
        send_fd_to_path(listener_path, fd, build_listener_message(metadata, state))
    except OSError as exc:
        raise ContainerError("cannot send the seccomp notify fd to %s: %s" % (
            listener_path, exc.strerror or exc), field="linux.seccomp.listenerPath",
            hint="is the seccomp agent listening on that socket?")
