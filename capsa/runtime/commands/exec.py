"""`capsa-runtime exec`: run a new process inside a running container (runc's flags)."""


def run(ctx, opts, args):
    from capsa.runtime.launch import start_cgroup_warmup
    start_cgroup_warmup()
    from capsa.runtime.execution import exec_process
    from capsa.syscalls.kernel import Kernel
    return exec_process(ctx, Kernel(), args[0], opts, args)
