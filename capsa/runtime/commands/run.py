"""`capsa-runtime run`: create + start, and unless --detach, wait for the container, forwarding
signals to it, then delete it (unless --keep) and exit with its status."""
import os


def run(ctx, opts, args):
    import _signal
    from capsa.runtime.commands.create import prepare
    from capsa.runtime.launch import create_container
    from capsa.runtime import lifecycle
    from capsa.syscalls.kernel import Kernel
    container_id = args[0]
    detach = bool(opts.get("detach"))
    bundle, plan = prepare(ctx, opts, container_id)
    subreaper = not detach and not opts.get("no_subreaper")
    record = create_container(ctx, Kernel(), container_id, bundle, plan,
                              pid_file=opts.get("pid_file"), subreaper=subreaper)
    pid = record["pid"]
    forwarded = (1, 2, 3, 10, 12, 15, 28)

    def forward(signum, frame):
        try:
            os.kill(pid, signum)
        except OSError:
            pass
    if not detach:
        for signum in forwarded:
            _signal.signal(signum, forward)
    try:
        lifecycle.start(ctx.root, container_id, warn=lambda line: ctx.log("warning", line))
    except BaseException:
        lifecycle.delete(ctx.root, container_id, force=True)
        raise
    if detach:
        return 0
    status = _wait(pid)
    if not opts.get("keep"):
        lifecycle.delete(ctx.root, container_id, force=True,
                         warn=lambda line: ctx.log("warning", line))
    return status


def _wait(pid):
    """Reap children (we are their subreaper) until the init is gone; its status is ours."""
    while True:
        try:
            reaped, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 255
        if reaped == pid:
            return os.waitstatus_to_exitcode(status) if not os.WIFSIGNALED(status) else \
                128 + os.WTERMSIG(status)
