"""Pure building of a container's OCI config.json from a run request, an image config and facts.

No I/O: host facts (device numbers, volume folders, resolved user, seccomp profile text, the last
capability number) arrive in `facts`. Imports only capsa.errors and capsa.engine.runflags.
"""
from capsa.errors import UsageError, ConfigError
from capsa.engine.runflags import CAPABILITIES

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's default capability set (moby oci/caps/defaults.go facts: 14 capabilities)
DOCKER_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
               "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
               "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")

MASKED_PATHS = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def build_base_spec():
    """What `runc spec` writes, made non-interactive: the starting point every container edits."""
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
            "env": ["PATH=" + DEFAULT_PATH], "cwd": "/",
            "capabilities": {k: list(DOCKER_CAPS) for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": False,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "capsa",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def build_args(entrypoint_flag, command, image_config):
    """Docker's rule: ENTRYPOINT + CMD, where --entrypoint replaces ENTRYPOINT and drops the
    image's CMD, and a command on the line replaces CMD."""
    image_config = image_config or {}
    if entrypoint_flag is not None:
        entrypoint = [entrypoint_flag] if entrypoint_flag else []
        cmd = list(command)
    else:
        entrypoint = list(image_config.get("Entrypoint") or [])
        cmd = list(command) if command else list(image_config.get("Cmd") or [])
    args = entrypoint + cmd
    if not args:
        raise UsageError("no command specified", field="run",
                         hint="give a COMMAND after the image, or use an image with Cmd/Entrypoint")
    return args


def build_env_list(image_env, request_env, hostname, tty):
    env = {}
    order = []

    def put(key, value):
        if key not in env:
            order.append(key)
        env[key] = value

    put("PATH", DEFAULT_PATH)
    put("HOSTNAME", hostname)
    for item in image_env or []:
        key, _, value = item.partition("=")
        put(key, value)
    if tty:
        put("TERM", "xterm")
    for key, value in request_env:
        put(key, value)
    return [k + "=" + env[k] for k in order]


def build_user(user_text, passwd_text, group_text):
    """-u name|uid[:group|gid] resolved against the rootfs's /etc/passwd and /etc/group text
    (None when missing) into the OCI process.user dict, with supplementary groups."""
    users = _table(passwd_text)
    groups = _table(group_text)
    name, _, group = (user_text or "0").partition(":")
    uid = gid = None
    username = None
    if name.isdigit():
        uid = int(name)
        for row in users:
            if len(row) > 3 and row[2] == name:
                username = row[0]
                gid = _int(row[3])
                break
    else:
        for row in users:
            if len(row) > 3 and row[0] == name:
                uid, gid, username = _int(row[2]), _int(row[3]), name
                break
        if uid is None:
            raise ConfigError("unable to find user " + name + ": no matching entries in passwd "
                              "file", field="--user",
                              hint="use a numeric uid or a user of the image")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            gid = None
            for row in groups:
                if len(row) > 2 and row[0] == group:
                    gid = _int(row[2])
            if gid is None:
                raise ConfigError("unable to find group " + group + ": no matching entries in "
                                  "group file", field="--user", hint="use a numeric gid")
    if gid is None:
        gid = 0 if uid == 0 else uid if username is None else 0
    extra = []
    if username and not group:
        for row in groups:
            if len(row) > 3 and username in row[3].split(",") and row[2].isdigit():
                g = int(row[2])
                if g != gid and g not in extra:
                    extra.append(g)
    user = {"uid": uid, "gid": gid}
    if extra:
        user["additionalGids"] = extra
    return user


def _table(text):
    return [line.split(":") for line in (text or "").splitlines() if line and line[0] != "#"]


def _int(text):
    return int(text) if text.isdigit() else 0


def build_capabilities(req, cap_last, host_caps=None):
    """Docker's default set, then --cap-drop, then --cap-add (ALL is understood both ways);
    "all" means all the kernel knows that the caller holds (`host_caps`)."""
    known = list(CAPABILITIES[:cap_last + 1])
    if host_caps is not None:
        known = [c for c in known if c in host_caps]
    if req["privileged"]:
        caps = list(known)
    else:
        caps = list(DOCKER_CAPS)
        if "ALL" in req["cap_drop"]:
            caps = []
        caps = [c for c in caps if c not in req["cap_drop"]]
        if "ALL" in req["cap_add"]:
            caps = list(known)
        for cap in req["cap_add"]:
            if cap != "ALL" and cap not in caps:
                if cap not in known:
                    raise UsageError(cap + " is not known to this kernel or not held by capsa",
                                     field="--cap-add")
                caps.append(cap)
    out = {k: list(caps) for k in ("bounding", "effective", "permitted")}
    return out


def build_resources(res, devices_allow, device_numbers):
    """The request's limits into OCI linux.resources (v1 names; the runtime converts for v2)."""
    out = {"devices": [{"allow": False, "access": "rwm"}] + devices_allow}
    mem = {}
    if "memory" in res:
        mem["limit"] = res["memory"]
        if "memory_swap" not in res:
            mem["swap"] = res["memory"] * 2
    if "memory_swap" in res:
        mem["swap"] = res["memory_swap"]
    if "memory_reservation" in res:
        mem["reservation"] = res["memory_reservation"]
    if mem:
        out["memory"] = mem
    cpu = {}
    for key, name in (("cpu_shares", "shares"), ("cpu_quota", "quota"), ("cpu_period", "period"),
                      ("cpuset_cpus", "cpus"), ("cpuset_mems", "mems")):
        if key in res:
            cpu[name] = res[key]
    if cpu:
        out["cpu"] = cpu
    if "pids_limit" in res:
        out["pids"] = {"limit": res["pids_limit"] if res["pids_limit"] > 0 else -1}
    blkio = {}
    if "blkio_weight" in res:
        blkio["weight"] = res["blkio_weight"]
    for key, name in (("device_read_bps", "throttleReadBpsDevice"),
                      ("device_write_bps", "throttleWriteBpsDevice"),
                      ("device_read_iops", "throttleReadIOPSDevice"),
                      ("device_write_iops", "throttleWriteIOPSDevice")):
        for item in res.get(key, []):
            dev = device_numbers.get(item["path"])
            if dev is None:
                raise UsageError("no such device " + item["path"],
                                 field="--" + key.replace("_", "-"),
                                 hint="give a block device path that exists on the host")
            blkio.setdefault(name, []).append(
                {"major": dev["major"], "minor": dev["minor"], "rate": item["rate"]})
    if blkio:
        out["blockIO"] = blkio
    return out


def build_devices(req_devices, device_numbers):
    """--device entries into (linux.devices, resources.devices allow rules)."""
    devices, allow = [], []
    for item in req_devices:
        dev = device_numbers.get(item["host"])
        if dev is None:
            raise UsageError("no such device " + item["host"], field="--device",
                             hint="give a character or block device that exists on the host")
        devices.append({"path": item["target"], "type": dev["type"], "major": dev["major"],
                        "minor": dev["minor"], "fileMode": dev.get("fileMode", 0o666),
                        "uid": 0, "gid": 0})
        allow.append({"allow": True, "type": dev["type"], "major": dev["major"],
                      "minor": dev["minor"], "access": item["access"]})
    return devices, allow


def build_mounts(req_mounts, sources, etc_files, read_only):
    """Volumes, binds and tmpfs mounts into OCI mounts; `sources` gives each one's host path."""
    out = []
    for mount, source in zip(req_mounts, sources):
        if mount["kind"] == "tmpfs":
            opts = ["nosuid", "nodev"] + list(mount.get("options", []))
            out.append({"destination": mount["target"], "type": "tmpfs", "source": "tmpfs",
                        "options": opts})
            continue
        opts = ["rbind", "ro" if mount["readonly"] else "rw"]
        if mount.get("propagation"):
            opts.append(mount["propagation"])
        out.append({"destination": mount["target"], "type": "bind", "source": source,
                    "options": opts})
    taken = set(m["target"] for m in req_mounts)
    for dest in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
        if dest in etc_files and dest not in taken:
            out.append({"destination": dest, "type": "bind", "source": etc_files[dest],
                        "options": ["rbind", "rprivate", "ro" if read_only else "rw"]})
    return out


def build_docker_seccomp(profile, caps, arch="SCMP_ARCH_X86_64"):
    """A Docker/moby-format seccomp profile (names, includes/excludes on caps and arches) into
    an OCI linux.seccomp section for the given capability set."""
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise ConfigError("seccomp profile has no defaultAction", field="--security-opt seccomp",
                          hint="give a Docker or OCI seccomp JSON profile")
    out = {"defaultAction": profile["defaultAction"]}
    if "defaultErrnoRet" in profile:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    arches = list(profile.get("architectures") or [])
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == arch:
            arches = [arch] + list(entry.get("subArchitectures") or [])
    if arches:
        out["architectures"] = arches
    if profile.get("flags"):
        out["flags"] = list(profile["flags"])
    rules = []
    for rule in profile.get("syscalls") or []:
        inc = rule.get("includes") or {}
        exc = rule.get("excludes") or {}
        if inc.get("caps") and not all(c in caps for c in inc["caps"]):
            continue
        if inc.get("arches") and not _arch_match(inc["arches"], arch):
            continue
        if exc.get("caps") and any(c in caps for c in exc["caps"]):
            continue
        if exc.get("arches") and _arch_match(exc["arches"], arch):
            continue
        names = list(rule.get("names") or ([rule["name"]] if rule.get("name") else []))
        if not names:
            continue
        item = {"names": names, "action": rule["action"]}
        for key in ("errnoRet", "args"):
            if rule.get(key) is not None:
                item[key] = rule[key]
        rules.append(item)
    out["syscalls"] = rules
    return out


def _arch_match(names, arch):
    short = {"SCMP_ARCH_X86_64": "amd64", "SCMP_ARCH_X86": "386", "SCMP_ARCH_X32": "x32"}
    return arch in names or short.get(arch) in names


def build_spec(req, image_config, facts, base=None):
    """The whole config.json. facts: id, rootfs, hostname, user, device_numbers, mount_sources,
    etc_files, cap_last, seccomp (OCI dict or None), init_path, netns, cgroups_path."""
    image_config = image_config or {}
    spec = base if base is not None else build_base_spec()
    proc = spec["process"]
    args = build_args(req["entrypoint"], req["command"], image_config)
    if req["init"]:
        if not facts.get("init_path"):
            raise UsageError("--init needs catatonit or tini on the host",
                             field="--init", hint="apt-get install catatonit")
        args = ["/dev/init", "--"] + args
    proc["args"] = args
    proc["terminal"] = bool(req["tty"])
    proc["env"] = build_env_list(image_config.get("Env"), req["env"], facts["hostname"], req["tty"])
    proc["cwd"] = req["workdir"] or image_config.get("WorkingDir") or "/"
    if not proc["cwd"].startswith("/"):
        raise UsageError("working directory must be absolute: " + proc["cwd"], field="--workdir")
    proc["user"] = facts["user"]
    caps = build_capabilities(req, facts.get("cap_last", 40), facts.get("host_caps"))
    proc["capabilities"] = caps
    limits = {r["type"]: r for r in proc.get("rlimits", [])}
    for item in req["ulimits"]:
        limits[item["type"]] = item
    proc["rlimits"] = list(limits.values())
    proc["noNewPrivileges"] = bool(req["security"]["no_new_privileges"])
    if req["security"]["apparmor"] and req["security"]["apparmor"] != "unconfined":
        proc["apparmorProfile"] = req["security"]["apparmor"]
    for label in req["security"]["label"]:
        if label.startswith("type:") or label.startswith("level:") or label.startswith("user:") \
                or label.startswith("role:"):
            proc["selinuxLabel"] = _merge_label(proc.get("selinuxLabel"), label)
        elif label not in ("disable", "nested"):
            raise UsageError("invalid label option " + repr(label), field="--security-opt",
                             hint="use label=disable, label=type:T, label=level:L")
    spec["root"] = {"path": facts["rootfs"], "readonly": bool(req["read_only"])}
    spec["hostname"] = facts["hostname"]
    linux = spec["linux"]
    devices, allow = build_devices(req["devices"], facts.get("device_numbers", {}))
    if req["privileged"]:
        allow = [{"allow": True, "access": "rwm"}]
        devices = list(facts.get("host_devices", [])) + devices
        linux["maskedPaths"] = []
        linux["readonlyPaths"] = []
        for m in spec["mounts"]:
            if m["destination"] in ("/sys", "/sys/fs/cgroup"):
                m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]
    linux["resources"] = build_resources(req["resources"], allow, facts.get("device_numbers", {}))
    if devices:
        linux["devices"] = devices
    linux["cgroupsPath"] = facts.get("cgroups_path") or "/capsa/" + facts["id"]
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if req["network"] != "host":
        ns = {"type": "network"}
        if facts.get("netns"):
            ns["path"] = facts["netns"]
        namespaces.append(ns)
    linux["namespaces"] = namespaces
    if req["sysctl"]:
        linux["sysctl"] = dict(req["sysctl"])
    seccomp = facts.get("seccomp")
    if seccomp and not req["privileged"]:
        linux["seccomp"] = seccomp
    else:
        linux.pop("seccomp", None)
    mounts = build_mounts(req["mounts"], facts.get("mount_sources", []),
                          facts.get("etc_files", {}), req["read_only"])
    if req["init"]:
        mounts.append({"destination": "/dev/init", "type": "bind", "source": facts["init_path"],
                       "options": ["bind", "ro", "nosuid", "nodev"]})
    taken = set(m["destination"] for m in mounts)
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] not in taken] + mounts
    spec["annotations"] = {"org.capsa.id": facts["id"]}
    if req.get("name"):
        spec["annotations"]["org.capsa.name"] = req["name"]
    for key, value in req.get("labels", {}).items():
        spec["annotations"]["org.capsa.label." + key] = value
    return spec


def _merge_label(current, item):
    """label=user:U / role:R / type:T / level:L edits one field of user:role:type:level."""
    fields = (current or "system_u:system_r:container_t:s0").split(":", 3)
    key, value = item.split(":", 1)
    fields[("user", "role", "type", "level").index(key)] = value
    return ":".join(fields)


def build_stop_signal(req, image_config):
    """--stop-signal, else the image's StopSignal, else SIGTERM."""
    if req.get("stop_signal"):
        return req["stop_signal"]
    text = (image_config or {}).get("StopSignal")
    if text:
        from capsa.engine.runflags import build_signal
        return build_signal(text, field="image StopSignal")
    return 15
