"""Detached containers supervised by conmon (Debian's `conmon`), chosen by measurement: an idle
conmon costs ~0.6 MB PSS where a Python monitor costs ~5-7.5 MB (docs/engine.md, bench/engine.sh).

conmon runs the runtime's create, keeps the log (k8s-file) and the exit code, then runs
`capsa container-cleanup ID`, which deletes the runtime state and applies --rm / --restart.
Imports the engine's store/runtimes modules; subprocess-free (posix_spawn).
"""
import json
import os
import sys
import time

from capsa.errors import CapsaError, StateError
from capsa.engine.store import ContainerStore, format_time, read_pid_start


def read_conmon_binary():
    if os.environ.get("CAPSA_MONITOR") == "python":
        return None
    from capsa.engine.runtimes import find_binary
    return find_binary("conmon")


def use_conmon(record, runtime):
    """conmon drives an OCI runtime binary; declared containers keep minimal_containers' raw
    logs, pid files and time namespace under capsa's own monitor."""
    return getattr(runtime, "binary", None) is not None and not record.get("declared") and \
        not record.get("time_ns") and read_conmon_binary() is not None


def build_exit_command(store_root, runtime_arg, id):
    """How conmon calls back into capsa: this interpreter, this checkout, no daemon."""
    import capsa
    repo = os.path.dirname(os.path.dirname(os.path.abspath(capsa.__file__)))
    code = "import sys; sys.path.insert(0, %r); from capsa.engine.cli import main; " \
           "sys.exit(main())" % repo
    argv = [sys.executable, "-I", "-c", code, "--root", store_root]
    if runtime_arg:
        argv += ["--runtime", runtime_arg]
    return argv + ["container-cleanup", id]


def build_conmon_argv(conmon, store, record, runtime, runtime_arg):
    id = record["id"]
    argv = [conmon, "--api-version", "1", "-c", id, "-u", id, "-r", runtime.binary,
            "-b", store.path(id, "bundle"), "-p", store.path(id, "init.pid"),
            "-n", record.get("name") or id[:12], "--exit-dir", store.path(id, "exits"),
            "-l", "k8s-file:" + store.path(id, "ctr.log"), "--log-level", "error",
            "--runtime-arg", "--root", "--runtime-arg", runtime.root,
            "--conmon-pidfile", store.path(id, "conmon.pid"), "--full-attach",
            "--socket-dir-path", store.path(id, "attach")]
    if record.get("tty"):
        argv.append("-t")
    if record.get("interactive"):
        argv += ["-i", "--leave-stdin-open"]
    command = build_exit_command(store.root, runtime_arg, id)
    argv += ["--exit-command", command[0]]
    for arg in command[1:]:
        argv += ["--exit-command-arg", arg]
    return argv


def apply_conmon_start(store, record, runtime, runtime_arg=None):
    """Start `record` under a new conmon; returns None, or {"error", "code"} when it failed."""
    from capsa.engine.monitor import build_exit_code_for_error
    from capsa.engine.runtimes import spawn, wait_status
    id = record["id"]
    os.makedirs(store.path(id, "exits"), exist_ok=True)
    for name in ("exits/" + id, "init.pid", "conmon.pid"):
        try:
            os.unlink(store.path(id, name))
        except FileNotFoundError:
            pass
    conmon = read_conmon_binary()
    r, w = os.pipe()
    os.set_inheritable(w, True)
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    saved = os.environ.get("_OCI_SYNCPIPE")
    os.environ["_OCI_SYNCPIPE"] = str(w)
    try:
        pid = spawn(build_conmon_argv(conmon, store, record, runtime, runtime_arg),
                    (null, null, null))
    finally:
        if saved is None:
            del os.environ["_OCI_SYNCPIPE"]
        else:
            os.environ["_OCI_SYNCPIPE"] = saved
        os.close(w)
        os.close(null)
    # conmon forks itself into the background; its first process exits at once
    wait_status(pid)
    # one JSON line; conmon keeps its end open for later messages, so stop at the newline
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    try:
        msg = json.loads(data.decode().splitlines()[0]) if data else {}
    except ValueError:
        msg = {}
    cpid = msg.get("data", -1)
    if not isinstance(cpid, int) or cpid <= 0:
        error = build_runtime_message(msg.get("message") or
                                      "conmon did not report the container's pid")
        store.set_state(id, status="exited", exit_code=build_exit_code_for_error(error),
                        error=error, pid=None, finished_at=format_time(time.time()))
        try:
            runtime.delete(id, force=True)
        except CapsaError:
            pass
        return {"error": runtime.name + " create: " + error,
                "code": build_exit_code_for_error(error)}
    mon = _read_int(store.path(id, "conmon.pid"))
    store.set_state(id, status="running", pid=cpid, pid_start=read_pid_start(cpid),
                    exit_code=None, error=None, started_at=format_time(time.time()),
                    finished_at=None, monitor="conmon", monitor_pid=mon, cleaned=False,
                    monitor_start=read_pid_start(mon) if mon else None)
    try:
        runtime.start(id)
    except CapsaError as err:
        try:
            runtime.delete(id, force=True)
        except CapsaError:
            pass
        return {"error": err.line(), "code": build_exit_code_for_error(err.message)}
    return None


def build_runtime_message(text):
    """conmon passes the runtime's logrus line on: keep only its msg="..." part."""
    text = text.strip()
    start = text.find('msg="')
    if start < 0:
        return text
    out = []
    i = start + 5
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def _read_int(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def apply_cleanup(ctx, store, record, exit_code=None):
    """After conmon saw the container exit: runtime delete, then --restart or --rm. Serialised
    with a lock, so the exit command and a `capsa stop` that found conmon dead do it once."""
    import fcntl
    from capsa.engine.lifecycle import _runtime_for, apply_remove_files
    from capsa.engine.monitor import apply_restart_delay, build_restart_decision
    id = record["id"]
    try:
        lock = os.open(store.path(id, "cleanup.lock"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                       0o600)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = store.state(id)
        if state.get("status") in ("exited", "removed") and state.get("cleaned"):
            return
        if exit_code is None:
            exit_code = _read_int(store.path(id, "exits", id))
        if exit_code is None:
            exit_code = 137
        runtime = _runtime_for(ctx, record)
        try:
            runtime.delete(id, force=True)
        except CapsaError:
            pass
        count = state.get("restart_count", 0)
        stop = os.path.exists(store.path(id, "stop-requested"))
        if build_restart_decision(record.get("restart", {}), exit_code, count, stop):
            store.set_state(id, status="restarting", exit_code=exit_code, pid=None,
                            restart_count=count + 1, finished_at=format_time(time.time()))
            if apply_restart_delay(store, id, min(0.1 * (2 ** min(count, 8)), 10.0)):
                failure = apply_conmon_start(store, record, runtime, record.get("runtime_arg"))
                if failure is None:
                    return
        store.set_state(id, status="exited", exit_code=exit_code, pid=None, cleaned=True,
                        finished_at=format_time(time.time()))
    finally:
        os.close(lock)
    if record.get("rm"):
        apply_remove_files(store, record, volumes=True)


def cmd_container_cleanup(ctx, argv):
    """Internal: conmon's exit command."""
    if len(argv) != 1:
        raise StateError("container-cleanup takes one container id", field="container-cleanup")
    store = ContainerStore(ctx.store_root)
    try:
        record = store.load(argv[0])
    except StateError:
        return 0
    apply_cleanup(ctx, store, record)
    return 0
