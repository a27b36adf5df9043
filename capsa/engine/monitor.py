"""The per-container monitor: creates and starts the container through the runtime, is its
parent (child subreaper), writes its output to ctr.log, records its exit, and applies --rm and
--restart — in the foreground `capsa run` process or in a detached monitor, with no daemon.
Imports capsa.engine.{store,runtimes}, capsa.syscalls.kernel (prctl) and the standard library.
"""
import os
import time

from capsa import jsonlite
from capsa.errors import CapsaError
from capsa.engine.store import format_time, read_pid_start

PR_SET_CHILD_SUBREAPER = 36


def build_log_line(stream, data, partial, now):
    """One k8s-file log record (conmon's format): TIMESTAMP STREAM F|P DATA."""
    return (format_time(now) + " " + stream + " " + ("P" if partial else "F") + " ").encode() \
        + data + b"\n"


def build_log_records(stream, buffer, data, now, final=False):
    """Split `buffer + data` into complete-line records; return (records bytes, rest)."""
    buffer += data
    out = []
    while True:
        nl = buffer.find(b"\n")
        if nl < 0:
            break
        out.append(build_log_line(stream, buffer[:nl], False, now))
        buffer = buffer[nl + 1:]
    if buffer and (final or len(buffer) >= 16384):
        out.append(build_log_line(stream, buffer, True, now))
        buffer = b""
    return b"".join(out), buffer


def read_log_records(data):
    """Parse ctr.log bytes into [(timestamp, stream, partial, payload)]."""
    out = []
    for line in data.split(b"\n"):
        if not line:
            continue
        parts = line.split(b" ", 3)
        if len(parts) < 3:
            continue
        payload = parts[3] if len(parts) == 4 else b""
        out.append((parts[0].decode(), parts[1].decode(), parts[2] == b"P", payload))
    return out


def read_log_tail(path):
    """The last stderr line of a container log (k8s-file or raw), for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            data = f.read()
    except OSError:
        return None
    lines = [r[3] for r in read_log_records(data) if r[1] == "stderr"] or \
        [line for line in data.splitlines() if line.strip()]
    return lines[-1].decode(errors="replace").strip()[-300:] if lines else None


def apply_restart_delay(store, id, delay):
    """Docker's restart backoff, cut short by a stop (or removal) of the container: True when
    the container should still be restarted."""
    deadline = time.monotonic() + delay
    while True:
        if os.path.exists(store.path(id, "stop-requested")) or not os.path.isdir(store.path(id)):
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, 0.05))


def build_restart_decision(policy, exit_code, restart_count, stop_requested):
    """Docker's restart policies: no | always | unless-stopped | on-failure[:max]."""
    if stop_requested:
        return False
    name = policy.get("name", "no")
    if name in ("always", "unless-stopped"):
        return True
    if name == "on-failure" and exit_code != 0:
        limit = policy.get("max_retries", 0)
        return limit == 0 or restart_count < limit
    return False


def build_exit_code_for_error(message):
    """Docker's statuses for a container that could not run its command."""
    text = (message or "").lower()
    if "executable file not found" in text or "no such file or directory" in text \
            or "not found in $path" in text:
        return 127
    if "permission denied" in text or "not executable" in text:
        return 126
    return 125


class Monitor:
    """One container's supervision; the methods run in the process that is its parent."""

    def __init__(self, store, record, runtime, foreground, tee_fds=None, stdin_fd=None,
                 trace=None, kernel=None):
        self.store = store
        self.record = record
        self.id = record["id"]
        self.runtime = runtime
        self.foreground = foreground
        self.tee = tee_fds
        self.stdin_fd = stdin_fd
        self.trace = trace
        self.log_fd = None
        self.pid = None
        self.kernel = kernel

    def step(self, name, fn, *args):
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            if self.trace is not None:
                self.trace(name, time.monotonic() - t0)

    def run(self, notify=None):
        """Run until the container is finally done; returns its last exit code.
        `notify(error_or_None)` is called once, after the first start (or its failure)."""
        if self.kernel is None:
            from capsa.syscalls.kernel import Kernel
            self.kernel = Kernel()
        # the runtime's create exits and leaves the container's init to us (prctl(2))
        self.kernel.prctl(PR_SET_CHILD_SUBREAPER, 1)
        count = self.store.state(self.id).get("restart_count", 0)
        code = 125
        first = True
        while True:
            try:
                self.log_fd = os.open(self.record.get("log_path") or
                                      self.store.path(self.id, "ctr.log"),
                                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                code = self.run_once(notify if first else None)
            except CapsaError as err:
                if " exited with " in err.message:
                    # the runtime wrote no JSON log line; its stderr went to the container log
                    tail = read_log_tail(self.record.get("log_path") or
                                         self.store.path(self.id, "ctr.log"))
                    if tail:
                        err.message += ": " + tail
                code = build_exit_code_for_error(err.message)
                self.store.set_state(self.id, status="exited", exit_code=code, error=err.line(),
                                     finished_at=format_time(time.time()), pid=None)
                if first and notify:
                    notify(err)
                    notify = None
                self.cleanup_runtime()
                if first:
                    self.finish()
                    raise
            finally:
                if self.log_fd is not None:
                    os.close(self.log_fd)
                    self.log_fd = None
            first = False
            stop = os.path.exists(self.store.path(self.id, "stop-requested"))
            if not build_restart_decision(self.record.get("restart", {}), code, count, stop):
                break
            count += 1
            delay = min(0.1 * (2 ** min(count - 1, 8)), 10.0)
            self.store.set_state(self.id, status="restarting", restart_count=count)
            if not apply_restart_delay(self.store, self.id, delay):
                self.store.set_state(self.id, status="exited")
                break
        self.finish()
        return code

    def finish(self):
        if self.record.get("rm"):
            from capsa.engine.lifecycle import apply_remove_files
            self.step("remove (--rm)", apply_remove_files, self.store, self.record, True)

    def cleanup_runtime(self):
        try:
            self.runtime.delete(self.id, force=True)
        except CapsaError:
            pass

    def run_once(self, notify):
        rec = self.record
        bundle = self.store.path(self.id, "bundle")
        pid_file = self.store.path(self.id, "init.pid")
        try:
            os.unlink(pid_file)
        except FileNotFoundError:
            pass
        close_later = []
        sock = None
        console_path = None
        if rec.get("tty"):
            import socket
            import tempfile
            # sun_path holds 108 bytes: a short private folder, not the (deep) store
            console_dir = tempfile.mkdtemp(prefix="capsa-tty-")
            console_path = os.path.join(console_dir, "s")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(console_path)
            sock.listen(1)
            stdio = None
            readers = {}
        else:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            close_later += [out_w, err_w]
            readers = {out_r: "stdout", err_r: "stderr"}
            stdin = self.stdin_fd
            if stdin is None:
                if rec.get("interactive"):
                    # keep stdin open and silent: `-di` containers wait for input like Docker's
                    keep_r, keep_w = os.pipe()
                    close_later.append(keep_r)
                    self._keep = keep_w
                    stdin = keep_r
                else:
                    stdin = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                    close_later.append(stdin)
            stdio = (stdin, out_w, err_w)
        master = None
        try:
            if rec.get("time_ns"):
                from capsa.engine.declared import apply_time_namespace
                self.step("time namespace", apply_time_namespace, self.kernel)
            try:
                self.step("runtime create", self.runtime.create, self.id, bundle, pid_file,
                          console_path, stdio)
            finally:
                for fd in close_later:
                    os.close(fd)
            if sock is not None:
                import socket
                sock.settimeout(10)
                conn, _ = sock.accept()
                _, fds, _, _ = socket.recv_fds(conn, 1024, 4)
                conn.close()
                if not fds:
                    raise CapsaError("the runtime sent no terminal over the console socket",
                                     field="--tty")
                master = fds[0]
                readers = {master: "stdout"}
            with open(pid_file) as f:
                self.pid = int(f.read().strip())
            self.store.set_state(self.id, status="running", pid=self.pid,
                                 pid_start=read_pid_start(self.pid), exit_code=None, error=None,
                                 started_at=format_time(time.time()), finished_at=None,
                                 monitor_pid=os.getpid(), monitor_start=read_pid_start(os.getpid()))
            if self.record.get("pid_path"):
                with open(self.record["pid_path"], "w") as f:
                    f.write(str(self.pid))
            self.step("runtime start", self.runtime.start, self.id)
        except BaseException:
            for fd, stream in readers.items():
                # what the runtime said on the container's stdio before failing
                os.set_blocking(fd, False)
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if data and self.log_fd is not None:
                    recs, _ = build_log_records(stream, b"", data, time.time(), True)
                    os.write(self.log_fd, recs)
                os.close(fd)
            if sock is not None:
                sock.close()
            raise
        finally:
            if console_path:
                try:
                    os.unlink(console_path)
                    os.rmdir(os.path.dirname(console_path))
                except OSError:
                    pass
        if sock is not None:
            sock.close()
        if notify:
            notify(None)
        code = self.pump(readers, master)
        if self.record.get("pid_path"):
            try:
                os.unlink(self.record["pid_path"])
            except FileNotFoundError:
                pass
        self.store.set_state(self.id, status="exited", exit_code=code,
                             finished_at=format_time(time.time()), pid=None)
        self.step("runtime delete", self.cleanup_runtime)
        return code

    def pump(self, readers, master):
        """Copy the container's output into the log (and our terminal) until it exits."""
        import select
        pidfd = os.pidfd_open(self.pid)
        buffers = {fd: b"" for fd in readers}
        fwd = {}
        restore = None
        if self.foreground:
            restore = self.install_signal_forwarding(master)
            if master is not None and self.stdin_fd is not None:
                fwd[self.stdin_fd] = master
        code = None
        poller = select.poll()
        for fd in list(readers) + list(fwd):
            poller.register(fd, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        open_readers = set(readers)
        try:
            while open_readers or code is None:
                timeout = None if code is None else 2000
                events = poller.poll(timeout)
                if not events and code is not None:
                    break
                for fd, ev in events:
                    if fd == pidfd:
                        code = self.reap()
                        poller.unregister(pidfd)
                        if master is not None:
                            # with a terminal, closing the master ends the stream
                            pass
                        continue
                    if fd in fwd:
                        try:
                            data = os.read(fd, 65536)
                        except OSError:
                            data = b""
                        if data:
                            _write_all(fwd[fd], data)
                        else:
                            poller.unregister(fd)
                            del fwd[fd]
                        continue
                    try:
                        data = os.read(fd, 65536)
                    except OSError:
                        data = b""
                    stream = readers[fd]
                    now = time.time()
                    if data:
                        if self.tee:
                            _write_all(self.tee[0 if stream == "stdout" else 1], data)
                        if self.record.get("log_format") == "raw":
                            recs = data
                        else:
                            recs, buffers[fd] = build_log_records(stream, buffers[fd], data, now)
                        if recs:
                            os.write(self.log_fd, recs)
                    else:
                        recs, buffers[fd] = build_log_records(stream, buffers[fd], b"", now, True)
                        if recs:
                            os.write(self.log_fd, recs)
                        poller.unregister(fd)
                        open_readers.discard(fd)
                        os.close(fd)
        finally:
            for fd in open_readers:
                os.close(fd)
            os.close(pidfd)
            if restore:
                restore()
        if code is None:
            code = self.reap()
        return code

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                return 255
            except InterruptedError:
                continue
            break
        # other orphans of the runtime may have landed on us as subreaper
        while True:
            try:
                other, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if other == 0:
                break
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.WEXITSTATUS(status)

    def install_signal_forwarding(self, master):
        import signal
        pid = self.pid
        saved = {}

        def forward(signum, frame):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                    signal.SIGUSR1, signal.SIGUSR2):
            if master is not None and sig in (signal.SIGINT, signal.SIGQUIT):
                continue
            saved[sig] = signal.signal(sig, forward)
        term = None
        if master is not None and self.stdin_fd is not None and os.isatty(self.stdin_fd):
            import termios
            import tty
            term = termios.tcgetattr(self.stdin_fd)
            tty.setraw(self.stdin_fd)
            _copy_winsize(self.stdin_fd, master)

            def winch(signum, frame):
                _copy_winsize(self.stdin_fd, master)

            saved[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, winch)

        def restore():
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            if term is not None:
                import termios
                termios.tcsetattr(self.stdin_fd, termios.TCSADRAIN, term)

        return restore


def _copy_winsize(src, dst):
    import fcntl
    import termios
    try:
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def _write_all(fd, data):
    while data:
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            continue
        except OSError:
            return
        data = data[n:]


def apply_detached_monitor(store, record, runtime, timeout=60.0):
    """Fork a monitor that outlives this command (setsid, stdio on /dev/null); wait until the
    container started or failed; return None or the failure."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            os.setsid()
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)
            if os.fork() != 0:
                os._exit(0)
            sent = []

            def notify(err):
                if not sent:
                    sent.append(1)
                    msg = {"ok": err is None}
                    if err is not None:
                        msg["error"] = err.line()
                        msg["code"] = build_exit_code_for_error(err.message)
                    os.write(w, jsonlite.dumps(msg).encode())
                    os.close(w)

            try:
                Monitor(store, record, runtime, foreground=False).run(notify)
            except CapsaError as err:
                notify(err)
                code = 1
            except BaseException as err:  # the monitor must never leave the caller waiting
                notify(CapsaError("monitor failed: " + type(err).__name__ + ": " + str(err)))
                code = 1
        finally:
            os._exit(code)
    os.close(w)
    os.waitpid(pid, 0)
    import select
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([r], [], [], left)[0]:
            os.close(r)
            return {"error": "the container did not start within %d seconds (see capsa logs)"
                    % timeout, "code": 125}
        data = os.read(r, 4096)
        if not data:
            break
        chunks.append(data)
    os.close(r)
    try:
        msg = jsonlite.loads(b"".join(chunks).decode() or "{}")
    except ValueError:
        msg = {}
    if msg.get("ok"):
        return None
    return msg or {"error": "the container monitor exited before the container started",
                   "code": 125}
