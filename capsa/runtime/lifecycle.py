"""Container lifecycle operations after create: start, kill, delete, wait — shared by the
commands and by capsa.runtime.api (the engine's in-process runtime).

Keeps the hot path light: imports only os, errors and state at module level; cgroup and hook
code is imported when a container actually has cgroups or hooks to deal with.
"""
import os
import time

from capsa.errors import ContainerError, StateError, UsageError
from capsa.runtime import state as states

SIGNALS = {
    "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7, "FPE": 8,
    "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15,
    "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22,
    "URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29,
    "POLL": 29, "PWR": 30, "SYS": 31,
}
SIGRTMIN = 34
SIGRTMAX = 64


def parse_signal(text):
    """'KILL', 'SIGKILL', '9', 'SIGRTMIN+3', 'RTMAX-1' -> number (as runc and kill(1) accept)."""
    name = text.strip().upper()
    if name.isdigit():
        number = int(name)
        if 0 < number <= SIGRTMAX:
            return number
        raise UsageError("invalid signal number %s" % text)
    if name.startswith("SIG"):
        name = name[3:]
    if name in SIGNALS:
        return SIGNALS[name]
    for base, value, sign in (("RTMIN", SIGRTMIN, 1), ("RTMAX", SIGRTMAX, -1)):
        if name.startswith(base):
            rest = name[len(base):]
            offset = 0
            if rest:
                if rest[0] not in "+-" or not rest[1:].isdigit():
                    break
                offset = int(rest[1:]) * (1 if rest[0] == "+" else -1)
            number = value + offset
            if SIGRTMIN <= number <= SIGRTMAX:
                return number
    raise UsageError("unknown signal %r" % text, hint="use a name like TERM or a number like 15")


def start(root, container_id, warn=None):
    """Release a created container's init from its exec fifo, then run poststart hooks."""
    record = states.load(root, container_id)
    status = states.derive_status(record)
    if status != "created":
        raise StateError("cannot start container %s: it is %s, not created" % (container_id, status),
                         hint="only a freshly created container can be started")
    fifo = os.path.join(record["dir"], states.FIFO_NAME)
    try:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise StateError("container %s was started already" % container_id)
    try:
        _read_start_byte(fd, record)
    finally:
        os.close(fd)
    try:
        os.unlink(fifo)
    except FileNotFoundError:
        pass
    hooks = record.get("hooks") or {}
    if hooks.get("poststart"):
        from capsa.runtime.apply.hooks import apply_hooks
        apply_hooks("poststart", hooks, states.build_oci_state(record, "running"), warn)
    return record


def _read_start_byte(fd, record):
    import select
    while True:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            data = os.read(fd, 1)
            if data:
                return
        if states.read_start_time(record["pid"]) != record.get("pid_start"):
            raise ContainerError("container %s exited before it could start" % record["id"])
        if ready:
            # the init holds no write end yet (EOF); wait until it opens the fifo
            time.sleep(0.001)


def kill(root, container_id, signal, all_processes=False):
    record = states.load(root, container_id)
    status = states.derive_status(record)
    if status == "stopped" and not all_processes:
        raise StateError("container %s is not running" % container_id)
    # without a cgroup (rootless) --all reaches the init only: with a pid namespace of its
    # own, the kernel takes every other process with it when the init dies of SIGKILL
    if all_processes and record.get("cgroup"):
        from capsa.runtime.cgroups.manager import apply_kill_all
        from capsa.syscalls.kernel import Kernel
        apply_kill_all(Kernel(), record["cgroup"], signal)
        return
    if status == "stopped":
        raise StateError("container %s is not running" % container_id)
    send_signal(record, signal)


def send_signal(record, signal):
    """Signal the init through a pidfd taken after the start-time check: a reused pid can
    never receive it."""
    pid = record["pid"]
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise StateError("container %s is not running" % record["id"])
    try:
        if states.read_start_time(pid) != record.get("pid_start"):
            raise StateError("container %s is not running" % record["id"])
        import _signal  # the builtin half of `signal`, without its enum import
        try:
            _signal.pidfd_send_signal(pidfd, signal)
        except ProcessLookupError:
            raise StateError("container %s is not running" % record["id"])
        except OSError as exc:
            raise ContainerError("cannot signal container %s: %s" % (record["id"], exc.strerror))
    finally:
        os.close(pidfd)


def delete(root, container_id, force=False, warn=None):
    """Remove a stopped (or, with force, any) container: processes, cgroups, state, poststop."""
    try:
        record = states.load(root, container_id)
    except StateError:
        if force:
            return
        raise
    status = states.derive_status(record)
    if status in ("running", "paused", "creating") and not force:
        raise StateError("cannot delete container %s: it is %s" % (container_id, status),
                         hint="stop it first, or use delete --force")
    lock_fd = states.lock(record["dir"])
    try:
        kernel = None
        if record.get("cgroup"):
            from capsa.runtime.cgroups import manager
            from capsa.syscalls.kernel import Kernel
            kernel = Kernel()
            if status == "paused":
                manager.apply_freeze(kernel, record["cgroup"], False)
        if status != "stopped":
            _kill_and_wait(record, kernel)
        elif kernel is not None:
            from capsa.runtime.cgroups import manager
            if manager.read_pids(record["cgroup"]):
                _kill_and_wait(record, kernel)
        if kernel is not None:
            from capsa.runtime.cgroups.manager import apply_cgroup_destroy
            apply_cgroup_destroy(kernel, record["cgroup"])
        hooks = record.get("hooks") or {}
        if hooks.get("poststop") and not record.get("incomplete"):
            from capsa.runtime.apply.hooks import apply_hooks
            apply_hooks("poststop", hooks, states.build_oci_state(record, "stopped"), warn)
        from capsa.runtime.launch import remove_tree
        remove_tree(record["dir"])
    finally:
        os.close(lock_fd)


def _kill_and_wait(record, kernel):
    if kernel is not None and record.get("cgroup"):
        from capsa.runtime.cgroups.manager import apply_kill_all, read_pids
        apply_kill_all(kernel, record["cgroup"], 9)
    elif record.get("pid"):
        try:
            send_signal(record, 9)
        except StateError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = record.get("pid") and states.read_start_time(record["pid"]) == record.get("pid_start")
        if not alive and (kernel is None or not read_pids(record["cgroup"])):
            return
        time.sleep(0.005)
    raise ContainerError("container %s did not die within 10 s of SIGKILL" % record["id"])
