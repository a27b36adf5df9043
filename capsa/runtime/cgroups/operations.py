"""Container-level cgroup operations behind the pause, resume, update, events and ps commands:
load the container's state, check its status, act on its cgroup plan, save the new plan.

Imports state and errors at module level; the manager, stats and json only when used.
"""
import os

from capsa.errors import StateError, UsageError
from capsa.runtime import state as states

_LIVE = ("created", "running", "paused")


def read_live_container(root, container_id, allowed=_LIVE):
    """(record, status, plan) of a container whose status is in `allowed`, with a cgroup."""
    record = states.load(root, container_id)
    status = states.derive_status(record)
    if status not in allowed:
        wanted = " or ".join(allowed)
        raise StateError("container %s is %s, not %s" % (container_id, status, wanted))
    plan = record.get("cgroup")
    if not plan or not plan.get("paths"):
        raise StateError("container %s has no cgroup" % container_id)
    return record, status, plan


def apply_pause(root, container_id, frozen, kernel=None):
    """pause (frozen=True) a running or created container, or resume (False) a paused one.

    As runc, a created container may be paused too; its status stays "created" (the exec
    fifo decides that), so resume looks at the freezer itself.
    """
    from capsa.runtime.cgroups.manager import apply_freeze, read_frozen
    record, status, plan = read_live_container(root, container_id,
                                               ("running", "created") if frozen else
                                               ("paused", "created"))
    if not frozen and status == "created" and read_frozen(plan) != "frozen":
        raise StateError("container %s is created, not paused" % container_id)
    if kernel is None:
        from capsa.syscalls.kernel import Kernel
        kernel = Kernel()
    lock_fd = states.lock(record["dir"])
    try:
        apply_freeze(kernel, plan, frozen)
    finally:
        os.close(lock_fd)


def apply_container_update(root, container_id, resources, kernel=None):
    """Apply new limits to a live container and keep them in its state; returns the new plan."""
    from capsa.runtime.cgroups.manager import apply_update
    record, _, plan = read_live_container(root, container_id)
    if kernel is None:
        from capsa.syscalls.kernel import Kernel
        kernel = Kernel()
    lock_fd = states.lock(record["dir"])
    try:
        new_plan = apply_update(kernel, plan, resources)
        directory = record.pop("dir")
        record["cgroup"] = new_plan
        if isinstance(record.get("plan"), dict) and "cgroup" in record["plan"]:
            record["plan"]["cgroup"] = new_plan
        linux = (record.get("spec") or {}).get("linux")
        if isinstance(linux, dict):
            linux["resources"] = new_plan["resources"]
        states.save(directory, record)
    finally:
        os.close(lock_fd)
    return new_plan


def run_events(root, container_id, write, interval=5.0, stats_once=False, clock=None, wait=None,
               kernel=None):
    """`events`: one stats event (--stats), or a stats event every `interval` seconds plus an
    "oom" event whenever the kernel's OOM killer strikes, until the container stops.

    Sleeps in select(2) on an OOM notification fd and a pidfd of the init (it turns readable
    at exit), so an OOM or the end is seen at once; without them it polls 10 times a second.
    `wait(fds, timeout) -> ready fds` and `clock` are for tests."""
    import time
    from capsa.runtime.cgroups.control import build_event
    from capsa.runtime.cgroups.manager import read_stats
    from capsa.runtime.cgroups.stats import apply_oom_watch, read_oom_count
    clock = clock or time.monotonic
    wait = wait or _wait_readable
    record, _, plan = read_live_container(root, container_id)
    if stats_once:
        write(build_event("stats", container_id, read_stats(plan)))
        return
    if interval <= 0:
        raise UsageError("--interval must be positive")
    if kernel is None:
        from capsa.syscalls.kernel import Kernel
        kernel = Kernel()
    watch = apply_oom_watch(kernel, plan)
    pidfd = _open_pidfd(record)
    ooms = read_oom_count(plan)
    due = clock() + interval
    # An eventfd signal comes as the OOM killer starts; the oom_kill count that says it killed
    # follows a moment later (and kernels before 4.13 have none): after a signal, look again
    # every 50 ms, and report the signal itself if no count moves within a second.
    pending = None
    try:
        while True:
            fds = [fd for fd in (watch and watch[1], pidfd) if fd is not None]
            timeout = max(0.0, due - clock())
            if watch is None or pidfd is None:
                timeout = min(timeout, 0.1)
            if pending is not None:
                timeout = min(timeout, 0.05)
            ready = wait(fds, timeout)
            if watch and watch[1] in ready and _drain(watch[1]) and watch[0] == "eventfd":
                pending = pending or clock() + 1.0
            count = read_oom_count(plan)
            if count > ooms or (pending is not None and clock() >= pending):
                write(build_event("oom", container_id))
                ooms = max(count, ooms)
                pending = None
            if (pidfd is not None and pidfd in ready) or \
                    states.derive_status(record) == "stopped":
                if pending is not None and read_oom_count(plan) <= ooms:
                    write(build_event("oom", container_id))
                return
            if clock() >= due:
                write(build_event("stats", container_id, read_stats(plan)))
                due += interval
    finally:
        for fd in (watch and watch[1], pidfd):
            if fd is not None:
                os.close(fd)


def _wait_readable(fds, timeout):
    import select
    if not fds:
        import time
        time.sleep(timeout)
        return []
    return select.select(fds, [], [], timeout)[0]


def _drain(fd):
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return False


def _open_pidfd(record):
    """A pidfd of the init, or None (then the stream polls for the end)."""
    try:
        pidfd = os.pidfd_open(record["pid"])
    except (OSError, KeyError, TypeError):
        return None
    if states.read_start_time(record["pid"]) != record.get("pid_start"):
        os.close(pidfd)  # the pid is another process's now
        return None
    return pidfd


def read_ps(root, container_id, fmt="table", ps_args=()):
    """`ps`: the container's pids as JSON, or `ps` output (default -ef) cut to its rows."""
    from capsa.runtime.cgroups.manager import read_pids
    if fmt not in ("table", "json"):
        raise UsageError("invalid --format %r: use table or json" % fmt)
    _, _, plan = read_live_container(root, container_id)
    pids = read_pids(plan)
    if fmt == "json":
        from capsa import jsonlite as json
        return json.dumps(pids) + "\n"
    import subprocess  # only `ps` needs a child program; never on the create path
    from capsa.runtime.cgroups.control import build_ps_table
    try:
        done = subprocess.run(["ps"] + (list(ps_args) or ["-ef"]), capture_output=True)
    except OSError as exc:
        raise UsageError("cannot run ps: %s" % exc.strerror, hint="install procps")
    if done.returncode != 0:
        raise UsageError("ps %s failed: %s" % (" ".join(ps_args),
                                               done.stderr.decode(errors="replace").strip()))
    return build_ps_table(done.stdout.decode(errors="replace"), pids)
