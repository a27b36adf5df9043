"""Declared containers, minimal_containers-compatible: HOME/configs/NAME (KEY=VALUE), logs/NAME,
pids/NAME, and the commands `start [-d|-s|-se] NAME`, `start-all`, `kill NAME`, `list [-r]`.

The parser and the config -> OCI spec mapping are pure (build_*); running goes through the same
record/monitor/runtime path as `capsa run`. Imports the engine's modules only.
"""
import os
import time

from capsa.errors import CapsaError, ConfigError, StateError, UsageError

DEFAULT_HOME = "/containers"
MAX_CONFIG_BYTES = 4096
DEFAULT_ID_MAP_START = 10000
ID_MAP_SIZE = 65536

# minimal_containers' keys, then capsa's additions; True = may repeat
KEYS = {
    "root": False, "init": False, "namespaces": False, "max_physical_memory": False,
    "max_memory": False, "max_processes": False, "cpu_share": False, "net_classid": False,
    "id_map_start": False, "mount": True, "mount_ro": True, "iops_limit": True,
    "io_bw_limit": True,
    "image": False, "command": False, "env": True, "volume": True, "publish": True,
    "network": False, "restart": False, "user": False, "workdir": False, "runtime": False,
}
NAMESPACE_LETTERS = {"u": "user", "p": "pid", "h": "uts", "t": "time", "i": "ipc", "c": "cgroup"}


def read_home(ctx, home=None):
    return home or getattr(ctx, "home", None) or os.environ.get("CAPSA_HOME") or DEFAULT_HOME


def check_name(name):
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name) > 255:
        raise UsageError("invalid container name " + repr(name), field="NAME",
                         hint="a declared container's name is a file name in configs/")


def is_declared(ctx, name, home=None):
    if not name or "/" in name or name in (".", ".."):
        return False
    return os.path.isfile(os.path.join(read_home(ctx, home), "configs", name))


def build_declared_config(data, path="config"):
    """Parse a config file's bytes. Returns {key: value or [values]} with defaults applied.
    Every error names the file and line: CRLF, a key without '=', unknown and duplicate keys,
    comments after values, bad namespace letters, numbers, mounts and limits."""
    if len(data) >= MAX_CONFIG_BYTES:
        raise ConfigError("config is too long: %d bytes, the limit is %d" % (len(data),
                                                                           MAX_CONFIG_BYTES - 1),
                          field=path, hint="shorten the file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("config is not UTF-8 text", field=path) from None
    cfg = {}
    seen = {}
    for number, line in enumerate(text.split("\n"), 1):
        where = "%s line %d" % (path, number)
        if "\r" in line:
            raise ConfigError("Windows line break (CRLF)", field=where,
                              hint="save the file with Unix line endings (\\n)")
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise ConfigError("expected KEY=VALUE, got " + repr(line[:40]), field=where)
        if key not in KEYS:
            raise ConfigError("unknown key " + repr(key), field=where,
                              hint="known keys: " + ", ".join(sorted(KEYS)))
        if "#" in value and key not in ("command", "env"):
            raise ConfigError("unexpected '#': comments must be on their own line", field=where)
        if KEYS[key]:
            cfg.setdefault(key, []).append((value, number))
            continue
        if key in seen:
            raise ConfigError("duplicate key " + repr(key) + " (first set on line %d)" % seen[key],
                              field=where, hint="set each key once")
        seen[key] = number
        cfg[key] = (value, number)
    return build_checked_config(cfg, path)


def build_checked_config(raw, path):
    def where(key):
        item = raw[key]
        number = item[1] if isinstance(item, tuple) else item[0][1]
        return "%s line %d" % (path, number)

    out = {}
    if "root" not in raw and "image" not in raw:
        raise ConfigError("missing key root (or image)", field=path,
                          hint="add root=/path/to/rootfs")
    if "init" not in raw and "command" not in raw and "image" not in raw:
        raise ConfigError("missing key init", field=path, hint="add init=/sbin/init")
    if "namespaces" not in raw and "image" not in raw:
        raise ConfigError("missing key namespaces", field=path,
                          hint="add namespaces=all (or a subset of uphtic, or none)")
    if "root" in raw and "image" in raw:
        raise ConfigError("root and image exclude each other", field=where("image"))
    for key in ("root", "image", "init", "command", "network", "restart", "user", "workdir",
                "runtime"):
        if key in raw:
            value = raw[key][0]
            if not value:
                raise ConfigError("empty value for " + key, field=where(key))
            out[key] = value
    if "root" in out and not out["root"].startswith("/"):
        raise ConfigError("root must be an absolute path", field=where("root"))
    if "init" in out:
        target = out["init"][1:] if out["init"].startswith("@") else out["init"]
        if not target.startswith("/"):
            raise ConfigError("init must be an absolute path (@/path for a host program)",
                              field=where("init"))
    ns = raw.get("namespaces", ("phic" if "image" in raw else "", 0))[0]
    if ns == "all":
        letters = "uphtic"
    elif ns == "none":
        letters = ""
    else:
        if not ns:
            raise ConfigError("empty namespaces", field=where("namespaces"),
                              hint="use all, none or letters from uphtic")
        for c in ns:
            if c not in NAMESPACE_LETTERS:
                raise ConfigError("unknown namespace " + repr(c), field=where("namespaces"),
                                  hint="letters: u (user) p (pid) h (hostname) t (time) i (ipc) "
                                       "c (cgroup); or all, none")
        letters = ns
    out["namespaces"] = sorted(set(NAMESPACE_LETTERS[c] for c in letters))
    from capsa.engine.runflags import build_bytes, build_restart
    for key in ("max_physical_memory", "max_memory"):
        if key in raw:
            try:
                out[key] = build_bytes(raw[key][0], key)
            except UsageError as err:
                raise ConfigError(err.message, field=where(key), hint=err.hint) from None
    for key in ("max_processes", "cpu_share", "net_classid", "id_map_start"):
        if key in raw:
            value = raw[key][0]
            if not value.isdigit():
                raise ConfigError(key + " must be a whole number, not " + repr(value),
                                  field=where(key))
            out[key] = int(value)
    if "cpu_share" in out and out["cpu_share"] < 2:
        raise ConfigError("cpu_share must be at least 2", field=where("cpu_share"))
    out.setdefault("id_map_start", DEFAULT_ID_MAP_START)
    if "max_memory" in out and "max_physical_memory" in out and \
            out["max_memory"] < out["max_physical_memory"]:
        raise ConfigError("max_memory (physical + swap) is below max_physical_memory",
                          field=where("max_memory"))
    out["mounts"] = []
    for key in ("mount", "mount_ro"):
        for value, number in raw.get(key, []):
            src, sep, dest = value.partition(":")
            if not sep or not src or not dest.startswith("/"):
                raise ConfigError("invalid mount " + repr(value),
                                  field="%s line %d" % (path, number), hint="write SOURCE:/DEST")
            out["mounts"].append({"source": src, "target": dest, "readonly": key == "mount_ro",
                                  "line": number})
    for key in ("iops_limit", "io_bw_limit"):
        out[key] = []
        for value, number in raw.get(key, []):
            dev, sep, rate = value.partition(" ")
            major, colon, minor = dev.partition(":")
            if not sep or not colon or not major.isdigit() or not minor.isdigit() or \
                    not rate.isdigit():
                raise ConfigError("invalid " + key + " " + repr(value),
                                  field="%s line %d" % (path, number),
                                  hint="write MAJOR:MINOR NUMBER, e.g. 8:0 1000")
            out[key].append({"major": int(major), "minor": int(minor), "rate": int(rate)})
    out["env"] = []
    for value, number in raw.get("env", []):
        k, eq, v = value.partition("=")
        if not eq or not k:
            raise ConfigError("env needs KEY=VALUE, not " + repr(value),
                              field="%s line %d" % (path, number))
        out["env"].append((k, v))
    out["volumes"] = [v for v, _ in raw.get("volume", [])]
    out["publish"] = [v for v, _ in raw.get("publish", [])]
    try:
        out["restart"] = build_restart(out.get("restart"))
    except UsageError as err:
        raise ConfigError(err.message, field=where("restart"), hint=err.hint) from None
    if "command" in out:
        import shlex
        try:
            out["command"] = shlex.split(out["command"])
        except ValueError as err:
            raise ConfigError("command: " + str(err), field=where("command")) from None
    return out


def build_limits(cfg):
    """minimal_containers' limit keys as OCI linux.resources (v1 meaning, as its cgroup writes).
    Block devices are denied as minimal_containers' devices.deny 'b *:* rwm' does."""
    res = {"devices": [{"allow": True, "access": "rwm"},
                       {"allow": False, "type": "b", "access": "rwm"}]}
    mem = {}
    if "max_physical_memory" in cfg:
        mem["limit"] = cfg["max_physical_memory"]
    if "max_memory" in cfg:
        mem["swap"] = cfg["max_memory"]
        # memory+swap alone: physical use cannot exceed it either, and cgroup v1 refuses a
        # memsw limit without a memory limit (the rule capsa.runtime.cgroups.limits applies)
        mem.setdefault("limit", cfg["max_memory"])
    if mem:
        res["memory"] = mem
    if "max_processes" in cfg:
        res["pids"] = {"limit": cfg["max_processes"]}
    if "cpu_share" in cfg:
        res["cpu"] = {"shares": cfg["cpu_share"]}
    if "net_classid" in cfg:
        res["network"] = {"classID": cfg["net_classid"]}
    blkio = {}
    for item in cfg.get("iops_limit", []):
        for name in ("throttleReadIOPSDevice", "throttleWriteIOPSDevice"):
            blkio.setdefault(name, []).append(dict(item))
    for item in cfg.get("io_bw_limit", []):
        for name in ("throttleReadBpsDevice", "throttleWriteBpsDevice"):
            blkio.setdefault(name, []).append(dict(item))
    if blkio:
        res["blockIO"] = blkio
    return res


def build_declared_spec(cfg, name, facts, shell=None, keep_env=None):
    """The OCI config for a declared container. facts: id, rootfs, host_init (bool), mounts
    (checked [{"source","target","readonly"}]), devices ({path: numbers}), cap_last, image_config.
    `shell` replaces init (start -s); `keep_env` is the caller's environment (start -se)."""
    from capsa.engine.runflags import CAPABILITIES
    from capsa.engine.specbuild import DEFAULT_PATH
    namespaces = cfg["namespaces"]
    userns = "user" in namespaces
    image_config = facts.get("image_config") or {}
    program = shell or cfg.get("init")
    annotations = {"org.capsa.id": facts["id"], "org.capsa.name": name,
                   "org.capsa.declared": "true"}
    mounts = [
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
         + ([] if userns and cfg["id_map_start"] else ["gid=5"])},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "noexec", "nodev", "mode=1777"]},
    ]
    if "pid" in namespaces or not userns:
        mounts.insert(0, {"destination": "/proc", "type": "proc", "source": "proc",
                          "options": ["nosuid", "noexec", "nodev"]})
    else:
        # a user namespace that does not own the pid namespace may not mount a new procfs
        mounts.insert(0, {"destination": "/proc", "type": "bind", "source": "/proc",
                          "options": ["rbind", "nosuid", "noexec", "nodev"]})
    if "ipc" in namespaces:
        mounts.append({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                       "options": ["nosuid", "noexec", "nodev"]})
    if program and program.startswith("@"):
        # the host program, reachable inside without writing into the rootfs
        annotations["org.capsa.init.host-path"] = program[1:]
        mounts.append({"destination": "/dev/.capsa-init", "type": "bind", "source": program[1:],
                       "options": ["bind", "ro", "nosuid", "nodev"]})
        args = ["/dev/.capsa-init"]
    elif program:
        args = [program]
    else:
        args = list(cfg.get("command") or image_config.get("Entrypoint") or []) + \
            ([] if cfg.get("command") else list(image_config.get("Cmd") or []))
    if cfg.get("command") and not shell:
        args = args + cfg["command"] if cfg.get("init") else list(cfg["command"])
    if not args:
        raise ConfigError("nothing to run: set init or command", field="configs/" + name)
    for m in facts.get("mounts", []):
        mounts.append({"destination": m["target"], "type": "bind", "source": m["source"],
                       "options": ["rbind", "ro" if m["readonly"] else "rw"]})
    if keep_env is not None:
        env = [k + "=" + v for k, v in keep_env.items()]
    else:
        # minimal_containers starts init with an empty environment
        env = list(image_config.get("Env") or []) if cfg.get("image") else []
    env += [k + "=" + v for k, v in cfg.get("env", [])]
    if cfg.get("image") and not any(e.startswith("PATH=") for e in env):
        env.insert(0, "PATH=" + DEFAULT_PATH)
    if shell and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=" + os.environ.get("TERM", "xterm") if keep_env is None else "TERM=xterm")
    caps = [c for c in CAPABILITIES[:facts.get("cap_last", 40) + 1]
            if facts.get("host_caps") is None or c in facts["host_caps"]]
    linux = {
        "namespaces": [{"type": "mount"}] + [{"type": t} for t in namespaces if t != "time"],
        "resources": build_limits(cfg),
        "cgroupsPath": "/capsa/" + facts["id"],
        "devices": [],
    }
    network = cfg.get("network", "host")
    if network != "host":
        ns = {"type": "network"}
        if facts.get("netns"):
            ns["path"] = facts["netns"]
        linux["namespaces"].append(ns)
    for path in ("/dev/fuse", "/dev/kvm"):
        dev = facts.get("devices", {}).get(path)
        if dev and not (path == "/dev/kvm" and userns):
            linux["devices"].append({"path": path, "type": dev["type"], "major": dev["major"],
                                     "minor": dev["minor"], "fileMode": 0o666 if path ==
                                     "/dev/fuse" else 0o660, "uid": 0, "gid": 0})
    if userns:
        start = cfg["id_map_start"]
        linux["uidMappings"] = [{"containerID": 0, "hostID": start, "size": ID_MAP_SIZE}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": start, "size": ID_MAP_SIZE}]
    uid, gid = 0, 0
    if cfg.get("user"):
        u, _, g = cfg["user"].partition(":")
        if not u.isdigit() or (g and not g.isdigit()):
            raise ConfigError("user must be UID[:GID] numbers", field="configs/" + name + " user")
        uid, gid = int(u), int(g or u)
    spec = {
        "ociVersion": "1.0.2",
        "process": {"terminal": bool(shell), "user": {"uid": uid, "gid": gid}, "args": args,
                    "env": env, "cwd": cfg.get("workdir") or image_config.get("WorkingDir") or "/",
                    "capabilities": {k: list(caps) for k in
                                     ("bounding", "effective", "permitted")},
                    "noNewPrivileges": False},
        "root": {"path": facts["rootfs"], "readonly": False},
        "mounts": mounts,
        "linux": linux,
        "annotations": annotations,
    }
    if "uts" in namespaces:
        spec["hostname"] = name
    return spec


def build_time_offsets(monotonic, boottime):
    """timens_offsets text that makes both clocks start near zero ("uptime will be reset")."""
    return "monotonic -%d 0\nboottime -%d 0\n" % (int(monotonic), int(boottime))


def apply_time_namespace(kernel):
    """Put this process's future children in a new time namespace whose uptime starts at zero;
    the runtime and the container are then born into it (works with any OCI runtime)."""
    from capsa.syscalls.proc import CLONE_NEWTIME
    kernel.unshare(CLONE_NEWTIME)
    text = build_time_offsets(time.clock_gettime(time.CLOCK_MONOTONIC),
                              time.clock_gettime(time.CLOCK_BOOTTIME))
    # offsets must be written before the namespace has its first member (time_namespaces(7));
    # after unshare, /proc/self/timens_offsets is that of the children's namespace
    kernel.write_file("/proc/self/timens_offsets", text)


def read_checked_mounts(cfg, warn):
    """minimal_containers' mount semantics, checked before anything runs: a `mount` whose source
    is missing is warned about and skipped; a `mount_ro` one aborts the start."""
    out = []
    for m in cfg["mounts"]:
        if not os.path.exists(m["source"]):
            message = "mount %s:%s (line %d): source does not exist" % (m["source"], m["target"],
                                                                      m["line"])
            if m["readonly"]:
                raise ConfigError(message, field="mount_ro", hint="create the source or fix it")
            warn("warning: " + message + "; going on without it")
            continue
        out.append({"source": os.path.realpath(m["source"]), "target": m["target"],
                    "readonly": m["readonly"]})
    return out


def read_config_file(home, name):
    check_name(name)
    path = os.path.join(home, "configs", name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise StateError("no declared container " + name + ": " + path + " does not exist",
                         field="start", hint="write the config file first") from None
    except OSError as err:
        raise ConfigError("cannot open " + path + ": " + err.strerror, field=path) from None
    try:
        data = os.read(fd, MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)
    return build_declared_config(data, "configs/" + name)


def _ensure_dirs(home):
    for sub in ("configs", "logs", "pids"):
        os.makedirs(os.path.join(home, sub), mode=0o755, exist_ok=True)


def apply_prepare_declared(ctx, home, name, cfg, shell=None, keep_env=None, warn=None):
    """Make the engine record and bundle of a declared container run; undone on failure."""
    from capsa.engine.prepare import (read_cap_last, read_device_numbers, read_host_caps,
                                      resolve_image)
    from capsa.engine.store import ContainerStore, format_time, write_json_atomic
    store = ContainerStore(ctx.store_root)
    _replace_previous(ctx, store, name)
    id = store.new_id()
    store.reserve(id, name)
    container_dir = store.path(id)
    made = {"volumes": [], "network": False}
    try:
        mounts = read_checked_mounts(cfg, warn or (lambda m: None))
        image_config = {}
        if cfg.get("image"):
            req = {"rootfs": None, "image": cfg["image"]}
            rootfs, image_config, _ = resolve_image(ctx, req, container_dir)
        else:
            rootfs = cfg["root"]
            if not os.path.isdir(rootfs):
                raise ConfigError("root " + rootfs + " is not a folder", field="configs/" + name
                                  + " root", hint="point root at a root filesystem folder")
        init = shell or cfg.get("init")
        if init and init.startswith("@") and not os.path.isfile(init[1:]):
            raise ConfigError("host program " + init[1:] + " does not exist",
                              field="configs/" + name + (" SHELL" if shell else " init"))
        volumes, volume_records = apply_declared_volumes(ctx, cfg, name, made)
        facts = {"id": id, "rootfs": rootfs, "mounts": mounts + volumes,
                 "cap_last": read_cap_last(), "host_caps": read_host_caps(),
                 "devices": read_device_numbers(["/dev/fuse", "/dev/kvm"]),
                 "image_config": image_config}
        network = cfg.get("network", "host")
        if network not in ("host", "none"):
            from capsa.engine.network.manager import NetworkManager
            made["network"] = True
            result = NetworkManager(os.path.join(ctx.store_root, "network")).attach(
                id, name, network, {"publish": cfg["publish"], "hostname": name})
            facts["netns"] = result.get("netns")
            for dest, key in (("/etc/hosts", "hosts"), ("/etc/resolv.conf", "resolv")):
                if result.get(key):
                    facts["mounts"].append({"source": result[key], "target": dest,
                                            "readonly": False})
        spec = build_declared_spec(cfg, name, facts, shell, keep_env)
        os.mkdir(os.path.join(container_dir, "bundle"), 0o700)
        write_json_atomic(os.path.join(container_dir, "bundle", "config.json"), spec)
        record = {
            "id": id, "name": name, "created": format_time(time.time()),
            "image": cfg.get("image") or cfg.get("root"), "runtime_arg": cfg.get("runtime"),
            "runtime": cfg.get("runtime") or "", "tty": bool(shell), "interactive": bool(shell),
            "rm": True, "restart": cfg["restart"], "stop_signal": 15, "stop_timeout": 10,
            "network": cfg.get("network", "host"), "publish": cfg["publish"], "labels": {},
            "anon_volumes": [v for v, _, anon in made["volumes"] if anon],
            "volume_mounts": volume_records, "declared": True,
            "args": spec["process"]["args"],
            "log_path": os.path.join(home, "logs", name), "log_format": "raw",
            "pid_path": os.path.join(home, "pids", name), "time_ns": "time" in cfg["namespaces"],
        }
        store.save(record)
        return record
    except BaseException:
        from capsa.engine.prepare import apply_undo_prepare
        apply_undo_prepare(ctx, store, id, name, made)
        raise


def apply_declared_volumes(ctx, cfg, name, made):
    """`volume=` keys (docker -v syntax): binds must exist, named volumes are made on first use.
    Returns (mounts for build_declared_spec, records of the named ones)."""
    from capsa.engine.runflags import build_volume_flag
    from capsa.engine.volumes import VolumeStore
    vols = VolumeStore(ctx.store_root)
    mounts, records = [], []
    for text in cfg.get("volumes", []):
        try:
            item = build_volume_flag(text)
        except CapsaError as err:
            raise ConfigError(err.message, field="configs/" + name + " volume",
                              hint=err.hint) from None
        if item["kind"] == "bind":
            if not os.path.exists(item["source"]):
                raise ConfigError("volume source " + item["source"] + " does not exist",
                                  field="configs/" + name + " volume")
            source = os.path.realpath(item["source"])
        else:
            vol, created = vols.ensure(item["source"] or None)
            made["volumes"].append((vol, created, not item["source"]))
            records.append(item)
            source = vols.data_path(vol)
        mounts.append({"source": source, "target": item["target"],
                       "readonly": item["readonly"]})
    return mounts, records


def _replace_previous(ctx, store, name):
    """minimal_containers kills a running instance before starting again; capsa also removes
    the finished record of the previous run."""
    from capsa.engine.lifecycle import apply_remove_files, apply_stop
    try:
        record = store.lookup(name)
    except StateError:
        return
    if not record.get("declared"):
        raise StateError("the name " + name + " belongs to a container made with capsa create",
                         field="start", hint="use `capsa start " + name + "` without -d/-s, or "
                                             "rename the config")
    if store.status(record) in ("running", "restarting", "paused"):
        apply_stop(ctx, store, record, timeout=0)
    apply_remove_files(store, record)


def cmd_start_declared(ctx, name, opts):
    from capsa.engine.lifecycle import _runtime_for, apply_start
    from capsa.engine.monitor import Monitor
    from capsa.engine.store import ContainerStore
    home = read_home(ctx, opts.get("home"))
    _ensure_dirs(home)
    shell = None
    keep_env = None
    if opts.get("shell") or opts.get("shell_env"):
        shell = os.environ.get("SHELL") or "/bin/bash"
        if opts.get("shell_env"):
            keep_env = dict(os.environ)
    log_path = os.path.join(home, "logs", name)
    warnings = []

    def warn(message):
        warnings.append(message)
        ctx.stderr.write("capsa: " + name + ": " + message + "\n")

    try:
        cfg = read_config_file(home, name)
        record = apply_prepare_declared(ctx, home, name, cfg, shell, keep_env, warn)
        runtime = _runtime_for(ctx, record)
    except CapsaError as err:
        _write_log(log_path, "capsa: " + err.line() + "\n", truncate=True)
        ctx.stderr.write("capsa: " + err.line() + "\n")
        return 1
    _write_log(log_path, "".join("capsa: " + w + "\n" for w in warnings), truncate=True)
    store = ContainerStore(ctx.store_root)
    if shell:
        tee = (_fd(ctx.stdout, 1), _fd(ctx.stderr, 2))
        mon = Monitor(store, record, runtime, foreground=True, tee_fds=tee, stdin_fd=0)
        return _run_monitor(ctx, mon)
    if opts.get("declared_foreground"):
        mon = Monitor(store, record, runtime, foreground=True)
        return _run_monitor(ctx, mon)
    code = apply_start(ctx, record, runtime, foreground=False, quiet=True)
    return 0 if code == 0 else 1


def _run_monitor(ctx, mon):
    try:
        return mon.run()
    except CapsaError as err:
        ctx.stderr.write("capsa: " + err.line() + "\n")
        return 1


def _fd(stream, default):
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return default


def _write_log(path, text, truncate=False):
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if truncate else os.O_APPEND)
        fd = os.open(path, flags, 0o644)
    except OSError:
        return
    try:
        if text:
            os.write(fd, text.encode())
    finally:
        os.close(fd)


def cmd_kill_declared(ctx, name, opts):
    """SIGKILL every process of the container (they get no chance to clean up)."""
    from capsa.engine.store import ContainerStore
    home = read_home(ctx, opts.get("home"))
    check_name(name)
    store = ContainerStore(ctx.store_root)
    pid_path = os.path.join(home, "pids", name)
    try:
        record = store.lookup(name)
    except StateError:
        record = None
    if record is not None and store.status(record) in ("running", "paused", "restarting"):
        from capsa.engine.lifecycle import apply_stop
        apply_stop(ctx, store, record, timeout=0)
        return 0
    try:
        with open(pid_path) as f:
            pid = int(f.read().strip() or "0")
    except (OSError, ValueError):
        raise StateError("container " + name + " is not running", field="kill",
                         hint="see `capsa list -r`") from None
    try:
        os.unlink(pid_path)
    except FileNotFoundError:
        pass
    if pid > 1:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return 0


def build_list_rows(home, store):
    """[(name, running, kind)] of declared configs and named engine containers."""
    from capsa.engine.store import read_pid_start
    rows = {}
    try:
        names = sorted(os.listdir(os.path.join(home, "configs")))
    except FileNotFoundError:
        names = []
    for name in names:
        running = False
        try:
            with open(os.path.join(home, "pids", name)) as f:
                pid = int(f.read().strip() or "0")
            running = pid > 0 and read_pid_start(pid) is not None
        except (OSError, ValueError):
            pass
        rows[name] = [name, running, "declared"]
    for record in store.records():
        name = record.get("name")
        if not name:
            continue
        running = store.status(record) in ("running", "paused", "restarting")
        if name in rows:
            rows[name][1] = rows[name][1] or running
        else:
            rows[name] = [name, running, "created"]
    return [tuple(rows[n]) for n in sorted(rows)]


def cmd_list(ctx, argv):
    from capsa.engine.options import parse_options
    from capsa.engine.store import ContainerStore
    opts, _ = parse_options(argv, [("-r --running", "running", "bool"),
                                   ("--format", "format", "str"), ("--home", "home", "str")],
                            "list", max_positionals=0)
    home = read_home(ctx, opts.get("home"))
    rows = build_list_rows(home, ContainerStore(ctx.store_root))
    if opts["running"]:
        rows = [r for r in rows if r[1]]
    if opts.get("format") == "json":
        from capsa.engine.output import write_json_out
        write_json_out(ctx, [{"Name": n, "Running": r, "Kind": k} for n, r, k in rows])
        return 0
    ctx.stdout.write("NAME                            RUNNING\n")
    for name, running, _ in rows:
        ctx.stdout.write(name[:31].ljust(32) + ("Yes" if running else "No") + "\n")
    return 0


def cmd_start_all(ctx, argv):
    """Start every declared container and every named container made with `capsa create`, each
    under its own monitor (which restarts it per policy); stay in the foreground supervising
    them until they have all ended or this command gets SIGTERM/SIGINT (then stop them all)."""
    import signal
    from capsa.engine.lifecycle import _runtime_for, apply_stop
    from capsa.engine.monitor import Monitor
    from capsa.engine.options import parse_options
    from capsa.engine.store import ContainerStore
    opts, _ = parse_options(argv, [("--home", "home", "str")], "start-all", max_positionals=0)
    home = read_home(ctx, opts.get("home"))
    _ensure_dirs(home)
    store = ContainerStore(ctx.store_root)
    children = {}
    failed = 0
    for name, running, kind in build_list_rows(home, store):
        if running:
            continue
        try:
            if kind == "declared":
                cfg = read_config_file(home, name)
                warnings = []
                record = apply_prepare_declared(ctx, home, name, cfg, warn=warnings.append)
                _write_log(record["log_path"], "".join("capsa: " + w + "\n" for w in warnings),
                           truncate=True)
            else:
                record = store.lookup(name)
            runtime = _runtime_for(ctx, record)
        except CapsaError as err:
            ctx.stderr.write("capsa: " + name + ": " + err.line() + "\n")
            failed += 1
            continue
        ctx.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                code = Monitor(store, record, runtime, foreground=False).run()
            except CapsaError as err:
                _write_log(record.get("log_path") or store.path(record["id"], "ctr.log"),
                           "capsa: " + err.line() + "\n")
            except BaseException:
                pass
            os._exit(code & 0xFF)
        children[pid] = record
        ctx.stdout.write(name + "\n")
    ctx.stdout.flush()
    def stop_all(signum, frame):
        # waitpid is retried after a handler returns (PEP 475): stop from the handler itself
        for record in list(children.values()):
            try:
                apply_stop(ctx, store, store.load(record["id"]), timeout=0)
            except CapsaError:
                pass

    saved = {s: signal.signal(s, stop_all) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while children:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            children.pop(pid, None)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    return 1 if failed else 0
