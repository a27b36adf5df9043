"""The engine's only way to the OCI runtime: one small interface, two implementations.

OciCliRuntime runs any runtime's runc-compatible command line (capsa-runtime, runc);
InProcessRuntime calls capsa.runtime.api in this process. Imports os and capsa.jsonlite;
the rest lazily.
"""
import os

from capsa import jsonlite

from capsa.errors import ContainerError, StateError, UsageError


class OciCliRuntime:
    """runc's command line: `BINARY --root ROOT --log FILE --log-format json VERB ...`."""

    __slots__ = ("binary", "root", "name", "timens_pid")

    def __init__(self, binary, root):
        self.binary = binary
        self.root = root
        self.name = os.path.basename(binary)
        # a container born in a time namespace is only recognised (pid start time) from inside it
        self.timens_pid = None

    def _run(self, args, stdio=None, what=None, check=True):
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        log = os.path.join(self.root, "engine-" + str(os.getpid()) + ".log")
        argv = [self.binary, "--root", self.root, "--log", log, "--log-format", "json"] + args
        err_r = None
        if stdio is None:
            # not the container's stdio: keep the runtime's stderr for the error message
            err_r, err_w = os.pipe()
            stdio = (_devnull(), _devnull(), err_w)
            code = spawn_wait(argv, stdio, close_after=(err_w,), timens_pid=self.timens_pid)
            said = _read_all(err_r).decode(errors="replace").strip().splitlines()
            os.close(err_r)
        else:
            code = spawn_wait(argv, stdio, timens_pid=self.timens_pid)
            said = []
        try:
            if check and code != 0:
                message = read_runtime_error(log) or (said[-1].strip() if said else None) or \
                    (self.name + " " + args[0] + " exited with " + str(code))
                raise ContainerError(message, field=what or (self.name + " " + args[0]))
        finally:
            try:
                os.unlink(log)
            except OSError:
                pass
        return code

    def create(self, id, bundle, pid_file, console_socket=None, stdio=None):
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        self._run(args + [id], stdio)

    def start(self, id):
        self._run(["start", id])

    def state(self, id):
        r, w = os.pipe()
        try:
            code = spawn_wait([self.binary, "--root", self.root, "state", id],
                              (None, w, _devnull()), close_after=(w,))
            data = _read_all(r)
        finally:
            os.close(r)
        if code != 0:
            raise StateError("container " + id + " does not exist in " + self.name,
                             field="state")
        return jsonlite.loads(data.decode() or "{}")

    def kill(self, id, signal, all=False):
        args = ["kill"] + (["--all"] if all else []) + [id, str(signal)]
        self._run(args)

    def delete(self, id, force=False):
        args = ["delete"] + (["--force"] if force else []) + [id]
        self._run(args, check=not force)

    def exec(self, id, process_json_path, pid_file, detach=True, console_socket=None, stdio=None):
        args = ["exec", "--process", process_json_path, "--pid-file", pid_file]
        if detach:
            args.append("--detach")
        if console_socket:
            args += ["--console-socket", console_socket]
        code = self._run(args + [id], stdio, check=detach)
        return code

    def pause(self, id):
        self._run(["pause", id])

    def resume(self, id):
        self._run(["resume", id])

    def update(self, id, resources_dict):
        path = os.path.join(self.root, "update-" + str(os.getpid()) + ".json")
        with open(path, "w") as f:
            f.write(jsonlite.dumps(resources_dict))
        try:
            self._run(["update", "--resources", path, id])
        finally:
            os.unlink(path)


class InProcessRuntime:
    """capsa's own runtime called as a library: capsa.runtime.api.VERB(root, ...)."""

    __slots__ = ("root", "name")

    def __init__(self, root):
        self.root = root
        self.name = "capsa-inprocess"

    def _api(self, verb=None):
        try:
            from capsa.runtime import api
        except ImportError:
            raise UsageError("capsa.runtime.api is not available in this build",
                             field="--runtime",
                             hint="use --runtime runc or capsa-runtime") from None
        if verb is not None and not hasattr(api, verb):
            raise UsageError("the in-process runtime has no " + verb + " yet", field="--runtime",
                             hint="use --runtime runc or capsa-runtime for this container")
        return api

    def warm_up(self):
        """Called as a foreground run begins, before the container is prepared. The first write
        to a cgroup.procs in a while waits out an RCU grace period (10-15 ms here); the
        runtime's warm-up child pays it in parallel with the engine's image and spec work, so
        the init's own join is quick (measured: `run --rm busybox true` 64 -> 58 ms median).
        Started any later (at create), the join waits anyway. The runtime's create reaps it."""
        try:
            from capsa.runtime.launch import start_cgroup_warmup
        except ImportError:
            return
        start_cgroup_warmup()

    def create(self, id, bundle, pid_file, console_socket=None, stdio=None):
        api = self._api("create")
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        saved = _swap_stdio(stdio)
        try:
            api.create(self.root, id, bundle, pid_file, console_socket)
        finally:
            _restore_stdio(saved)

    def start(self, id):
        self._api("start").start(self.root, id)

    def state(self, id):
        return self._api("state").state(self.root, id)

    def kill(self, id, signal, all=False):
        self._api("kill").kill(self.root, id, signal, all)

    def delete(self, id, force=False):
        self._api("delete").delete(self.root, id, force)

    def exec(self, id, process_json_path, pid_file, detach=True, console_socket=None, stdio=None):
        api = self._api("exec")
        saved = _swap_stdio(stdio)
        try:
            return api.exec(self.root, id, process_json_path, pid_file, detach, console_socket)
        finally:
            _restore_stdio(saved)

    def pause(self, id):
        self._api("pause").pause(self.root, id)

    def resume(self, id):
        self._api("resume").resume(self.root, id)

    def update(self, id, resources_dict):
        self._api("update").update(self.root, id, resources_dict)


def build_runtime(name, store_root):
    """--runtime NAME|PATH into a runtime object; its state lives under STORE/runtime/NAME."""
    # capsa's own runtime in-process is the default: no extra interpreter start per operation
    name = name or os.environ.get("CAPSA_RUNTIME") or "inprocess"
    if name in ("inprocess", "capsa-inprocess"):
        return InProcessRuntime(os.path.join(store_root, "runtime", "capsa"))
    if "/" in name:
        binary = name
    else:
        binary = find_binary("capsa-runtime" if name == "capsa" else name)
        if binary is None:
            raise UsageError("runtime " + repr(name) + " not found in PATH", field="--runtime",
                             hint="use runc, capsa-runtime, inprocess or an absolute path")
    if not os.access(binary, os.X_OK):
        raise UsageError("runtime " + binary + " is not an executable file", field="--runtime")
    return OciCliRuntime(binary, os.path.join(store_root, "runtime", os.path.basename(binary)))


def find_binary(name, path=None):
    for folder in (path or os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin").split(":") \
            + ["/usr/sbin", "/usr/local/bin", "/usr/bin"]:
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def read_runtime_error(log_path):
    """The last error message of a runc-style JSON log (one object a line)."""
    try:
        with open(log_path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    message = None
    for line in lines:
        try:
            item = jsonlite.loads(line)
        except ValueError:
            if line.strip():
                message = line.strip()
            continue
        if isinstance(item, dict) and item.get("level") in ("error", "fatal"):
            message = item.get("msg") or message
    return message


def spawn_wait(argv, stdio=None, close_after=(), timens_pid=None):
    pid = spawn(argv, stdio) if timens_pid is None else spawn_in_timens(argv, stdio, timens_pid)
    for fd in close_after:
        os.close(fd)
    return wait_status(pid)


def spawn(argv, stdio=None):
    """posix_spawn with stdin/stdout/stderr set from `stdio` (fd or None = inherit)."""
    actions = []
    for target, fd in enumerate(stdio or (None, None, None)):
        if fd is not None and fd != target:
            actions.append((os.POSIX_SPAWN_DUP2, fd, target))
    return os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)


def spawn_in_timens(argv, stdio, timens_pid):
    """fork, join the time namespace of `timens_pid`, exec: runc compares the init's start time
    in /proc/PID/stat, which a time namespace shifts."""
    try:
        ns = os.open("/proc/%d/ns/time" % timens_pid, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return spawn(argv, stdio)
    from capsa.syscalls.kernel import Kernel
    from capsa.syscalls.proc import CLONE_NEWTIME
    kernel = Kernel()
    pid = os.fork()
    if pid == 0:
        try:
            kernel.setns(ns, CLONE_NEWTIME)
            for target, fd in enumerate(stdio or (None, None, None)):
                if fd is not None and fd != target:
                    os.dup2(fd, target)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(ns)
    return pid


def wait_status(pid):
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    return os.waitstatus_to_exitcode(status) if not os.WIFSIGNALED(status) \
        else 128 + os.WTERMSIG(status)


_NULL = []


def _devnull():
    if not _NULL:
        _NULL.append(os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC))
    return _NULL[0]


def _read_all(fd):
    chunks = []
    while True:
        data = os.read(fd, 65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _swap_stdio(stdio):
    if not stdio:
        return None
    saved = [os.dup(i) for i in range(3)]
    for target, fd in enumerate(stdio):
        if fd is not None:
            os.dup2(fd, target)
    return saved


def _restore_stdio(saved):
    if saved:
        for target, fd in enumerate(saved):
            os.dup2(fd, target)
            os.close(fd)
