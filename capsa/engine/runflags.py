"""The flags of `capsa run` / `capsa create` and their translation into a plain request dict.

Pure (no I/O): host facts a flag needs (the caller's environment, env-file text) are passed in.
Imports only capsa.errors and capsa.engine.options.
"""
from capsa.errors import UsageError

RUN_TABLE = [
    ("-d --detach", "detach", "bool"),
    ("-i --interactive", "interactive", "bool"),
    ("-t --tty", "tty", "bool"),
    ("--rm", "rm", "bool"),
    ("--name", "name", "str"),
    ("-e --env", "env", "list"),
    ("--env-file", "env_file", "list"),
    ("-v --volume", "volume", "list"),
    ("--mount", "mount", "list"),
    ("--tmpfs", "tmpfs", "list"),
    ("-w --workdir", "workdir", "str"),
    ("-u --user", "user", "str"),
    ("--entrypoint", "entrypoint", "str"),
    ("-h --hostname", "hostname", "str"),
    ("--read-only", "read_only", "bool"),
    ("-m --memory", "memory", "str"),
    ("--memory-swap", "memory_swap", "str"),
    ("--memory-reservation", "memory_reservation", "str"),
    ("--cpus", "cpus", "str"),
    ("-c --cpu-shares", "cpu_shares", "int"),
    ("--cpu-period", "cpu_period", "int"),
    ("--cpu-quota", "cpu_quota", "int"),
    ("--cpuset-cpus", "cpuset_cpus", "str"),
    ("--cpuset-mems", "cpuset_mems", "str"),
    ("--pids-limit", "pids_limit", "int"),
    ("--blkio-weight", "blkio_weight", "int"),
    ("--device-read-bps", "device_read_bps", "list"),
    ("--device-write-bps", "device_write_bps", "list"),
    ("--device-read-iops", "device_read_iops", "list"),
    ("--device-write-iops", "device_write_iops", "list"),
    ("--ulimit", "ulimit", "list"),
    ("--cap-add", "cap_add", "list"),
    ("--cap-drop", "cap_drop", "list"),
    ("--privileged", "privileged", "bool"),
    ("--device", "device", "list"),
    ("--security-opt", "security_opt", "list"),
    ("--init", "init", "bool"),
    ("--rootfs", "rootfs", "str"),
    ("--runtime", "runtime", "str"),
    ("--pull", "pull", "str"),
    ("--tls-verify", "tls_verify", "str"),
    ("--stop-signal", "stop_signal", "str"),
    ("--stop-timeout", "stop_timeout", "int"),
    ("--restart", "restart", "str"),
    ("--network --net", "network", "str"),
    ("-p --publish", "publish", "list"),
    ("--dns", "dns", "list"),
    ("--add-host", "add_host", "list"),
    ("--label -l", "label", "list"),
    ("--sysctl", "sysctl", "list"),
    ("--dry-run", "dry_run", "bool"),
    ("--trace", "trace", "bool"),
    ("--help", "help", "bool"),
]

RLIMITS = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
           "nproc", "rss", "rtprio", "rttime", "sigpending", "stack", "as")

# Docker's default: a new network namespace on the default bridge network (NAT out, -p works);
# docs/network.md, "Modes". Declared containers keep minimal_containers' host (declared.py).
DEFAULT_NETWORK_MODE = "bridge"

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def build_bytes(text, field):
    """Docker's RAMInBytes: 64m, 1g, 512k, 1.5g, 100 (bytes); units are powers of 1024."""
    value = text.strip().lower()
    if value.endswith("b") and len(value) > 1 and value[-2] in "kmgtp":
        value = value[:-1]
    unit = value[-1:] if value[-1:].isalpha() else ""
    number = value[:len(value) - len(unit)]
    if unit not in _UNITS or not number:
        raise UsageError("invalid size " + repr(text), field=field,
                         hint="use a number with an optional unit b, k, m, g: e.g. 64m")
    try:
        amount = float(number)
    except ValueError:
        raise UsageError("invalid size " + repr(text), field=field,
                         hint="use a number with an optional unit b, k, m, g: e.g. 64m") from None
    if amount < 0:
        raise UsageError("size must not be negative: " + repr(text), field=field)
    return int(amount * _UNITS[unit])


def build_signal(text, field="--stop-signal"):
    """A signal name (TERM, SIGTERM, RTMIN+2) or number into its number (the runtime's parser)."""
    from capsa.runtime.lifecycle import parse_signal
    try:
        return parse_signal(str(text))
    except UsageError as err:
        raise UsageError(err.message, field=field, hint=err.hint) from None


def build_restart(text):
    """no | always | unless-stopped | on-failure[:max-retries] into {"name", "max_retries"}."""
    if not text:
        return {"name": "no", "max_retries": 0}
    name, sep, count = text.partition(":")
    if name not in ("no", "always", "unless-stopped", "on-failure"):
        raise UsageError("invalid restart policy " + repr(text), field="--restart",
                         hint="use no, always, unless-stopped or on-failure[:N]")
    retries = 0
    if sep:
        if name != "on-failure" or not count.isdigit():
            raise UsageError("only on-failure takes a retry count (on-failure:3), not "
                             + repr(text), field="--restart")
        retries = int(count)
    return {"name": name, "max_retries": retries}


def build_env(pairs, env_files, host_env, field="--env"):
    """-e KEY=VALUE, -e KEY (value from the caller's environment, dropped if unset), and
    --env-file contents (text, one KEY=VALUE a line, # comments) into ordered [(key, value)]."""
    out = []
    for name, text in env_files:
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            out.extend(_env_item(line, host_env, name + " line " + str(number)))
    for item in pairs:
        out.extend(_env_item(item, host_env, field))
    return out


def _env_item(item, host_env, field):
    key, eq, value = item.partition("=")
    if not key or " " in key:
        raise UsageError("invalid environment variable " + repr(item), field=field,
                         hint="write KEY=VALUE")
    if eq:
        return [(key, value)]
    if key in host_env:
        return [(key, host_env[key])]
    return []


def build_ulimit(text):
    name, eq, values = text.partition("=")
    if not eq or name not in RLIMITS:
        raise UsageError("invalid ulimit " + repr(text), field="--ulimit",
                         hint="write NAME=SOFT[:HARD] with NAME one of " + ", ".join(RLIMITS))
    soft, colon, hard = values.partition(":")
    try:
        soft_n = int(soft)
        hard_n = int(hard) if colon else soft_n
    except ValueError:
        raise UsageError("ulimit values must be numbers: " + repr(text), field="--ulimit") from None
    if soft_n > hard_n and hard_n >= 0:
        raise UsageError("ulimit soft value above hard value: " + repr(text), field="--ulimit")
    return {"type": "RLIMIT_" + name.upper(), "soft": soft_n, "hard": hard_n}


def build_throttle(text, field, rate_is_bytes):
    path, sep, rate = text.rpartition(":")
    if not sep or not path.startswith("/"):
        raise UsageError("invalid device rate " + repr(text), field=field,
                         hint="write /dev/PATH:RATE, e.g. /dev/sda:1mb")
    if rate_is_bytes:
        value = build_bytes(rate, field)
    else:
        if not rate.isdigit():
            raise UsageError("IO rate must be a whole number: " + repr(text), field=field)
        value = int(rate)
    return {"path": path, "rate": value}


def build_device(text):
    """--device HOST[:CONTAINER][:PERMISSIONS]."""
    parts = text.split(":")
    perms = "rwm"
    if len(parts) > 1 and parts[-1] and all(c in "rwm" for c in parts[-1]) \
            and not parts[-1].startswith("/"):
        perms = parts.pop()
    if len(parts) > 2 or not parts[0].startswith("/"):
        raise UsageError("invalid device " + repr(text), field="--device",
                         hint="write /dev/HOST[:/dev/CONTAINER][:rwm]")
    target = parts[1] if len(parts) == 2 else parts[0]
    if not target.startswith("/"):
        raise UsageError("device path inside the container must be absolute: " + repr(text),
                         field="--device")
    return {"host": parts[0], "target": target, "access": perms}


_PROPAGATION = ("shared", "slave", "private", "rshared", "rslave", "rprivate")


def build_volume_flag(text):
    """-v HOST:CTR[:OPTS] (bind), NAME:CTR[:OPTS] (named volume), CTR (anonymous volume)."""
    parts = text.split(":")
    opts = []
    if len(parts) == 3 or (len(parts) == 2 and not parts[1].startswith("/")):
        opts = parts.pop().split(",")
    if len(parts) == 1:
        source, target = "", parts[0]
    elif len(parts) == 2:
        source, target = parts
    else:
        raise UsageError("invalid volume " + repr(text), field="--volume",
                         hint="write HOST:CONTAINER[:ro], NAME:CONTAINER or CONTAINER")
    if not target.startswith("/"):
        raise UsageError("container path must be absolute in " + repr(text), field="--volume")
    mount = {"kind": "bind" if source.startswith("/") else "volume", "source": source,
             "target": target, "readonly": False, "propagation": None, "copy": True}
    for opt in opts:
        if opt == "ro":
            mount["readonly"] = True
        elif opt in ("rw", "z", "Z", ""):
            pass
        elif opt in _PROPAGATION:
            mount["propagation"] = opt
        elif opt == "nocopy":
            mount["copy"] = False
        else:
            raise UsageError("unknown volume option " + repr(opt) + " in " + repr(text),
                             field="--volume", hint="use ro, rw, nocopy or a propagation mode")
    return mount


def build_mount_flag(text):
    """--mount type=bind|volume|tmpfs,source=..,target=..,readonly,..."""
    fields = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key in ("readonly", "ro") and not eq:
            value = "true"
        fields[key] = value
    kind = fields.pop("type", "volume")
    if kind not in ("bind", "volume", "tmpfs"):
        raise UsageError("unknown mount type " + repr(kind), field="--mount",
                         hint="use type=bind, type=volume or type=tmpfs")
    target = fields.pop("target", None) or fields.pop("destination", None) or \
        fields.pop("dst", None)
    source = fields.pop("source", None) or fields.pop("src", None) or ""
    if not target or not target.startswith("/"):
        raise UsageError("--mount needs an absolute target=PATH in " + repr(text), field="--mount")
    mount = {"kind": kind, "source": source, "target": target, "readonly": False,
             "propagation": None, "copy": True, "options": []}
    for key in ("readonly", "ro"):
        if key in fields:
            mount["readonly"] = fields.pop(key) in ("true", "1", "")
    if "bind-propagation" in fields:
        prop = fields.pop("bind-propagation")
        if prop not in _PROPAGATION:
            raise UsageError("invalid bind-propagation " + repr(prop), field="--mount")
        mount["propagation"] = prop
    if "volume-nocopy" in fields:
        mount["copy"] = fields.pop("volume-nocopy") not in ("true", "1", "")
    if "tmpfs-size" in fields:
        mount["options"].append("size=" + str(build_bytes(fields.pop("tmpfs-size"), "--mount")))
    if "tmpfs-mode" in fields:
        mount["options"].append("mode=" + fields.pop("tmpfs-mode"))
    if kind == "bind" and not source.startswith("/"):
        raise UsageError("bind mount source must be an absolute host path in " + repr(text),
                         field="--mount")
    if fields:
        raise UsageError("unknown --mount field " + repr(sorted(fields)[0]), field="--mount",
                         hint="known: type, source, target, readonly, bind-propagation, "
                              "volume-nocopy, tmpfs-size, tmpfs-mode")
    return mount


def build_tmpfs_flag(text):
    target, sep, options = text.partition(":")
    if not target.startswith("/"):
        raise UsageError("tmpfs path must be absolute: " + repr(text), field="--tmpfs")
    return {"kind": "tmpfs", "source": "tmpfs", "target": target, "readonly": False,
            "propagation": None, "copy": False,
            "options": [o for o in options.split(",") if o] if sep else []}


def build_security_opts(items):
    out = {"seccomp": None, "no_new_privileges": False, "apparmor": None, "label": []}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            key, sep, value = item.partition(":")
        if key == "no-new-privileges" and (not sep or value in ("true", "1")):
            out["no_new_privileges"] = True
        elif key == "no-new-privileges" and value in ("false", "0"):
            out["no_new_privileges"] = False
        elif key == "seccomp" and value:
            out["seccomp"] = value
        elif key == "apparmor" and value:
            out["apparmor"] = value
        elif key == "label" and value:
            out["label"].append(value)
        else:
            raise UsageError("invalid security option " + repr(item), field="--security-opt",
                             hint="use seccomp=unconfined|PROFILE.json, no-new-privileges, "
                                  "apparmor=PROFILE or label=...")
    return out


def build_run_request(opts, positionals, host_env, env_files=()):
    """The parsed flags and positionals of `run`/`create` into a normalised request dict."""
    if not positionals and not opts.get("rootfs"):
        raise UsageError("requires at least 1 argument: IMAGE", field="run",
                         hint="capsa run [OPTIONS] IMAGE [COMMAND [ARG...]]")
    if opts.get("rootfs"):
        image, command = None, list(positionals)
    else:
        image, command = positionals[0], list(positionals[1:])
    req = {
        "image": image, "rootfs": opts.get("rootfs"), "command": command,
        "name": opts.get("name"), "detach": opts["detach"], "interactive": opts["interactive"],
        "tty": opts["tty"], "rm": opts["rm"], "workdir": opts.get("workdir"),
        "user": opts.get("user"), "entrypoint": opts.get("entrypoint"),
        "hostname": opts.get("hostname"), "read_only": opts["read_only"],
        "privileged": opts["privileged"], "init": opts["init"],
        "runtime": opts.get("runtime"), "network": opts.get("network") or DEFAULT_NETWORK_MODE,
        "pull": opts.get("pull") or "missing",
        "tls_verify": (opts.get("tls_verify") or "true").lower() not in ("false", "0"),
        "publish": list(opts["publish"]), "dns": list(opts["dns"]),
        "add_host": list(opts["add_host"]), "cap_add": [], "cap_drop": [],
        "env": build_env(opts["env"], env_files, host_env),
        "mounts": [], "devices": [build_device(d) for d in opts["device"]],
        "ulimits": [build_ulimit(u) for u in opts["ulimit"]],
        "security": build_security_opts(opts["security_opt"]),
        "restart": build_restart(opts.get("restart")),
        "stop_signal": build_signal(opts["stop_signal"]) if opts.get("stop_signal") else None,
        "stop_timeout": opts.get("stop_timeout"),
        "labels": dict(_pair(x, "--label") for x in opts["label"]),
        "sysctl": dict(_pair(x, "--sysctl") for x in opts["sysctl"]),
        "resources": build_resources_request(opts),
    }
    if req["pull"] not in ("missing", "always", "never"):
        raise UsageError("invalid --pull " + repr(req["pull"]), field="--pull",
                         hint="use missing (the default), always or never")
    if req["rm"] and req["restart"]["name"] != "no":
        raise UsageError("--restart and --rm cannot be combined", field="--restart")
    if req["name"] is not None and not _valid_name(req["name"]):
        raise UsageError("invalid container name " + repr(req["name"]), field="--name",
                         hint="use letters, digits, _ . - and start with a letter or digit")
    for cap in opts["cap_add"]:
        req["cap_add"].append(build_cap_name(cap, "--cap-add"))
    for cap in opts["cap_drop"]:
        req["cap_drop"].append(build_cap_name(cap, "--cap-drop"))
    for item in opts["volume"]:
        req["mounts"].append(build_volume_flag(item))
    for item in opts["mount"]:
        req["mounts"].append(build_mount_flag(item))
    for item in opts["tmpfs"]:
        req["mounts"].append(build_tmpfs_flag(item))
    targets = [m["target"].rstrip("/") or "/" for m in req["mounts"]]
    for target in targets:
        if targets.count(target) > 1:
            raise UsageError("duplicate mount point " + target, field="--volume",
                             hint="mount each container path once")
    if req["publish"] and req["network"] in ("none", "host"):
        # prepare never reaches the network manager for these modes: -p would be dropped silently
        raise UsageError("ports cannot be published with --network " + req["network"],
                         field="--publish", hint="drop --network to use the default bridge, "
                                                 "or name a bridge network")
    return req


def _pair(text, field):
    key, eq, value = text.partition("=")
    if not key:
        raise UsageError("invalid value " + repr(text), field=field, hint="write KEY=VALUE")
    return key, value


def _valid_name(name):
    if not name or not name[0].isalnum():
        return False
    return all(c.isalnum() or c in "_.-" for c in name) and len(name) <= 128


def build_cap_name(text, field):
    name = text.strip().upper()
    if name == "ALL":
        return "ALL"
    if not name.startswith("CAP_"):
        name = "CAP_" + name
    if name not in CAPABILITIES:
        raise UsageError("unknown capability " + repr(text), field=field,
                         hint="use a name from capabilities(7) such as NET_ADMIN, or ALL")
    return name


from capsa.runtime.security.tables import CAPABILITIES  # noqa: E402 (one table for all)


def build_resources_request(opts):
    res = {}
    if opts.get("memory"):
        res["memory"] = build_bytes(opts["memory"], "--memory")
        if res["memory"] < 6 * 1024 * 1024:
            raise UsageError("minimum memory limit is 6MB", field="--memory")
    if opts.get("memory_swap"):
        if opts["memory_swap"].strip() == "-1":
            res["memory_swap"] = -1
        else:
            res["memory_swap"] = build_bytes(opts["memory_swap"], "--memory-swap")
            if "memory" not in res:
                raise UsageError("--memory-swap needs --memory as well", field="--memory-swap")
            if res["memory_swap"] < res["memory"]:
                raise UsageError("--memory-swap must be at least --memory (it is memory + swap)",
                                 field="--memory-swap")
    if opts.get("memory_reservation"):
        res["memory_reservation"] = build_bytes(opts["memory_reservation"], "--memory-reservation")
    if opts.get("cpus"):
        try:
            cpus = float(opts["cpus"])
        except ValueError:
            cpus = -1.0
        if cpus <= 0:
            raise UsageError("invalid --cpus " + repr(opts["cpus"]), field="--cpus",
                             hint="use a positive number such as 0.5 or 2")
        res["cpu_period"] = 100000
        res["cpu_quota"] = int(round(cpus * 100000))
    if opts.get("cpu_period") is not None:
        res["cpu_period"] = opts["cpu_period"]
    if opts.get("cpu_quota") is not None:
        res["cpu_quota"] = opts["cpu_quota"]
    if opts.get("cpu_shares") is not None:
        if opts["cpu_shares"] < 2:
            raise UsageError("--cpu-shares must be at least 2", field="--cpu-shares")
        res["cpu_shares"] = opts["cpu_shares"]
    for key, flag in (("cpuset_cpus", "--cpuset-cpus"), ("cpuset_mems", "--cpuset-mems")):
        if opts.get(key):
            if not all(c.isdigit() or c in ",-" for c in opts[key]):
                raise UsageError("invalid CPU/memory-node list " + repr(opts[key]), field=flag,
                                 hint="write e.g. 0-1 or 0,2")
            res[key] = opts[key]
    if opts.get("pids_limit") is not None:
        res["pids_limit"] = opts["pids_limit"]
    if opts.get("blkio_weight") is not None:
        if not (10 <= opts["blkio_weight"] <= 1000):
            raise UsageError("--blkio-weight must be between 10 and 1000", field="--blkio-weight")
        res["blkio_weight"] = opts["blkio_weight"]
    for key, is_bytes in (("device_read_bps", True), ("device_write_bps", True),
                          ("device_read_iops", False), ("device_write_iops", False)):
        items = opts.get(key) or []
        if items:
            flag = "--" + key.replace("_", "-")
            res[key] = [build_throttle(x, flag, is_bytes) for x in items]
    return res
