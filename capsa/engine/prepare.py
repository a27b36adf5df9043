"""Turning a run request into a container on disk: record, rootfs, volumes, /etc files, bundle.

`apply_prepare_container` makes STORE/containers/ID and undoes everything it made when a step
fails; `build_dry_run` computes the same config without touching the host. Imports the engine's
own modules, the image store and network manager lazily.
"""
import os
import time

from capsa.errors import CapsaError, ConfigError, ImageError, UsageError
from capsa.engine import specbuild
from capsa.engine.store import ContainerStore, format_time, write_json_atomic

DEFAULT_IMAGE_NAMES = ("busybox", "busybox:latest", "localhost/busybox", "localhost/busybox:latest",
                       "docker.io/library/busybox:latest")


def read_rootfs_file(rootfs, relpath, limit=1 << 20):
    """Read a small file inside a (hostile) rootfs without following any symlink out of it."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parts = [p for p in relpath.split("/") if p and p != "."]
        for part in parts[:-1]:
            if part == "..":
                return None
            nfd = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        ffd = os.open(parts[-1], flags, dir_fd=fd)
        try:
            return os.read(ffd, limit).decode(errors="replace")
        finally:
            os.close(ffd)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_rootfs_lookup(rootfs, args0, env):
    """Docker's 126/127 before any runtime runs: is args[0] present and executable in the rootfs?
    Returns None when fine or unknown, else (code, message)."""
    if "/" in args0:
        candidates = [args0]
    else:
        path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        for item in env:
            if item.startswith("PATH="):
                path = item[5:]
        candidates = [d.rstrip("/") + "/" + args0 for d in path.split(":") if d.startswith("/")]
    for cand in candidates:
        st = _rootfs_stat(rootfs, cand)
        if st is None:
            continue
        import stat
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return None
        if "/" in args0:
            return (126, "exec: " + args0 + ": permission denied")
    if "/" in args0:
        return (127, "exec: " + args0 + ": no such file or directory")
    return (127, "exec: " + repr(args0) + ": executable file not found in $PATH")


def _rootfs_stat(rootfs, path, depth=0):
    """stat() of `path` resolved inside rootfs, following symlinks as chroot would."""
    if depth > 16:
        return None
    cur = "/"
    parts = [p for p in path.split("/") if p and p != "."]
    for i, part in enumerate(parts):
        if part == "..":
            cur = os.path.dirname(cur.rstrip("/")) or "/"
            continue
        nxt = os.path.join(cur, part)
        host = os.path.join(rootfs, nxt.lstrip("/"))
        try:
            st = os.lstat(host)
        except OSError:
            return None
        import stat
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(host)
            base = "/" if target.startswith("/") else cur
            rest = "/".join(parts[i + 1:])
            return _rootfs_stat(rootfs, os.path.join(base, target, rest) if rest
                                else os.path.join(base, target), depth + 1)
        cur = nxt
    try:
        return os.lstat(os.path.join(rootfs, cur.lstrip("/")))
    except OSError:
        return None


def read_device_numbers(paths):
    import stat
    out = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            out[path] = {"type": "c" if stat.S_ISCHR(st.st_mode) else "b",
                         "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
                         "fileMode": stat.S_IMODE(st.st_mode)}
    return out


def read_cap_last():
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def read_host_caps():
    """Names of the capabilities in this process's bounding set: a container cannot be given
    more (root here lacks CAP_SYS_RESOURCE, so "all capabilities" must mean these)."""
    from capsa.engine.runflags import CAPABILITIES
    mask = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    mask = int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    last = read_cap_last()
    return [c for i, c in enumerate(CAPABILITIES[:last + 1]) if mask is None or mask >> i & 1]


def check_rlimits(ulimits, host_caps):
    """Without CAP_SYS_RESOURCE no runtime can raise a limit above capsa's own hard limit: say so
    before the runtime fails with a bare EPERM."""
    if not ulimits or "CAP_SYS_RESOURCE" in host_caps:
        return
    import resource
    for item in ulimits:
        number = getattr(resource, item["type"], None)
        if number is None:
            continue
        hard = resource.getrlimit(number)[1]
        if hard != resource.RLIM_INFINITY and (item["hard"] > hard or item["hard"] < 0):
            raise UsageError("%s hard limit %d is above this host's %d" % (
                item["type"], item["hard"], hard), field="--ulimit",
                hint="capsa lacks CAP_SYS_RESOURCE here; use at most %d" % hard)


def read_init_binary():
    from capsa.engine.runtimes import find_binary
    for name in ("catatonit", "tini-static", "tini"):
        path = find_binary(name)
        if path:
            return path
    return None


def read_seccomp(req, caps):
    value = req["security"]["seccomp"]
    if value == "unconfined":
        return None
    if value:
        try:
            from capsa import jsonlite
            with open(value, "rb") as f:
                profile = jsonlite.loads(f.read())
        except OSError as err:
            raise UsageError("cannot read seccomp profile " + value + ": " + err.strerror,
                             field="--security-opt seccomp") from None
        except ValueError:
            raise ConfigError("seccomp profile " + value + " is not valid JSON",
                              field="--security-opt seccomp") from None
        return specbuild.build_docker_seccomp(profile, caps)
    try:
        from capsa.runtime.security import defaults
    except ImportError:
        return None
    # the profile read through capsa.jsonlite: the runtime's reader imports json (~5 ms a run)
    path = getattr(defaults, "_DATA", None)
    if path:
        from capsa import jsonlite
        try:
            with open(path, "rb") as f:
                return defaults.build_hardened_seccomp(data=jsonlite.loads(f.read()))
        except (OSError, ValueError):
            pass
    return defaults.build_hardened_seccomp()


def resolve_image(ctx, req, container_dir, dry_run=False):
    """-> (rootfs path, image config dict, image record or None).

    Precedence: --rootfs is always a path (folder, tarball, .qcow2/.img disk), even when it
    looks like oci:X; IMAGE is an image reference (a stored name or id, a registry name,
    docker://, oci:, oci-archive:, docker-archive:, dir:), never a path."""
    if req["rootfs"]:
        path = os.path.abspath(req["rootfs"])
        if not os.path.exists(path):
            hint = "give a folder, a tarball, or a .qcow2/.img disk"
            from capsa.engine.images.reference import TRANSPORTS
            if req["rootfs"].partition(":")[0] in TRANSPORTS:
                hint += "; an image such as %s goes where IMAGE goes, without --rootfs" \
                    % req["rootfs"]
            raise UsageError("rootfs " + path + " does not exist", field="--rootfs", hint=hint)
        if os.path.isdir(path) or dry_run:
            return path, {}, None
        from capsa.engine.images.rootfs import apply_container_rootfs
        from capsa.engine.images.store import ImageStore
        rootfs = apply_container_rootfs(ImageStore(ctx.store_root), container_dir, path,
                                        readonly=False, volatile=bool(req.get("rm")))
        return rootfs, {}, None
    from capsa.engine.images.store import ImageStore
    store = ImageStore(ctx.store_root)
    image = read_or_pull_image(ctx, store, req["image"], req.get("pull", "missing"),
                               req.get("tls_verify", True))
    if dry_run:
        # nothing is mounted in a dry run: read users from (and plan against) the topmost layer
        # that has /etc/passwd, else the bottom one
        layers = list(image.get("layer_dirs") or [])
        stand_in = next((d for d in reversed(layers)
                         if os.path.isfile(os.path.join(d, "etc", "passwd"))),
                        layers[0] if layers else os.path.join(container_dir, "rootfs"))
        return stand_in, image.get("config") or {}, image
    from capsa.engine.images.rootfs import apply_container_rootfs
    # by id: the image just resolved, whatever a concurrent tag or import does to the name
    rootfs = apply_container_rootfs(store, container_dir, image["id"], readonly=False,
                                    volatile=bool(req.get("rm")))
    return rootfs, image.get("config") or {}, image


def read_or_pull_image(ctx, store, ref, pull, tls_verify=True):
    """The image record for `ref` under Docker's --pull: missing (pull when not stored),
    always, never. The embedded busybox is imported instead of pulled, so the default image
    works offline. A file transport (oci:, oci-archive:, docker-archive:, dir:) is read into
    the store on every run whatever --pull says, as podman does (libimage applies the pull
    policy to registries only); what the store holds already is not copied again."""
    from capsa.engine.images.reference import build_run_image
    source = build_run_image(ref)
    if source["kind"] == "file":
        try:
            image_id, names = store.import_transport(ref, with_names=True)
        except ImageError as err:
            raise ImageError("cannot run %s: %s" % (ref, err.message), field="image",
                             hint=err.hint or "check the path and the name after it") from None
        image = store.resolve(image_id)
        image["pulled_from"] = ref
        image["pulled_as"] = names[0] if names else image_id
        return image
    if pull == "always" and ref not in DEFAULT_IMAGE_NAMES:
        _pull(store, ref, tls_verify)
        return store.resolve(ref)
    try:
        return store.resolve(ref)
    except ImageError as missing:
        if ref in DEFAULT_IMAGE_NAMES:
            apply_default_image(ctx, store)
            return store.resolve(ref)
        if pull == "never":
            raise ImageError(missing.message + " and --pull=never forbids pulling it",
                             field="image", hint="pull it first, or drop --pull=never") from None
        try:
            store.pull(ref, tls_verify=tls_verify)
        except ImageError as err:
            raise ImageError(missing.message + ", and pulling it failed: " + err.line(),
                             field="image", hint="check the name, or pull/import it first") \
                from None
        return store.resolve(ref)


def _pull(store, ref, tls_verify):
    try:
        store.pull(ref, tls_verify=tls_verify)
    except ImageError as err:
        raise ImageError("pulling %s failed: %s" % (ref, err.line()), field="image",
                         hint="check the name and that the registry is reachable, or use "
                              "--pull=missing to run a stored copy") from None


def apply_default_image(ctx, store):
    """The embedded busybox image, imported on first use so `capsa run busybox` works offline."""
    from capsa.busybox import DEFAULT_ROOTFS, build_busybox_rootfs
    folder = DEFAULT_ROOTFS if ctx.store_root == "/var/lib/capsa" \
        else os.path.join(ctx.store_root, "default-rootfs")
    if not os.path.isdir(os.path.join(folder, "bin")):
        build_busybox_rootfs(folder, replace=True)
    store.import_rootfs(folder, "busybox:latest",
                        {"Cmd": ["sh"], "Env": ["PATH=" + specbuild.DEFAULT_PATH]})


def build_etc_files(hostname, network, add_hosts, dns):
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if network == "host":
        try:
            with open("/etc/hosts") as f:
                hosts = f.read()
        except OSError:
            pass
    else:
        hosts += "127.0.1.1\t" + hostname + "\n"
    for item in add_hosts:
        name, sep, addr = item.partition(":")
        if not sep or not name or not addr:
            raise UsageError("invalid --add-host " + repr(item), field="--add-host",
                             hint="write NAME:IP")
        hosts += addr + "\t" + name + "\n"
    resolv = ""
    if dns:
        resolv = "".join("nameserver " + d + "\n" for d in dns)
    elif network != "none":
        try:
            with open("/etc/resolv.conf") as f:
                resolv = f.read()
        except OSError:
            pass
    return {"hostname": hostname + "\n", "hosts": hosts, "resolv.conf": resolv}


def build_image_label(req, image):
    """What ps/inspect show as the image: the stored name a file transport was read in under
    (as `capsa images` lists it), else the reference as given, else the --rootfs path."""
    if image and image.get("pulled_as"):
        return image["pulled_as"]
    return req["image"] or req["rootfs"]


def build_record(req, id, runtime_name, image_ref, stop_signal, declared=False):
    return {
        "id": id, "name": req["name"], "created": format_time(time.time()),
        "image": image_ref, "rootfs_arg": req["rootfs"], "runtime": runtime_name,
        "tty": req["tty"], "interactive": req["interactive"], "rm": req["rm"],
        "restart": req["restart"], "stop_signal": stop_signal,
        "stop_timeout": req["stop_timeout"] if req["stop_timeout"] is not None else 10,
        "network": req["network"], "publish": req["publish"], "labels": req["labels"],
        "anon_volumes": [], "declared": declared, "args": None,
        "volume_mounts": [m for m in req["mounts"] if m["kind"] == "volume"],
    }


def apply_prepare_container(ctx, req, runtime, trace=None, declared=False, spec_edit=None):
    """Make the container (not started); returns its record. Undoes everything on failure."""
    store = ContainerStore(ctx.store_root)
    id = store.new_id()
    store.reserve(id, req["name"])
    container_dir = store.path(id)
    made = {"volumes": [], "network": False}
    try:
        rootfs, image_config, image = _timed(trace, "rootfs", resolve_image, ctx, req,
                                             container_dir)
        facts, volumes_made = build_facts(ctx, req, id, rootfs, image_config, container_dir)
        made["volumes"] = volumes_made
        if req["network"] == "slirp4netns":
            from capsa.engine import slirp
            made["network"] = "slirp4netns"
            result = slirp.apply_attach(ctx.store_root, id, facts["hostname"], req["publish"])
            facts["netns"] = result["netns"]
            facts["etc_files"]["/etc/hosts"] = result["hosts"]
            facts["etc_files"]["/etc/resolv.conf"] = result["resolv"]
        elif req["network"] not in ("none", "host"):
            from capsa.engine.network.manager import NetworkManager
            net = NetworkManager(os.path.join(ctx.store_root, "network"))
            made["network"] = True
            result = net.attach(id, req["name"] or id[:12], req["network"],
                                {"publish": req["publish"], "hostname": facts["hostname"],
                                 "dns": req["dns"], "add_hosts": req["add_host"]})
            facts["netns"] = result.get("netns")
            if result.get("hosts"):
                facts["etc_files"]["/etc/hosts"] = result["hosts"]
            if result.get("resolv"):
                facts["etc_files"]["/etc/resolv.conf"] = result["resolv"]
        spec = specbuild.build_spec(req, image_config, facts, base=_base_spec())
        if getattr(ctx, "rootless", False):
            from capsa.engine.rootless import build_unmapped_options_removed, read_own_maps
            build_unmapped_options_removed(spec, *read_own_maps())
        if spec_edit:
            spec_edit(spec)
        problem = read_rootfs_lookup(rootfs, spec["process"]["args"][0], spec["process"]["env"]) \
            if not req["init"] else None
        if problem:
            err = CapsaError(problem[1], field="run")
            err.exit_code = problem[0]
            raise err
        stop_signal = specbuild.build_stop_signal(req, image_config)
        record = build_record(req, id, runtime.name if hasattr(runtime, "name") else str(runtime),
                              build_image_label(req, image), stop_signal, declared)
        record["runtime_arg"] = req["runtime"]
        record["runtime_path"] = getattr(runtime, "binary", None)
        record["args"] = spec["process"]["args"]
        record["anon_volumes"] = [v for v, _, anon in volumes_made if anon]
        record["hostname"] = facts["hostname"]
        record["image_id"] = image.get("id") if image else None
        bundle = os.path.join(container_dir, "bundle")
        os.mkdir(bundle, 0o700)
        write_json_atomic(os.path.join(bundle, "config.json"), spec)
        store.save(record)
        return record
    except BaseException:
        apply_undo_prepare(ctx, store, id, req["name"], made)
        raise


def _timed(trace, name, fn, *args):
    t0 = time.monotonic()
    try:
        return fn(*args)
    finally:
        if trace:
            trace(name, time.monotonic() - t0)


def _base_spec():
    try:
        from capsa.runtime.specgen import build_default_spec
    except ImportError:
        return specbuild.build_base_spec()
    spec = build_default_spec(terminal=False)
    spec.setdefault("linux", {}).setdefault("resources", {})
    spec["root"] = {"path": "rootfs", "readonly": False}
    spec["process"]["noNewPrivileges"] = False
    return spec


def apply_undo_prepare(ctx, store, id, name, made):
    container_dir = store.path(id)
    if made.get("network") == "slirp4netns":
        from capsa.engine import slirp
        slirp.apply_detach(ctx.store_root, id)
    elif made.get("network"):
        try:
            from capsa.engine.network.manager import NetworkManager
            NetworkManager(os.path.join(ctx.store_root, "network")).detach(id)
        except CapsaError:
            pass
    try:
        # idempotent, and a no-op when no rootfs step was recorded
        from capsa.engine.images.rootfs import apply_release_rootfs
        apply_release_rootfs(container_dir)
    except (ImportError, CapsaError):
        pass
    from capsa.engine.volumes import VolumeStore
    vols = VolumeStore(ctx.store_root)
    for vol, created, _ in made.get("volumes", []):
        if created:
            vols.remove(vol, force=True)
    store.remove({"id": id, "name": name})


def build_facts(ctx, req, id, rootfs, image_config, container_dir, dry_run=False):
    """Everything build_spec needs from the host; creates volumes (unless dry_run) and returns
    (facts, [(volume name, created_now, anonymous)])."""
    from capsa.engine.volumes import VolumeStore
    hostname = req["hostname"] or id[:12]
    user_text = req["user"] or image_config.get("User") or "0"
    user = specbuild.build_user(user_text, read_rootfs_file(rootfs, "etc/passwd"),
                                read_rootfs_file(rootfs, "etc/group"))
    paths = [d["host"] for d in req["devices"]]
    for key in ("device_read_bps", "device_write_bps", "device_read_iops", "device_write_iops"):
        paths += [x["path"] for x in req["resources"].get(key, [])]
    facts = {"id": id, "rootfs": rootfs, "hostname": hostname, "user": user,
             "device_numbers": read_device_numbers(paths), "cap_last": read_cap_last(),
             "host_caps": read_host_caps(),
             "init_path": read_init_binary() if req["init"] else None,
             "cgroups_path": "/capsa/" + id}
    check_rlimits(req["ulimits"], facts["host_caps"])
    caps = specbuild.build_capabilities(req, facts["cap_last"], facts["host_caps"])["bounding"]
    facts["seccomp"] = None if req["privileged"] else read_seccomp(req, caps)
    if req["privileged"]:
        facts["host_devices"] = read_host_devices()
    vols = VolumeStore(ctx.store_root)
    sources, made = [], []
    mounts = list(req["mounts"])
    taken = set(m["target"] for m in mounts)
    for target in sorted((image_config.get("Volumes") or {}).keys()):
        if target not in taken:
            mounts.append({"kind": "volume", "source": "", "target": target, "readonly": False,
                           "propagation": None, "copy": True})
    req["mounts"] = mounts
    try:
        for m in mounts:
            if m["kind"] == "bind":
                if not os.path.exists(m["source"]):
                    raise UsageError("bind source path does not exist: " + m["source"],
                                     field="--volume", hint="create it first or fix the path")
                sources.append(os.path.realpath(m["source"]))
            elif m["kind"] == "volume":
                if dry_run:
                    sources.append(os.path.join(vols.dir, m["source"] or "<anonymous>", "_data"))
                    continue
                name, created = vols.ensure(m["source"] or None)
                made.append((name, created, not m["source"]))
                path = vols.data_path(name)
                if created and m.get("copy", True):
                    vols.apply_copy_up(rootfs, m["target"], path)
                sources.append(path)
            else:
                sources.append("tmpfs")
    except BaseException:
        for name, created, _ in made:
            if created:
                vols.remove(name, force=True)
        raise
    facts["mount_sources"] = sources
    etc = build_etc_files(hostname, req["network"], req["add_host"], req["dns"])
    facts["etc_files"] = {}
    if not dry_run:
        for name, text in etc.items():
            path = os.path.join(container_dir, name)
            with open(path, "w") as f:
                f.write(text)
            facts["etc_files"]["/etc/" + name] = path
    else:
        for name in etc:
            facts["etc_files"]["/etc/" + name] = os.path.join(container_dir, name)
    return facts, made


def read_host_devices():
    """--privileged: every character/block device of the host's /dev top level."""
    import stat
    out = []
    try:
        names = sorted(os.listdir("/dev"))
    except OSError:
        return out
    for name in names:
        path = "/dev/" + name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            continue
        if name in ("console", "tty", "ptmx", "null", "zero", "full", "random", "urandom"):
            continue
        out.append({"path": path, "type": "c" if stat.S_ISCHR(st.st_mode) else "b",
                    "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
                    "fileMode": stat.S_IMODE(st.st_mode), "uid": 0, "gid": 0})
    return out


def build_dry_run(ctx, req, runtime):
    """The config.json and, when capsa's runtime is importable, its plan — host untouched."""
    id = "0" * 64
    container_dir = os.path.join(ctx.store_root, "containers", "<dry-run>")
    rootfs, image_config, image = resolve_image(ctx, req, container_dir, dry_run=True)
    facts, _ = build_facts(ctx, req, id, rootfs, image_config, container_dir, dry_run=True)
    spec = specbuild.build_spec(req, image_config, facts, base=_base_spec())
    out = {"config": spec, "plan": None}
    if req["image"]:
        out["rootfs"] = "an overlay of the image's layers at %s/rootfs (not mounted in a dry run)" \
            % container_dir
    try:
        from capsa.runtime.plan import build_plan, read_facts
        out["plan"] = build_plan(spec, container_dir, id, read_facts(), {"no_pivot": False})
    except ImportError:
        out["plan"] = "capsa.runtime.plan is not available in this build"
    except CapsaError as err:
        out["plan"] = "the runtime refuses this config: " + err.line()
    return out
