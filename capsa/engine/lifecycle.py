"""The Docker-style container commands: run, create, start, stop, restart, kill, rm, ps, logs,
wait, inspect, exec, top, stats, cp, pause, unpause.

Each `cmd_X(ctx, argv) -> int` parses its own flags with capsa.engine.options; the runtime is
reached only through capsa.engine.runtimes. Heavy or optional modules are imported lazily.
"""
import os
import time

from capsa import jsonlite
from capsa.errors import CapsaError, StateError, UsageError
from capsa.engine.options import build_help, parse_options
from capsa.engine.store import ContainerStore, format_time

RUN_USAGE = "[OPTIONS] IMAGE [COMMAND] [ARG...]"


def _runtime_for(ctx, record_or_name):
    from capsa.engine.runtimes import build_runtime
    name = record_or_name
    if isinstance(record_or_name, dict):
        name = record_or_name.get("runtime_arg") or record_or_name.get("runtime_path")
    runtime = build_runtime(name or getattr(ctx, "runtime", None), ctx.store_root)
    if isinstance(record_or_name, dict) and record_or_name.get("time_ns") and \
            hasattr(runtime, "timens_pid"):
        state = ContainerStore(ctx.store_root).state(record_or_name["id"])
        runtime.timens_pid = state.get("pid")
    return runtime


def _trace_printer(ctx):
    def trace(name, seconds):
        ctx.stderr.write("trace %8.2f ms  %s\n" % (seconds * 1000.0, name))
        ctx.stderr.flush()
    return trace


def _read_env_files(paths):
    out = []
    for path in paths:
        try:
            with open(path) as f:
                out.append((path, f.read()))
        except OSError as err:
            raise UsageError("cannot read env file " + path + ": " + err.strerror,
                             field="--env-file") from None
    return out


def build_request_from_argv(ctx, argv, command):
    from capsa.engine.runflags import RUN_TABLE, build_run_request
    opts, positionals = parse_options(argv, RUN_TABLE, command)
    if opts["help"]:
        return None, opts
    req = build_run_request(opts, positionals, dict(os.environ), _read_env_files(opts["env_file"]))
    return req, opts


def cmd_run(ctx, argv):
    return _run_or_create(ctx, argv, "run")


def cmd_create(ctx, argv):
    return _run_or_create(ctx, argv, "create")


def _run_or_create(ctx, argv, command):
    from capsa.engine.prepare import apply_prepare_container, build_dry_run
    t0 = time.monotonic()
    try:
        req, opts = build_request_from_argv(ctx, argv, command)
        if req is None:
            from capsa.engine.runflags import RUN_TABLE
            ctx.stdout.write(build_help(command, RUN_USAGE, RUN_TABLE))
            return 0
        if getattr(ctx, "rootless", False):
            from capsa.engine.rootless import check_rootless_request
            if not opts.get("network"):
                req["network"] = "slirp4netns"   # bridges need root; rootless podman's default
            check_rootless_request(req)
        trace = _trace_printer(ctx) if opts["trace"] else None
        if trace:
            trace("parse flags", time.monotonic() - t0)
        runtime = _runtime_for(ctx, req["runtime"])
        if opts["dry_run"]:
            from capsa.engine.output import write_json_out
            write_json_out(ctx, build_dry_run(ctx, req, runtime))
            return 0
        if command == "run" and hasattr(runtime, "warm_up"):
            runtime.warm_up()
        t1 = time.monotonic()
        record = apply_prepare_container(ctx, req, runtime, trace)
        if trace:
            trace("prepare container", time.monotonic() - t1)
    except CapsaError as err:
        ctx.stderr.write("capsa: " + err.line() + "\n")
        return err.exit_code if err.exit_code in (126, 127) else 125
    if command == "create":
        ctx.stdout.write(record["id"] + "\n")
        return 0
    return apply_start(ctx, record, runtime, foreground=not req["detach"], trace=trace,
                       print_id=req["detach"])


def apply_start(ctx, record, runtime, foreground, trace=None, print_id=False, quiet=False):
    """Run a prepared container: in this process (foreground) or under a detached monitor."""
    from capsa.engine.monitor import Monitor, apply_detached_monitor, build_exit_code_for_error
    store = ContainerStore(ctx.store_root)
    try:
        os.unlink(store.path(record["id"], "stop-requested"))
    except FileNotFoundError:
        pass
    if not foreground:
        from capsa.engine.conmon import apply_conmon_start, use_conmon
        if use_conmon(record, runtime):
            failure = apply_conmon_start(store, record, runtime, record.get("runtime_arg"))
        else:
            failure = apply_detached_monitor(store, record, runtime)
        if failure:
            ctx.stderr.write("capsa: " + failure.get("error", "start failed") + "\n")
            return failure.get("code", 125)
        if print_id:
            ctx.stdout.write(record["id"] + "\n")
        elif not quiet:
            ctx.stdout.write((record.get("name") or record["id"]) + "\n")
        return 0
    for stream in (ctx.stdout, ctx.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    stdin_fd = 0 if record.get("interactive") else None
    tee = (_fd_of(ctx.stdout, 1), _fd_of(ctx.stderr, 2))
    mon = Monitor(store, record, runtime, foreground=True, tee_fds=tee, stdin_fd=stdin_fd,
                  trace=trace)
    t0 = time.monotonic()
    try:
        code = mon.run()
    except CapsaError as err:
        ctx.stderr.write("capsa: " + err.line() + "\n")
        return build_exit_code_for_error(err.message)
    if trace:
        trace("container ran", time.monotonic() - t0)
    return code


def _fd_of(stream, default):
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return default


def apply_remove_files(store, record, volumes=False, ctx_root=None):
    """Release everything a container holds on the host: rootfs mounts, network, volumes, folder."""
    root = ctx_root or store.root
    container_dir = store.path(record["id"])
    try:
        from capsa.engine.images.rootfs import apply_release_rootfs
        apply_release_rootfs(container_dir)
    except ImportError:
        pass
    if record.get("network") == "slirp4netns":
        from capsa.engine import slirp
        slirp.apply_detach(root, record["id"])
    elif record.get("network") not in (None, "none", "host"):
        try:
            from capsa.engine.network.manager import NetworkManager
            NetworkManager(os.path.join(root, "network")).detach(record["id"])
        except (ImportError, CapsaError):
            pass
    if volumes and record.get("anon_volumes"):
        from capsa.engine.volumes import VolumeStore
        vols = VolumeStore(root)
        for name in record.get("anon_volumes", []):
            vols.remove(name, force=True)
    store.remove(record)


def _lookup_all(ctx, refs, command):
    if not refs:
        raise UsageError(command + " needs at least one container", field=command,
                         hint="capsa " + command + " CONTAINER [CONTAINER...]")
    store = ContainerStore(ctx.store_root)
    return store, [store.lookup(r) for r in refs]


def _each(ctx, refs, command, fn):
    """Docker's multi-container commands: do each, report failures, exit 1 if any failed."""
    if not refs:
        raise UsageError(command + " needs at least one container", field=command,
                         hint="capsa " + command + " CONTAINER [CONTAINER...]")
    store = ContainerStore(ctx.store_root)
    failed = False
    for ref in refs:
        try:
            fn(store, store.lookup(ref), ref)
        except CapsaError as err:
            ctx.stderr.write("capsa: " + err.line() + "\n")
            failed = True
    return 1 if failed else 0


def cmd_start(ctx, argv):
    table = [("-a --attach", "attach", "bool"), ("-i --interactive", "interactive", "bool"),
             ("-d", "declared_foreground", "bool"), ("-s", "shell", "bool"),
             ("-se", "shell_env", "bool"), ("--home", "home", "str"),
             ("--help", "help", "bool")]
    if argv[:1] == ["-se"]:
        argv = ["--shell-env"] + argv[1:]
        table.append(("--shell-env", "shell_env", "bool"))
    opts, refs = parse_options(argv, table, "start", interspersed=True)
    if opts["help"]:
        ctx.stdout.write(build_help("start", "[-a] [-i] CONTAINER... | [-d|-s|-se] NAME", table))
        return 0
    from capsa.engine import declared
    if len(refs) == 1 and declared.is_declared(ctx, refs[0], opts.get("home")):
        return declared.cmd_start_declared(ctx, refs[0], opts)
    if opts["declared_foreground"] or opts["shell"] or opts["shell_env"]:
        raise UsageError("-d, -s and -se are for declared containers; no config named "
                         + repr(refs[0] if refs else "") + " in "
                         + declared.read_home(ctx, opts.get("home")) + "/configs", field="start")

    def one(store, record, ref):
        if store.status(record) in ("running", "restarting", "paused"):
            ctx.stdout.write(ref + "\n")
            return 0
        if opts["interactive"]:
            record["interactive"] = True
        code = apply_start(ctx, record, _runtime_for(ctx, record), foreground=opts["attach"],
                           quiet=True)
        if code != 0 and not opts["attach"]:
            raise StateError("container " + ref + " failed to start", field="start")
        if not opts["attach"]:
            ctx.stdout.write(ref + "\n")
        return code

    if opts["attach"]:
        store = ContainerStore(ctx.store_root)
        if len(refs) != 1:
            raise UsageError("start -a takes exactly one container", field="start")
        return one(store, store.lookup(refs[0]), refs[0])
    return _each(ctx, refs, "start", one)


def apply_stop(ctx, store, record, timeout=None, signal=None):
    """Docker's stop: the stop signal, up to `timeout` seconds, then SIGKILL; never restarted."""
    id = record["id"]
    _mark_stop(store, id)
    status = store.status(record)
    if status not in ("running", "paused", "restarting"):
        return False
    runtime = _runtime_for(ctx, record)
    timeout = record.get("stop_timeout", 10) if timeout is None else timeout
    sig = signal or record.get("stop_signal") or 15
    if status == "restarting":
        return _wait_exited(store, record, 5.0)
    if status == "paused":
        try:
            runtime.resume(id)
        except CapsaError:
            pass
    try:
        if timeout > 0:
            runtime.kill(id, sig)
        else:
            # every process of the cgroup: without a pid namespace killing init is not enough
            runtime.kill(id, 9, all=True)
    except CapsaError:
        pass
    if not _wait_exited(store, record, float(timeout)):
        try:
            runtime.kill(id, 9, all=True)
        except CapsaError:
            pass
        if not _wait_exited(store, record, 10.0):
            _force_cleanup(ctx, store, record, runtime)
    return True


def _mark_stop(store, id):
    """A stop by the user: the monitor must not restart the container afterwards."""
    try:
        open(store.path(id, "stop-requested"), "w").close()
    except FileNotFoundError:
        pass


def _wait_exited(store, record, timeout):
    """Until the container's exit is recorded and its supervisor let go of it. False on timeout,
    or when container and supervisor are both gone and nobody recorded anything (a crash)."""
    deadline = time.monotonic() + timeout
    orphan_since = None
    while True:
        state = store.state(record["id"])
        status = state.get("status")
        if status == "removed":
            return True
        if status == "exited" and not _monitor_alive(state):
            return True
        now = time.monotonic()
        if status in ("running", "paused") and not _monitor_alive(state) and \
                store.status(record) == "exited":
            # conmon hands over to `capsa container-cleanup`, which takes a moment
            orphan_since = orphan_since or now
            if now - orphan_since > 3.0:
                return False
        if now >= deadline:
            return False
        time.sleep(0.02)


def _force_cleanup(ctx, store, record, runtime):
    """The supervisor is gone (crash, SIGKILL): finish its work ourselves."""
    if store.state(record["id"]).get("monitor") == "conmon":
        from capsa.engine.conmon import apply_cleanup
        apply_cleanup(ctx, store, record)
        return
    try:
        runtime.delete(record["id"], force=True)
    except CapsaError:
        pass
    state = store.state(record["id"])
    if state.get("status") not in ("exited", "removed"):
        store.set_state(record["id"], status="exited", pid=None,
                        exit_code=state.get("exit_code") if state.get("exit_code") is not None
                        else 137, finished_at=format_time(time.time()))


def cmd_stop(ctx, argv):
    table = [("-t --time --timeout", "time", "int"), ("-s --signal", "signal", "str")]
    opts, refs = parse_options(argv, table, "stop", interspersed=True)
    sig = None
    if opts.get("signal"):
        from capsa.engine.runflags import build_signal
        sig = build_signal(opts["signal"], "--signal")

    def one(store, record, ref):
        apply_stop(ctx, store, record, opts.get("time"), sig)
        ctx.stdout.write(ref + "\n")

    return _each(ctx, refs, "stop", one)


def cmd_restart(ctx, argv):
    table = [("-t --time --timeout", "time", "int")]
    opts, refs = parse_options(argv, table, "restart", interspersed=True)

    def one(store, record, ref):
        apply_stop(ctx, store, record, opts.get("time"))
        _wait_exited(store, record, 10.0)
        code = apply_start(ctx, store.load(record["id"]), _runtime_for(ctx, record),
                           foreground=False, quiet=True)
        if code != 0:
            raise StateError("container " + ref + " failed to restart", field="restart")
        ctx.stdout.write(ref + "\n")

    return _each(ctx, refs, "restart", one)


def cmd_kill(ctx, argv):
    table = [("-s --signal", "signal", "str"), ("--home", "home", "str")]
    opts, refs = parse_options(argv, table, "kill", interspersed=True)
    from capsa.engine import declared
    from capsa.engine.runflags import build_signal
    sig = build_signal(opts.get("signal") or "KILL", "--signal")
    store = ContainerStore(ctx.store_root)
    if len(refs) == 1 and declared.is_declared(ctx, refs[0], opts.get("home")):
        try:
            store.lookup(refs[0])
        except StateError:
            return declared.cmd_kill_declared(ctx, refs[0], opts)

    def one(store, record, ref):
        if store.status(record) not in ("running", "paused"):
            raise StateError("container " + ref + " is not running", field="kill")
        if sig in (9, 15):
            _mark_stop(store, record["id"])
        _runtime_for(ctx, record).kill(record["id"], sig)
        ctx.stdout.write(ref + "\n")

    return _each(ctx, refs, "kill", one)


def cmd_rm(ctx, argv):
    table = [("-f --force", "force", "bool"), ("-v --volumes", "volumes", "bool")]
    opts, refs = parse_options(argv, table, "rm", interspersed=True)

    def one(store, record, ref):
        status = store.status(record)
        if status in ("running", "paused", "restarting"):
            if not opts["force"]:
                raise StateError("cannot remove container " + ref + ": it is " + status,
                                 field="rm", hint="stop it first or use rm -f")
            apply_stop(ctx, store, record, timeout=0)
        if not _wait_exited(store, record, 5.0):
            _force_cleanup(ctx, store, record, _runtime_for(ctx, record))
        try:
            _runtime_for(ctx, record).delete(record["id"], force=True)
        except CapsaError:
            pass
        apply_remove_files(store, record, volumes=opts["volumes"])
        ctx.stdout.write(ref + "\n")

    return _each(ctx, refs, "rm", one)


def build_ps_row(store, record, now):
    from capsa.engine.output import build_status_text
    state = store.state(record["id"])
    status = store.status(record)
    return {
        "Id": record["id"], "Names": record.get("name") or "", "Image": record.get("image") or "",
        "Command": " ".join(record.get("args") or []), "Created": record.get("created"),
        "State": status, "Status": build_status_text(status, state, now),
        "ExitCode": state.get("exit_code"), "Pid": state.get("pid") if status == "running" else 0,
        "Ports": ", ".join(record.get("publish") or []), "Runtime": record.get("runtime"),
    }


def cmd_ps(ctx, argv):
    table = [("-a --all", "all", "bool"), ("-q --quiet", "quiet", "bool"),
             ("--format", "format", "str"), ("--no-trunc", "no_trunc", "bool"),
             ("-n --last", "last", "int"), ("-l --latest", "latest", "bool")]
    opts, _ = parse_options(argv, table, "ps", max_positionals=0)
    store = ContainerStore(ctx.store_root)
    now = time.time()
    rows = [build_ps_row(store, r, now) for r in store.records()]
    if not opts["all"] and opts.get("last") is None and not opts["latest"]:
        rows = [r for r in rows if r["State"] in ("running", "paused", "restarting")]
    if opts["latest"]:
        rows = rows[:1]
    elif opts.get("last") is not None:
        rows = rows[:opts["last"]]
    fmt = opts.get("format")
    if opts["quiet"]:
        for r in rows:
            ctx.stdout.write((r["Id"] if opts["no_trunc"] else r["Id"][:12]) + "\n")
        return 0
    if fmt == "json":
        from capsa.engine.output import write_json_out
        write_json_out(ctx, rows)
        return 0
    if fmt and fmt != "table":
        for r in rows:
            ctx.stdout.write(build_go_template(fmt, r) + "\n")
        return 0
    from capsa.engine.output import write_table
    def cut(text, n):
        return text if opts["no_trunc"] or len(text) <= n else text[:n - 1] + "…"

    write_table(ctx, ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
                [[r["Id"] if opts["no_trunc"] else r["Id"][:12], cut(r["Image"], 30),
                  '"' + cut(r["Command"], 20) + '"', _created_age(r["Created"], now), r["Status"],
                  r["Ports"], r["Names"]] for r in rows])
    return 0


def _created_age(created, now):
    from capsa.engine.output import build_age, read_timestamp
    ts = read_timestamp(created)
    return build_age(now - ts) + " ago" if ts else ""


def build_go_template(fmt, row):
    """The subset of Go templates `docker ps --format` users type: {{.Field}} and text."""
    out = []
    i = 0
    while i < len(fmt):
        start = fmt.find("{{", i)
        if start < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:start])
        end = fmt.find("}}", start)
        if end < 0:
            raise UsageError("unterminated {{ in --format", field="--format")
        key = fmt[start + 2:end].strip()
        if key == "json .":
            import json
            out.append(json.dumps(row, sort_keys=True))
        elif key.startswith("."):
            name = key[1:]
            if name not in row:
                name = {"ID": "Id", "Name": "Names"}.get(name, name)
            if name not in row:
                raise UsageError("unknown field " + key + " in --format", field="--format",
                                 hint="fields: " + ", ".join(sorted(row)))
            value = row[name]
            out.append("" if value is None else str(value))
        else:
            raise UsageError("unsupported template " + repr(key), field="--format",
                             hint="use {{.Field}} or json")
        i = end + 2
    return "".join(out).replace("\\t", "\t").replace("\\n", "\n")


def cmd_logs(ctx, argv):
    table = [("-f --follow", "follow", "bool"), ("--tail -n", "tail", "str"),
             ("-t --timestamps", "timestamps", "bool")]
    opts, refs = parse_options(argv, table, "logs", interspersed=True, max_positionals=1)
    if not refs:
        raise UsageError("logs needs a container", field="logs")
    store = ContainerStore(ctx.store_root)
    record = store.lookup(refs[0])
    path = record.get("log_path") or store.path(record["id"], "ctr.log")
    tail = opts.get("tail")
    if tail not in (None, "all"):
        if not tail.isdigit():
            raise UsageError("--tail takes a number or all", field="--tail")
        tail = int(tail)
    else:
        tail = None
    from capsa.engine.logs import apply_print_logs
    apply_print_logs(ctx, store, record, path, opts["follow"], tail, opts["timestamps"])
    return 0


def cmd_wait(ctx, argv):
    opts, refs = parse_options(argv, [("--condition", "condition", "str")], "wait",
                               interspersed=True)

    def one(store, record, ref):
        while True:
            status = store.status(record)
            state = store.state(record["id"])
            busy = state.get("status") in ("running", "restarting") and _monitor_alive(state)
            if status not in ("running", "paused", "restarting") and not busy:
                break
            time.sleep(0.05)
        if not _wait_exited(store, record, 10.0):
            _force_cleanup(ctx, store, record, _runtime_for(ctx, record))
        state = store.state(record["id"])
        code = state.get("exit_code")
        ctx.stdout.write(str(code if code is not None else 0) + "\n")

    return _each(ctx, refs, "wait", one)


def _monitor_alive(state):
    from capsa.engine.store import read_pid_start
    mon = state.get("monitor_pid")
    return bool(mon) and read_pid_start(mon) == state.get("monitor_start")


def cmd_inspect(ctx, argv):
    opts, refs = parse_options(argv, [("-f --format", "format", "str"),
                                      ("--type", "type", "str"), ("-s --size", "size", "bool")],
                               "inspect", interspersed=True)
    if not refs:
        raise UsageError("inspect needs a container", field="inspect")
    store = ContainerStore(ctx.store_root)
    out = []
    for ref in refs:
        record = store.lookup(ref)
        try:
            with open(store.path(record["id"], "bundle", "config.json"), "rb") as f:
                spec = jsonlite.loads(f.read())
        except (OSError, ValueError):
            spec = None
        state = store.state(record["id"])
        state = dict(state, Status=store.status(record))
        item = {"Id": record["id"], "Name": record.get("name") or "", "Created": record["created"],
                "Image": record.get("image"), "Args": record.get("args"), "State": state,
                "Config": record, "Spec": spec,
                "LogPath": record.get("log_path") or store.path(record["id"], "ctr.log"),
                "BundlePath": store.path(record["id"], "bundle")}
        out.append(item)
    fmt = opts.get("format")
    if fmt and fmt != "json":
        for item in out:
            flat = dict(item)
            flat.update({"State." + k: v for k, v in item["State"].items()})
            ctx.stdout.write(build_go_template(fmt.replace("{{.State.", "{{.State."), flat) + "\n")
        return 0
    from capsa.engine.output import write_json_out
    write_json_out(ctx, out)
    return 0


def cmd_exec(ctx, argv):
    table = [("-d --detach", "detach", "bool"), ("-i --interactive", "interactive", "bool"),
             ("-t --tty", "tty", "bool"), ("-u --user", "user", "str"),
             ("-w --workdir", "workdir", "str"), ("-e --env", "env", "list"),
             ("--env-file", "env_file", "list"), ("--privileged", "privileged", "bool")]
    try:
        opts, pos = parse_options(argv, table, "exec")
        if len(pos) < 2:
            raise UsageError("exec needs a container and a command", field="exec",
                             hint="capsa exec [OPTIONS] CONTAINER COMMAND [ARG...]")
        store = ContainerStore(ctx.store_root)
        record = store.lookup(pos[0])
        if store.status(record) != "running":
            raise StateError("container " + pos[0] + " is not running", field="exec")
        proc = build_exec_process(ctx, store, record, opts, pos[1:])
        from capsa.engine.prepare import read_rootfs_lookup
        with open(store.path(record["id"], "bundle", "config.json"), "rb") as f:
            rootfs = jsonlite.loads(f.read())["root"]["path"]
        problem = read_rootfs_lookup(rootfs, proc["args"][0], proc["env"])
        if problem:
            err = CapsaError(problem[1], field="exec")
            err.exit_code = problem[0]
            raise err
        runtime = _runtime_for(ctx, record)
        exec_dir = store.path(record["id"], "exec")
        os.makedirs(exec_dir, exist_ok=True)
        tag = os.urandom(6).hex()
        proc_path = os.path.join(exec_dir, tag + ".json")
        pid_path = os.path.join(exec_dir, tag + ".pid")
        with open(proc_path, "w") as f:
            f.write(jsonlite.dumps(proc))
    except CapsaError as err:
        ctx.stderr.write("capsa: " + err.line() + "\n")
        return err.exit_code if err.exit_code in (126, 127) else 125
    try:
        for stream in (ctx.stdout, ctx.stderr):
            stream.flush()
        if opts["detach"]:
            null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            try:
                runtime.exec(record["id"], proc_path, pid_path, detach=True,
                             stdio=(null, null, null))
            finally:
                os.close(null)
            return 0
        if opts["tty"]:
            return apply_exec_tty(ctx, store, record, runtime, proc_path, pid_path,
                                  opts["interactive"])
        stdin = None
        close = None
        if not opts["interactive"]:
            stdin = close = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        try:
            code = runtime.exec(record["id"], proc_path, pid_path, detach=False,
                                stdio=(stdin, _fd_of(ctx.stdout, 1), _fd_of(ctx.stderr, 2)))
        finally:
            if close is not None:
                os.close(close)
        return code
    except CapsaError as err:
        from capsa.engine.monitor import build_exit_code_for_error
        ctx.stderr.write("capsa: " + err.line() + "\n")
        return build_exit_code_for_error(err.message)
    finally:
        for path in (proc_path, pid_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def apply_exec_tty(ctx, store, record, runtime, proc_path, pid_path, interactive):
    """exec -t: the runtime hands us the pty master over a console socket (as conmon gets it),
    so a terminal works even when capsa itself has none; we pump it and reap the process."""
    import socket
    import tempfile
    from capsa.engine.monitor import Monitor, PR_SET_CHILD_SUBREAPER
    from capsa.syscalls.kernel import Kernel
    Kernel().prctl(PR_SET_CHILD_SUBREAPER, 1)
    folder = tempfile.mkdtemp(prefix="capsa-tty-")
    path = os.path.join(folder, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        sock.bind(path)
        sock.listen(1)
        runtime.exec(record["id"], proc_path, pid_path, detach=True, console_socket=path,
                     stdio=(null, null, null))
        sock.settimeout(10)
        conn, _ = sock.accept()
        _, fds, _, _ = socket.recv_fds(conn, 1024, 4)
        conn.close()
    finally:
        sock.close()
        for item in (path, folder):
            try:
                (os.unlink if item == path else os.rmdir)(item)
            except OSError:
                pass
    if not fds:
        os.close(null)
        raise StateError("the runtime sent no terminal for exec -t", field="exec")
    with open(pid_path) as f:
        pid = int(f.read().strip())
    mon = Monitor(store, dict(record, log_format="raw"), runtime, foreground=True,
                  tee_fds=(_fd_of(ctx.stdout, 1), _fd_of(ctx.stderr, 2)),
                  stdin_fd=0 if interactive else None)
    mon.log_fd = null
    mon.pid = pid
    try:
        return mon.pump({fds[0]: "stdout"}, fds[0])
    finally:
        os.close(null)


def build_exec_process(ctx, store, record, opts, args):
    from capsa.engine import specbuild
    from capsa.engine.runflags import build_env
    with open(store.path(record["id"], "bundle", "config.json"), "rb") as f:
        spec = jsonlite.loads(f.read())
    proc = dict(spec["process"])
    proc["args"] = list(args)
    proc["terminal"] = bool(opts["tty"])
    env = [tuple(e.split("=", 1)) for e in proc.get("env", []) if "=" in e]
    extra = build_env(opts["env"], _read_env_files(opts["env_file"]), dict(os.environ))
    merged = dict(env)
    merged.update(extra)
    if opts["tty"]:
        merged.setdefault("TERM", "xterm")
    proc["env"] = [k + "=" + v for k, v in merged.items()]
    if opts.get("workdir"):
        if not opts["workdir"].startswith("/"):
            raise UsageError("working directory must be absolute", field="--workdir")
        proc["cwd"] = opts["workdir"]
    if opts.get("user"):
        from capsa.engine.prepare import read_rootfs_file
        rootfs = spec["root"]["path"]
        proc["user"] = specbuild.build_user(opts["user"], read_rootfs_file(rootfs, "etc/passwd"),
                                            read_rootfs_file(rootfs, "etc/group"))
    if opts["privileged"]:
        from capsa.engine.prepare import read_host_caps
        caps = read_host_caps()
        proc["capabilities"] = {k: list(caps) for k in ("bounding", "effective", "permitted")}
    proc.pop("consoleSize", None)
    return proc


def read_container_pids(record):
    """Host pids in the container's cgroup (v1 pids or memory controller, or cgroup2)."""
    rel = "capsa/" + record["id"]
    for base in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu",
                 "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        path = os.path.join(base, rel, "cgroup.procs")
        try:
            with open(path) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            continue
    return []


def _proc_row(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        st = os.stat("/proc/%d" % pid)
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) // ticks
    ppid = int(fields[1])
    if not cmd:
        cmd = "[" + stat[stat.find(b"(") + 1:stat.rfind(b")")].decode(errors="replace") + "]"
    return {"UID": st.st_uid, "PID": pid, "PPID": ppid,
            "TIME": "%02d:%02d:%02d" % (cpu // 3600, cpu // 60 % 60, cpu % 60), "CMD": cmd}


def cmd_top(ctx, argv):
    opts, pos = parse_options(argv, [("--format", "format", "str")], "top", interspersed=True)
    if not pos:
        raise UsageError("top needs a container", field="top")
    store = ContainerStore(ctx.store_root)
    record = store.lookup(pos[0])
    if store.status(record) != "running":
        raise StateError("container " + pos[0] + " is not running", field="top")
    rows = [r for r in (_proc_row(p) for p in sorted(read_container_pids(record))) if r]
    if opts.get("format") == "json":
        from capsa.engine.output import write_json_out
        write_json_out(ctx, rows)
        return 0
    from capsa.engine.output import write_table
    write_table(ctx, ["UID", "PID", "PPID", "TIME", "CMD"],
                [[r["UID"], r["PID"], r["PPID"], r["TIME"], r["CMD"]] for r in rows])
    return 0


def read_stats(record):
    rel = "capsa/" + record["id"]

    def num(path):
        try:
            with open(path) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    mem = num("/sys/fs/cgroup/memory/" + rel + "/memory.usage_in_bytes")
    limit = num("/sys/fs/cgroup/memory/" + rel + "/memory.limit_in_bytes")
    cpu = num("/sys/fs/cgroup/cpuacct/" + rel + "/cpuacct.usage")
    if cpu is None:
        cpu = num("/sys/fs/cgroup/cpu,cpuacct/" + rel + "/cpuacct.usage")
    pids = num("/sys/fs/cgroup/pids/" + rel + "/pids.current")
    return {"memory_usage": mem, "memory_limit": limit, "cpu_ns": cpu, "pids": pids}


def cmd_stats(ctx, argv):
    opts, refs = parse_options(argv, [("--no-stream", "no_stream", "bool"),
                                      ("--format", "format", "str"), ("-a --all", "all", "bool")],
                               "stats", interspersed=True)
    store = ContainerStore(ctx.store_root)
    records = [store.lookup(r) for r in refs] if refs else \
        [r for r in store.records() if store.status(r) == "running"]
    while True:
        t0 = time.monotonic()
        first = {r["id"]: read_stats(r) for r in records}
        time.sleep(0.5)
        rows = []
        span = time.monotonic() - t0
        for r in records:
            now = read_stats(r)
            cpu = None
            if now["cpu_ns"] is not None and first[r["id"]]["cpu_ns"] is not None:
                cpu = 100.0 * (now["cpu_ns"] - first[r["id"]]["cpu_ns"]) / (span * 1e9)
            rows.append({"ID": r["id"][:12], "Name": r.get("name") or "",
                         "CPUPerc": None if cpu is None else round(cpu, 2),
                         "MemUsage": now["memory_usage"], "MemLimit": now["memory_limit"],
                         "PIDs": now["pids"]})
        if opts.get("format") == "json":
            from capsa.engine.output import write_json_out
            write_json_out(ctx, rows)
        else:
            from capsa.engine.output import write_table
            write_table(ctx, ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "PIDS"],
                        [[x["ID"], x["Name"],
                          "--" if x["CPUPerc"] is None else "%.2f%%" % x["CPUPerc"],
                          _mib(x["MemUsage"]) + " / " + _mib(x["MemLimit"]),
                          "--" if x["PIDs"] is None else x["PIDs"]] for x in rows])
        ctx.stdout.flush()
        if opts["no_stream"]:
            return 0


def _mib(n):
    if n is None:
        return "--"
    if n >= 1 << 60:
        return "unlimited"
    return "%.1fMiB" % (n / 1048576.0)


def cmd_pause(ctx, argv):
    return _freeze(ctx, argv, "pause", "paused")


def cmd_unpause(ctx, argv):
    return _freeze(ctx, argv, "unpause", "running")


def _freeze(ctx, argv, command, status):
    _, refs = parse_options(argv, [], command, interspersed=True)

    def one(store, record, ref):
        runtime = _runtime_for(ctx, record)
        (runtime.pause if command == "pause" else runtime.resume)(record["id"])
        store.set_state(record["id"], status=status)
        ctx.stdout.write(ref + "\n")

    return _each(ctx, refs, command, one)


def build_cp_target(arg):
    """`CONTAINER:PATH` or a host path -> (container ref or None, path)."""
    if ":" in arg and not arg.startswith("/") and not arg.startswith("."):
        ref, _, path = arg.partition(":")
        return ref, path or "/"
    return None, arg


def cmd_cp(ctx, argv):
    from capsa.engine.rootfscopy import apply_copy_in, apply_copy_out
    opts, pos = parse_options(argv, [("-a --archive", "archive", "bool"),
                                     ("-L --follow-link", "follow", "bool")], "cp",
                              interspersed=True)
    if len(pos) != 2:
        raise UsageError("cp needs SRC and DEST, one of them CONTAINER:PATH", field="cp")
    (sref, spath), (dref, dpath) = build_cp_target(pos[0]), build_cp_target(pos[1])
    if (sref is None) == (dref is None):
        raise UsageError("exactly one of SRC and DEST must be CONTAINER:PATH", field="cp")
    store = ContainerStore(ctx.store_root)
    record = store.lookup(sref or dref)
    with open(store.path(record["id"], "bundle", "config.json"), "rb") as f:
        rootfs = jsonlite.loads(f.read())["root"]["path"]
    if sref:
        apply_copy_out(rootfs, spath, dpath)
    else:
        apply_copy_in(spath, rootfs, dpath)
    return 0
