"""Process choreography of `create`: the launcher (this process), an optional intermediate, and the
container's init, talking over capsa.runtime.sync. No re-exec: everything is imported, then
os.fork(); a second fork only when a new or joined PID or time namespace needs one.

    launcher (host)                         child (→ intermediate when it forks)      init
    mkdir state, mkfifo, cgroup create
    fork ─────────────────────────────────► seal imports, dumpable=0
                                            join/unshare user ns
          ◄──────────── userns              (new user ns only)
    write uid_map, gid_map ─ maps-ok ─────►  become ns root
                                            join by path, unshare the rest, time offsets
                                            fork (pid/time ns) ───────────────────────► (init)
          ◄──────────── init-pid {pid}      exit                      host identity, rlimits,
    join init into cgroup (~10 ms)                                    mounts (meanwhile)
          ───────────── cgroup-ok ────────────────────────────────────► unshare cgroup ns
          ◄─────────────────────────────────────────────────────────── create-hooks
    prestart, createRuntime hooks ─ hooks-done ───────────────────────────────────────►
                                                                      createContainer hooks,
                                                                      pivot_root, masks, sysctl,
          ◄─────────────────────────────────────────────── console {slave} + pty master fd
    send the master to --console-socket
          ◄─────────────────────────────────────────────────────────── ready
    write state.json and --pid-file, exit                             block on exec.fifo until
                                                                      `start`, then security
                                                                      and execve
Any step of the child or init that fails sends `error` with the CapsaError line instead; the
launcher then kills what it started and removes what it made. Must not import command modules.
"""
import os
import sys
import time

from capsa.errors import CapsaError, ConfigError, ContainerError, KernelError, StateError
from capsa.runtime import state as states
from capsa.runtime import sync

PR_SET_CHILD_SUBREAPER = 36
PR_SET_DUMPABLE = 4
O_PATH = 0o10000000

# Modules the child may touch after it has entered the container: imported before fork,
# because an import after pivot_root would load code from the container (see _seal_imports).
_PRELOAD = ("_signal", "fcntl", "select", "capsa.runtime.apply.hooks",
            "capsa.runtime.apply.identity", "capsa.runtime.apply.namespaces",
            "capsa.runtime.apply.paths", "capsa.runtime.apply.process",
            "capsa.runtime.apply.rootfs", "capsa.runtime.apply.security",
            "capsa.runtime.apply.tty")


class _SealedImports:
    """A meta_path finder that refuses every import: the child runs inside a hostile rootfs."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        raise ImportError("import of %s refused: the runtime is inside the container" % name)


def _seal_imports():
    sys.meta_path.insert(0, _SealedImports)


def _preload():
    for name in _PRELOAD:
        __import__(name)


_WARMUPS = []


def reap_warmups():
    """Collect the warm-up children (an engine using the runtime in-process lives on)."""
    while _WARMUPS:
        _reap((_WARMUPS.pop(),))


def start_cgroup_warmup():
    """Fork a throwaway process that moves itself into the cgroup it is already in.

    Any cgroup.procs write takes the global cgroup_threadgroup_rwsem for writing, and the first
    one in a while waits out an RCU grace period (~10-15 ms here); later writes within the next
    grace period do not. Started while the launcher imports and plans, it makes the init's real
    join cheap (measured: 14.5 ms -> 1.4 ms median). The move is a no-op of our own process;
    any failure (rootless, no cgroupfs) only costs the speed-up."""
    try:
        pid = os.fork()
    except OSError:
        return
    if pid:
        _WARMUPS.append(pid)
        return
    if pid == 0:
        try:
            from capsa.runtime.cgroups.layout import read_layout
            for path in (read_layout().get("own") or {}).values():
                fd = os.open(path + "/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
                os.write(fd, b"0")
                break
        except BaseException:
            pass
        os._exit(0)


def _now_rfc3339():
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%09dZ" % int(now % 1 * 1e9)


def create_container(ctx, kernel, container_id, bundle, plan, spec, pid_file=None,
                     subreaper=False):
    """Run the whole create choreography; returns the saved state record (init waits on fifo)."""
    _refuse_host_network_sysctls(plan)
    states.ensure_root(ctx.root)
    directory = states.container_dir(ctx.root, container_id)
    try:
        os.mkdir(directory, 0o711)
    except FileExistsError:
        raise StateError("container %s already exists" % container_id,
                         hint="delete it first, or pick another id")
    except OSError as exc:
        raise StateError("cannot create %s: %s" % (directory, exc.strerror))
    lock_fd = states.lock(directory)
    record = {
        "id": container_id, "pid": 0, "pid_start": None, "bundle": bundle,
        "rootfs": plan["rootfs_path"], "created": _now_rfc3339(), "owner": "",
        "ociVersion": plan["oci_version"], "annotations": plan["annotations"],
        # of the plan, exec needs only the namespaces: start/kill/delete read this file, so it
        # stays small (the rootfs steps and seccomp rules are rebuilt from the spec if needed)
        "cgroup": plan["cgroup"], "hooks": plan["hooks"],
        "plan": {"namespaces": plan["namespaces"]}, "spec": spec,
        "dir": directory,
    }
    init_pid = child = 0
    made_cgroup = False
    try:
        states.save(directory, _stored(record))
        fifo = os.path.join(directory, states.FIFO_NAME)
        os.mkfifo(fifo, 0o622)
        # any container user (a mapped or non-root uid) must be able to open it for writing
        os.chmod(fifo, 0o622)
        fifo_dir = os.open(directory, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        from capsa.runtime.cgroups import manager
        join_cgroup = manager.apply_cgroup_join
        try:
            if plan["cgroup"].get("systemd"):
                # systemd makes a unit's cgroups only with a pid to put there: after the fork
                join_cgroup = manager.apply_systemd_join
                for warning in plan["cgroup"]["systemd"].get("warnings") or ():
                    ctx.log("warning", warning)
            else:
                manager.apply_cgroup_create(kernel, plan["cgroup"])
            made_cgroup = True
        except CapsaError as err:
            # runc's --rootless: cgroups the caller may not create are left out, not fatal
            if not _ignore_cgroup_error(ctx, err, plan["cgroup"]):
                raise
            # no cgroup at all, not an empty one: every later command's "has a cgroup" is
            # then the same plain check
            plan["cgroup"] = record["cgroup"] = None
            join_cgroup = _no_join
            # no cgroup of its own to show: the cgroupfs mount is left out, as runc does
            plan["rootfs"]["steps"] = [step for step in plan["rootfs"]["steps"]
                                       if not step.get("cgroupfs")]
            if ctx.debug:
                ctx.log("debug", "rootless: no cgroup (%s)" % err.message)
        from capsa.runtime.apply.security import prepare_security
        prepare_security(plan["security"])
        _preload()
        parent_end, child_end = sync.make_pair()
        if subreaper:
            kernel.prctl(PR_SET_CHILD_SUBREAPER, 1)
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:
            parent_end.close()
            # the flock belongs to this create, not to the init that outlives it
            os.close(lock_fd)
            _child_main(kernel, plan, child_end, fifo_dir)  # never returns
        child_end.close()
        os.close(fifo_dir)
        init_pid = _launcher_side(ctx, kernel, plan, record, parent_end, child,
                                  join_cgroup)
        record["pid"] = init_pid
        record["pid_start"] = states.read_start_time(init_pid)
        if ctx.debug:
            paths = (plan["cgroup"] or {}).get("paths", {})
            ctx.log("debug", "container %s: init pid %d parked on exec.fifo; namespaces new=%s "
                    "joined=%s; cgroup %s" % (container_id, init_pid,
                                             ",".join(plan["namespaces"]["new"]),
                                             ",".join(plan["namespaces"]["join"]),
                                             " ".join(sorted(set(paths.values())))))
        states.save(directory, _stored(record))
        if pid_file:
            _write_pid_file(pid_file, init_pid)
        parent_end.close()
        return record
    except BaseException as err:
        _undo_create(kernel, directory, (child, init_pid or record["pid"]),
                     plan["cgroup"] if made_cgroup else None)
        if isinstance(err, OSError) and not isinstance(err, CapsaError):
            raise ContainerError("create failed: %s" % err)
        raise
    finally:
        os.close(lock_fd)
        reap_warmups()


def _refuse_host_network_sysctls(plan):
    """net.* sysctls in a network namespace joined by path: fine, unless that namespace is
    the host's own (runc's check), where they would retune the host."""
    path = plan["namespaces"]["join"].get("network")
    keys = [key for key in plan["sysctl"] if key.startswith("net.")]
    if not path or not keys:
        return
    try:
        joined, host = os.stat(path), os.stat("/proc/self/ns/net")
    except OSError:
        return  # joining it fails later with its own message
    if (joined.st_dev, joined.st_ino) == (host.st_dev, host.st_ino):
        raise ConfigError("the network namespace joined is the host's own",
                          field="linux.sysctl." + keys[0],
                          hint="the host's network sysctls are not the container's to set")


def _ignore_cgroup_error(ctx, err, plan=None):
    """runc's --rootless: cgroups the caller may not make are skipped; "auto" means an
    unprivileged caller or one inside a user namespace. Limits the spec asks for are never
    dropped silently: they make the error stand, with the reason."""
    rootless = getattr(ctx, "rootless", "false")
    if rootless == "auto":
        from capsa.userns import read_in_userns
        rootless = "true" if os.geteuid() != 0 or read_in_userns() else "false"
    if rootless != "true" or getattr(err, "errno", 0) not in (1, 13, 30):  # EPERM EACCES EROFS
        return False
    if plan and plan.get("writes"):
        raise KernelError("limits need cgroups, and this rootless caller may not make them "
                          "(%s)" % err.message, errno=err.errno,
                          field="linux.resources",
                          hint="drop the limits, or run where cgroups are delegated to you")
    return True


def _no_join(kernel, plan, pid):
    return None


def _stored(record):
    stored = dict(record)
    stored.pop("dir", None)
    stored.pop("console_master", None)
    return stored


def _write_pid_file(path, pid):
    """Atomic, as conmon and the containerd shim read it as soon as create returns."""
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".capsa-tmp")
    with open(tmp, "w") as handle:
        handle.write(str(pid))
    os.rename(tmp, path)


def _undo_create(kernel, directory, children, cgroup):
    """Leave nothing behind after a failed create: our processes, the cgroup, the state folder."""
    for pid in children:
        if pid > 0:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    _reap(children)
    if cgroup is not None:
        from capsa.runtime.cgroups.manager import apply_cgroup_destroy
        try:
            apply_cgroup_destroy(kernel, cgroup)
        except CapsaError:
            pass
    remove_tree(directory)


def _reap(pids):
    """Wait for these children only: an engine calling us in-process has children of its own."""
    for pid in pids:
        if pid <= 0:
            continue
        while True:
            try:
                os.waitpid(pid, 0)
            except InterruptedError:
                continue
            except ChildProcessError:
                pass
            break


def remove_tree(path):
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        os.unlink(path)
        return
    for name in names:
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            remove_tree(full)
        else:
            try:
                os.unlink(full)
            except FileNotFoundError:
                pass
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def _launcher_side(ctx, kernel, plan, record, sock, child, join_cgroup):
    from capsa.runtime.apply.hooks import apply_hooks
    from capsa.runtime.apply.namespaces import apply_id_maps
    if "user" in plan["namespaces"]["new"]:
        sync.expect(sock, "userns")
        apply_id_maps(kernel, child, plan["userns"])
        sync.send(sock, "maps-ok")
    payload, _ = sync.expect(sock, "init-pid")
    init_pid = record["pid"] = payload["pid"]  # known now, so a failure below kills it
    if init_pid != child:
        os.waitpid(child, 0)
    # The first cgroup.procs write waits out an RCU grace period (~10 ms on this host); the
    # init sets up its mounts meanwhile and waits for cgroup-ok only before anything of the
    # user's can run (hooks, exec) and before it unshares its cgroup namespace.
    try:
        join_cgroup(kernel, plan["cgroup"], init_pid)
        sync.send(sock, "cgroup-ok")
    except (CapsaError, OSError):
        # the init may have failed (and said why) while we were writing cgroup.procs
        _raise_child_error(sock)
        raise
    if plan.get("pidfd_socket"):
        _send_pidfd(plan["pidfd_socket"], init_pid)
    sync.expect(sock, "create-hooks")
    record["pid"] = init_pid
    oci_state = states.build_oci_state(record, "creating")
    apply_hooks("prestart", plan["hooks"], oci_state)
    apply_hooks("createRuntime", plan["hooks"], oci_state)
    sync.send(sock, "hooks-done")
    while True:
        kind, payload, fds = sync.receive(sock)
        if kind == "console" and not plan["console_socket"]:
            record["console_master"] = fds[0]  # a foreground run relays it (capsa.runtime.console)
            continue
        if kind == "console":
            try:
                sync.send_fd_to_path(plan["console_socket"], fds[0], payload["slave"].encode())
            except OSError as exc:
                raise ContainerError("cannot send the terminal to --console-socket %s: %s" %
                                     (plan["console_socket"], exc.strerror))
            finally:
                for fd in fds:
                    os.close(fd)
            continue
        if kind == "seccomp-fd":
            from capsa.runtime.apply.security import apply_send_notify_fd
            try:
                apply_send_notify_fd(fds[0], payload["listener_path"], payload.get("metadata", ""),
                                     states.build_oci_state(record, "creating"))
            finally:
                for fd in fds:
                    os.close(fd)
            continue
        if kind == "ready":
            return init_pid
        for fd in fds:
            os.close(fd)
        if kind == "error":
            raise ContainerError(payload.get("message", "container setup failed"),
                                 field=payload.get("field"), hint=payload.get("hint"))
        if kind == "eof":
            raise ContainerError("the container's process died during setup",
                                 hint="a memory or pids limit too small for start-up shows so")
        raise ContainerError("protocol error: unexpected %r" % kind)


def _raise_child_error(sock):
    """If the child already reported why it died, that is the error to show."""
    import select
    if select.select([sock], [], [], 0)[0]:
        kind, payload, fds = sync.receive(sock)
        for fd in fds:
            os.close(fd)
        if kind == "error":
            raise ContainerError(payload.get("message", "container setup failed"),
                                 field=payload.get("field"), hint=payload.get("hint"))


def _send_pidfd(path, pid):
    """--pidfd-socket: hand the caller a pidfd of the init (it outlives pid reuse)."""
    pidfd = os.pidfd_open(pid)
    try:
        sync.send_fd_to_path(path, pidfd)
    except OSError as exc:
        raise ContainerError("cannot send a pidfd to --pidfd-socket %s: %s" % (path, exc.strerror))
    finally:
        os.close(pidfd)


def _child_main(kernel, plan, sock, fifo_dir):
    """The forked child: becomes (or forks) the container's init. Never returns."""
    status = 1
    try:
        _seal_imports()
        kernel.prctl(PR_SET_DUMPABLE, 0)
        kernel.set_name("capsa:child")
        from capsa.runtime.apply.rootfs import apply_idmapped_sources
        # idmapped binds need privilege over the source's namespace: made before the user ns
        prepared = apply_idmapped_sources(kernel, plan["rootfs"])
        _child_namespaces(kernel, plan, sock)
        if plan["needs_fork"]:
            init = os.fork()
            if init != 0:
                sync.send(sock, "init-pid", {"pid": init})
                os._exit(0)
        else:
            sync.send(sock, "init-pid", {"pid": os.getpid()})
        _init_main(kernel, plan, sock, fifo_dir, prepared)
    except CapsaError as err:
        _send_error(sock, err.message, err.field, err.hint)
    except BaseException as err:  # report as data: no traceback crosses into the container
        _send_error(sock, "%s: %s" % (type(err).__name__, err), None, None)
    os._exit(status)


def _send_error(sock, message, field, hint):
    try:
        sync.send(sock, "error", {"message": message, "field": field, "hint": hint})
    except OSError:
        sys.stderr.write("capsa-runtime: %s\n" % message)


def _child_namespaces(kernel, plan, sock):
    from capsa.runtime.apply.namespaces import apply_join, apply_time_offsets, apply_unshare
    namespaces = plan["namespaces"]
    new, join = namespaces["new"], namespaces["join"]
    apply_join(kernel, join, ("user",))
    if "user" in new:
        apply_unshare(kernel, ("user",))
        unprivileged = plan["userns"].get("writer", "root") != "root"
        if unprivileged:
            # /proc/<pid>/{uid,gid}_map and setgroups of a non-dumpable process belong to root:
            # an unprivileged parent (or its newuidmap) can open them only while we are
            # dumpable, and we run no code of the container's yet
            kernel.prctl(PR_SET_DUMPABLE, 1)
        sync.send(sock, "userns")
        sync.expect(sock, "maps-ok")
        if unprivileged:
            kernel.prctl(PR_SET_DUMPABLE, 0)
        kernel.setresgid(0, 0, 0)
        kernel.setresuid(0, 0, 0)
    apply_join(kernel, join, [kind for kind in join if kind not in ("user", "cgroup")])
    apply_unshare(kernel, [kind for kind in new if kind not in ("user", "cgroup")])
    if "network" in new:
        # a new network namespace starts with lo down; runc brings it up (its "loopback"
        # network), and podman's and Docker's --network none count on that
        kernel.link_up("lo")
    apply_time_offsets(kernel, plan["time_offsets"])


def _init_main(kernel, plan, sock, fifo_dir, prepared=None):
    from capsa.runtime.apply import hooks, identity, namespaces, process, rootfs, security, tty
    kernel.set_name("capsa:init")
    early = plan["rootfs_needs_cgroupns"]
    if early:
        _enter_cgroup(kernel, plan, sock, namespaces)
    proc = plan["process"]
    namespaces.apply_host_identity(kernel, plan["hostname"], plan["domainname"])
    if plan.get("new_keyring"):
        _join_keyring(kernel, plan["id"])
    process.apply_rlimits(kernel, proc)
    proc_self = _open_proc_self(kernel)
    process.apply_process_attributes(kernel, proc, proc_self)
    kernel.close(proc_self)
    process.apply_personality(kernel, plan["personality"])
    rootfs.apply_mounts(kernel, plan["rootfs"], prepared)
    # Through the host's procfs, before pivot_root: namespaced sysctls resolve in the writer's
    # own namespaces, the image cannot swap this /proc (CVE-2019-19921 class), and the
    # container's read-only /proc/sys is not in the way yet.
    _apply_sysctl(kernel, plan["sysctl"])
    if not early:
        _enter_cgroup(kernel, plan, sock, namespaces)
    sync.send(sock, "create-hooks")
    sync.expect(sock, "hooks-done")
    state = {"ociVersion": plan["oci_version"], "id": plan["id"], "status": "creating",
             "pid": 0, "bundle": plan["bundle"], "annotations": plan["annotations"]}
    hooks.apply_hooks("createContainer", plan["hooks"], state)
    host_init = None
    if plan.get("host_init"):
        # resolved on the host: the rootfs is not pivoted yet
        host_init = _open_host_init(kernel, plan["host_init"])
    rootfs.apply_pivot(kernel, plan["rootfs"])
    if proc["terminal"]:
        tty.apply_console(kernel, proc, plan["rootfs"], sock)
    process.apply_cwd(kernel, proc["cwd"], create=True)
    if host_init is None:
        executable = process.find_executable(proc["args"][0], proc["env"])
        process.check_interpreters(kernel, executable)
    security.apply_before_identity(kernel, plan["security"])
    identity.apply_identity(kernel, proc, setgroups_allowed=plan.get("setgroups", True))

    def send_fd(fd, listener_path=None, metadata=""):
        sync.send(sock, "seccomp-fd", {"listener_path": listener_path, "metadata": metadata}, [fd])
    early = plan["security"].get("seccomp_before_start")
    if early:
        security.apply_after_identity(kernel, plan["security"], send_fd)
    process.apply_fd_sweep(kernel, plan["preserve_fds"])
    sync.send(sock, "ready")
    sock.close()
    _wait_for_start(fifo_dir)
    hooks.apply_hooks("startContainer", plan["hooks"], dict(state, status="created"))
    if not early:
        security.apply_after_identity(kernel, plan["security"], send_fd)
    process.apply_final_affinity(kernel, proc)
    if host_init is not None:
        process.apply_execveat(kernel, host_init, proc)
    process.apply_exec(kernel, executable, proc)


def _join_keyring(kernel, container_id):
    from capsa.errors import KernelError
    try:
        kernel.join_session_keyring(container_id)
    except KernelError as err:
        if err.errno not in (38, 1, 13):  # ENOSYS, or keyctl filtered/denied on this host
            raise


def _enter_cgroup(kernel, plan, sock, namespaces):
    """Wait until the launcher has moved us into the container's cgroups, then enter (or make)
    the cgroup namespace, whose root is thereby the container's cgroup."""
    sync.expect(sock, "cgroup-ok")
    if "cgroup" in plan["namespaces"]["join"]:
        namespaces.apply_join(kernel, plan["namespaces"]["join"], ("cgroup",))
    if "cgroup" in plan["namespaces"]["new"]:
        namespaces.apply_unshare(kernel, ("cgroup",))


def _open_host_init(kernel, path):
    from capsa.errors import ConfigError, KernelError
    field = "annotations.org.capsa.init.host-path"
    try:
        fd = kernel.open(path, os.O_RDONLY)
    except KernelError as err:
        raise ConfigError("cannot open host init %s: %s" % (path, err.message), field=field)
    st = kernel.fstat(fd)
    if (st.st_mode & 0o170000) != 0o100000 or not st.st_mode & 0o111:
        kernel.close(fd)
        raise ConfigError("host init %s is not an executable file" % path, field=field)
    return fd


def _open_proc_self(kernel):
    """An fd on this process's procfs directory, proven to be procfs (CVE-2019-19921 class)."""
    from capsa.syscalls.fs import PROC_SUPER_MAGIC
    fd = kernel.open("/proc/self", os.O_RDONLY | os.O_DIRECTORY)
    if kernel.fstatfs_type(fd) != PROC_SUPER_MAGIC:
        kernel.close(fd)
        raise ContainerError("/proc/self is not procfs on the host")
    return fd


def _apply_sysctl(kernel, sysctl):
    if not sysctl:
        return
    from capsa.syscalls.fs import PROC_SUPER_MAGIC
    from capsa.errors import ConfigError
    fd = kernel.open("/proc/sys", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if kernel.fstatfs_type(fd) != PROC_SUPER_MAGIC:
            raise ConfigError("/proc/sys of the host is not procfs", field="linux.sysctl")
        for key, value in sysctl.items():
            try:
                kernel.write_file(key.replace(".", "/"), value, dirfd=fd)
            except CapsaError as err:
                raise ConfigError("cannot set %s=%s: %s" % (key, value, err.message),
                                  field="linux.sysctl." + key)
    finally:
        kernel.close(fd)


def _wait_for_start(fifo_dir):
    """Block until `start` opens the fifo for reading (opened through the folder fd: the host
    path is unreachable after pivot_root)."""
    fd = os.open("exec.fifo", os.O_WRONLY | os.O_CLOEXEC, dir_fd=fifo_dir)
    os.write(fd, b"0")
    os.close(fd)
    os.close(fifo_dir)
