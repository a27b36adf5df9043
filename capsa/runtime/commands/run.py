"""`capsa-runtime run`: create + start, and unless --detach, wait for the container, forwarding
signals to it, then delete it (unless --keep) and exit with its status."""
import os

FORWARDED = (1, 2, 3, 10, 12, 15, 28)


def run(ctx, opts, args):
    from capsa.runtime.commands.create import prepare
    from capsa.runtime.launch import create_container, start_cgroup_warmup
    start_cgroup_warmup()
    from capsa.runtime import lifecycle
    from capsa.syscalls.kernel import Kernel
    container_id = args[0]
    detach = bool(opts.get("detach"))
    if not detach:
        opts = dict(opts, tty_ok=True)
    bundle, plan, spec = prepare(ctx, opts, container_id)
    subreaper = not detach and not opts.get("no_subreaper")
    record = create_container(ctx, Kernel(), container_id, bundle, plan, spec,
                              pid_file=opts.get("pid_file"), subreaper=subreaper)
    try:
        lifecycle.start(ctx.root, container_id, warn=lambda line: ctx.log("warning", line))
    except BaseException:
        lifecycle.delete(ctx.root, container_id, force=True)
        raise
    if detach:
        return 0
    forward_signals(record["pid"])
    master = record.get("console_master")
    if master is not None:
        from capsa.runtime.console import relay
        from capsa.runtime.state import read_start_time
        start_time = record["pid_start"]
        relay(master, lambda: read_start_time(record["pid"]) != start_time)
        os.close(master)
    status = wait_forwarding(record["pid"])
    if not opts.get("keep"):
        lifecycle.delete(ctx.root, container_id, force=True,
                         warn=lambda line: ctx.log("warning", line))
    return status


def forward_signals(pid):
    """Pass the usual signals on to `pid` (the container's process)."""
    import _signal

    def forward(signum, frame):
        try:
            os.kill(pid, signum)
        except OSError:
            pass
    for signum in FORWARDED:
        _signal.signal(signum, forward)


def wait_forwarding(pid):
    """Forward the usual signals to `pid` and reap children (we are their subreaper) until it is
    gone; its exit status (128+signal when killed) is returned."""
    forward_signals(pid)
    while True:
        try:
            reaped, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 255
        if reaped == pid:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.waitstatus_to_exitcode(status)
