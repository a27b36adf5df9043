"""`exec` choreography: a new process that joins every namespace and the cgroup of a running
container and gets the same security treatment as its init (unless the process says otherwise).

    launcher (host)                       child                         process
    pidfd_open(init), check start time
    fork ───────────────────────────────► seal imports, dumpable=0
                                          setns(pidfd, all namespaces)
                                          fork (pid/time ns) ─────────► (process)
          ◄───────────── init-pid {pid}   exit                          console, cwd check,
    join the process to the cgroup ─ cgroup-ok ────────────────────────► rlimits (meanwhile)
          ◄──────────────────────────────────────── console / seccomp-fd   identity, security,
    forward them                                                        execve
          ◄───────────── eof (execve closed the channel) or error
    write --pid-file; with --detach exit, else wait and return its status
Must not import command modules.
"""
from capsa import jsonlite as json
import os

from capsa.errors import CapsaError, ConfigError, ContainerError, StateError, UsageError
from capsa.runtime import state as states
from capsa.runtime import sync


def build_exec_process(record, opts, args):
    """The OCI process for exec: a --process file, or the container's process with the command
    line's args and overrides (as runc does)."""
    base = dict((record.get("spec") or {}).get("process") or {})
    if opts.get("process"):
        try:
            with open(opts["process"], "rb") as handle:
                process = json.loads(handle.read())
        except OSError as exc:
            raise ConfigError("cannot read process file %s: %s" % (opts["process"], exc.strerror),
                              field="--process")
        except ValueError as exc:
            raise ConfigError("process file %s is not valid JSON: %s" % (opts["process"], exc),
                              field="--process")
        if not isinstance(process, dict):
            raise ConfigError("process file must hold a JSON object", field="--process")
        if opts.get("tty"):
            process["terminal"] = True
        return process
    if len(args) < 2:
        raise UsageError("exec: missing the command to run",
                         hint="capsa-runtime exec <container-id> <command> [args...]")
    process = dict(base)
    process["args"] = list(args[1:])
    process["terminal"] = bool(opts.get("tty"))
    process["env"] = list(base.get("env") or []) + list(opts.get("env") or [])
    if opts.get("cwd"):
        process["cwd"] = opts["cwd"]
    user = dict(base.get("user") or {})
    if opts.get("user"):
        uid, _, gid = opts["user"].partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise UsageError("invalid --user %r: want uid[:gid] as numbers" % opts["user"])
        user["uid"] = int(uid)
        user["gid"] = int(gid) if gid else 0
    if opts.get("additional_gids"):
        try:
            user["additionalGids"] = [int(g) for g in opts["additional_gids"]]
        except ValueError:
            raise UsageError("invalid --additional-gids: want numbers")
    process["user"] = user
    if opts.get("cap"):
        caps = dict(base.get("capabilities") or {})
        for key in ("bounding", "effective", "permitted"):
            caps[key] = list(caps.get(key) or []) + [c for c in opts["cap"]
                                                       if c not in (caps.get(key) or [])]
        process["capabilities"] = caps
    if opts.get("no_new_privs"):
        process["noNewPrivileges"] = True
    if opts.get("apparmor"):
        process["apparmorProfile"] = opts["apparmor"]
    if opts.get("process_label"):
        process["selinuxLabel"] = opts["process_label"]
    return process


def build_exec_cgroup(plan, specs):
    """runc's exec --cgroup: `path` (every controller) or `ctrl[,ctrl]:path`, a sub-cgroup of
    the container's that must already exist and may not climb out of it."""
    if not specs:
        return plan
    import posixpath
    paths = dict(plan["paths"])
    for text in specs:
        controllers, _, sub = text.rpartition(":")
        clean = posixpath.normpath("/" + sub).lstrip("/")
        if not clean or ".." in sub.split("/"):
            raise UsageError("invalid --cgroup %r: want a path below the container's cgroup" % text)
        names = controllers.split(",") if controllers else list(paths)
        for name in names:
            key = "unified" if name in ("", "unified") and "unified" in paths else name
            if key not in paths:
                raise UsageError("invalid --cgroup %r: the container has no %s cgroup" %
                                 (text, name))
            target = posixpath.join(plan["paths"][key], clean)
            if not os.path.isdir(target):
                raise UsageError("--cgroup %r: %s does not exist" % (text, target),
                                 hint="create the sub-cgroup first")
            paths[key] = target
    return dict(plan, paths=paths)


def exec_process(ctx, kernel, container_id, opts, args):
    """Run the exec choreography; returns the exit status (foreground) or 0 (detached)."""
    from capsa.runtime.spec import NAMESPACES, build_process
    from capsa.runtime.apply.security import (build_security_plan, prepare_security,
                                              read_security_facts)
    record = states.load(ctx.root, container_id)
    status = states.derive_status(record)
    if status == "paused" and not opts.get("ignore_paused"):
        raise StateError("cannot exec in container %s: it is paused" % container_id,
                         hint="resume it first, or pass --ignore-paused")
    if status not in ("running", "created", "paused"):
        raise StateError("cannot exec in container %s: it is %s" % (container_id, status))
    oci_process = build_exec_process(record, opts, args)
    process = build_process(oci_process, "process")
    if process["terminal"] and not opts.get("console_socket") and opts.get("detach"):
        raise ConfigError("a detached process with a terminal needs --console-socket",
                          field="process.terminal", hint="pass --console-socket, or drop --tty")
    spec = dict(record.get("spec") or {})
    spec["process"] = oci_process
    security = build_security_plan(spec, read_security_facts())
    plan = record["plan"]
    types = list(plan["namespaces"]["new"]) + list(plan["namespaces"]["join"])
    flags = 0
    for kind in types:
        flags |= NAMESPACES[kind][0]
    needs_fork = bool({"pid", "time"} & set(types))
    pidfd = os.pidfd_open(record["pid"])
    if states.read_start_time(record["pid"]) != record.get("pid_start"):
        os.close(pidfd)
        raise StateError("container %s is not running" % container_id)
    prepare_security(security)
    from capsa.runtime.launch import _preload
    _preload()
    parent_end, child_end = sync.make_pair()
    detach = bool(opts.get("detach"))
    if not detach:
        kernel.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: the process reparents to us
    exec_plan = {"process": process, "security": security, "flags": flags,
                 "needs_fork": needs_fork, "preserve_fds": int(opts.get("preserve_fds") or 0),
                 "setgroups": _read_setgroups(record["pid"])}
    child = os.fork()
    if child == 0:
        parent_end.close()
        _child(kernel, exec_plan, child_end, pidfd)
    child_end.close()
    os.close(pidfd)
    pid = 0
    try:
        payload, _ = sync.expect(parent_end, "init-pid")
        pid = payload["pid"]
        if pid != child:
            os.waitpid(child, 0)
        if opts.get("pidfd_socket"):
            from capsa.runtime.launch import _send_pidfd
            _send_pidfd(opts["pidfd_socket"], pid)
        cgroup = record.get("cgroup")
        if cgroup:
            cgroup = build_exec_cgroup(cgroup, opts.get("cgroup"))
        try:
            if cgroup:
                # the process prepares meanwhile and waits for cgroup-ok before its identity
                # switch and exec (see launch.py on the cost of the first cgroup.procs write)
                from capsa.runtime.cgroups.manager import apply_cgroup_join
                apply_cgroup_join(kernel, cgroup, pid)
            sync.send(parent_end, "cgroup-ok")
        except (CapsaError, OSError):
            from capsa.runtime.launch import _raise_child_error
            _raise_child_error(parent_end)
            raise
        master = _serve(parent_end, opts, record)
    except BaseException:
        if pid:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        from capsa.runtime.launch import _reap
        _reap((child, pid))
        raise
    finally:
        parent_end.close()
        from capsa.runtime.launch import reap_warmups
        reap_warmups()
    if opts.get("pid_file"):
        from capsa.runtime.launch import _write_pid_file
        _write_pid_file(opts["pid_file"], pid)
    if detach:
        return 0
    from capsa.runtime.commands.run import forward_signals, wait_forwarding
    if master is not None:
        from capsa.runtime.console import relay
        forward_signals(pid)
        start_time = states.read_start_time(pid)
        relay(master, lambda: states.read_start_time(pid) != start_time)
        os.close(master)
    return wait_forwarding(pid)


def _serve(sock, opts, record):
    """Answer the process until execve closes the channel; returns a pty master to relay when
    there is a terminal and no --console-socket."""
    master = None
    while True:
        kind, payload, fds = sync.receive(sock)
        try:
            if kind == "eof":
                return master
            if kind == "console" and not opts.get("console_socket"):
                master = fds.pop(0)
            elif kind == "console":
                try:
                    sync.send_fd_to_path(opts["console_socket"], fds[0], payload["slave"].encode())
                except OSError as exc:
                    raise ContainerError("cannot send the terminal to --console-socket %s: %s" %
                                         (opts["console_socket"], exc.strerror))
            elif kind == "seccomp-fd":
                from capsa.runtime.apply.security import apply_send_notify_fd
                apply_send_notify_fd(fds[0], payload["listener_path"], payload.get("metadata", ""),
                                     states.build_oci_state(record))
            elif kind == "error":
                raise ContainerError(payload.get("message", "exec failed"),
                                     field=payload.get("field"), hint=payload.get("hint"))
            else:
                raise ContainerError("protocol error: unexpected %r" % kind)
        finally:
            for fd in fds:
                os.close(fd)


def _read_setgroups(pid):
    """Whether the container's user namespace allows setgroups(2): a rootless one mapping only
    its owner's id denies it for good. Read through the host's /proc (the pid is checked)."""
    try:
        with open("/proc/%d/setgroups" % pid, "rb") as handle:
            return handle.read().strip() != b"deny"
    except OSError:
        return True


def _child(kernel, plan, sock, pidfd):
    from capsa.runtime.launch import _seal_imports, _send_error
    try:
        _seal_imports()
        kernel.prctl(4, 0)  # PR_SET_DUMPABLE: no ptrace or /proc/<pid>/exe from the container
        kernel.set_name("capsa:exec")
        kernel.setns(pidfd, plan["flags"])
        if plan["needs_fork"]:
            pid = os.fork()
            if pid != 0:
                sync.send(sock, "init-pid", {"pid": pid})
                os._exit(0)
        else:
            sync.send(sock, "init-pid", {"pid": os.getpid()})
        _process(kernel, plan, sock)
    except CapsaError as err:
        _send_error(sock, err.message, err.field, err.hint)
    except BaseException as err:
        _send_error(sock, "%s: %s" % (type(err).__name__, err), None, None)
    os._exit(1)


def _process(kernel, plan, sock):
    from capsa.runtime.apply import identity, process, security, tty
    proc = plan["process"]
    process.apply_rlimits(kernel, proc)
    if proc["terminal"]:
        tty.apply_exec_console(kernel, proc, sock)
    process.apply_cwd(kernel, proc["cwd"])
    executable = process.find_executable(proc["args"][0], proc["env"])
    process.check_interpreters(kernel, executable)
    sync.expect(sock, "cgroup-ok")
    security.apply_before_identity(kernel, plan["security"])
    identity.apply_identity(kernel, proc, setgroups_allowed=plan["setgroups"])

    def send_fd(fd, listener_path=None, metadata=""):
        sync.send(sock, "seccomp-fd", {"listener_path": listener_path, "metadata": metadata}, [fd])
    process.apply_fd_sweep(kernel, plan["preserve_fds"])
    security.apply_after_identity(kernel, plan["security"], send_fd)
    process.apply_exec(kernel, executable, proc)
