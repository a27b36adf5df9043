"""The runtime as a library: the operations capsa's engine calls in-process, with the same names
and meanings as the command line (`capsa-runtime create|start|state|kill|delete|exec|...`).

Every function takes the state root first. Errors are CapsaError, as on the command line.
Imports nothing heavy at module level.
"""


class _Context:
    __slots__ = ("root", "systemd_cgroup", "debug", "warnings", "rootless")

    def __init__(self, root, systemd_cgroup=False, rootless="auto"):
        self.root = root
        self.systemd_cgroup = systemd_cgroup
        self.debug = False
        self.warnings = []
        # as the command line's default: an unprivileged caller, or one in a user namespace
        self.rootless = rootless

    def log(self, level, message):
        if level != "debug":
            self.warnings.append(message)


def create(root, container_id, bundle, pid_file=None, console_socket=None, preserve_fds=0,
           no_pivot=False, systemd_cgroup=False):
    """Create the container; its init waits for start(). Returns the init's host pid."""
    from capsa.runtime.commands.create import prepare
    from capsa.runtime.launch import create_container
    from capsa.syscalls.kernel import Kernel
    ctx = _Context(root, systemd_cgroup)
    opts = {"bundle": bundle, "console_socket": console_socket, "preserve_fds": preserve_fds,
            "no_pivot": no_pivot}
    bundle, plan, spec = prepare(ctx, opts, container_id)
    record = create_container(ctx, Kernel(), container_id, bundle, plan, spec, pid_file=pid_file)
    return record["pid"]


def start(root, container_id):
    from capsa.runtime.lifecycle import start as start_container
    start_container(root, container_id)


def state(root, container_id):
    from capsa.runtime import state as states
    return states.build_oci_state(states.load(root, container_id))


def kill(root, container_id, signal, all=False):
    from capsa.runtime.lifecycle import kill as kill_container, parse_signal
    if isinstance(signal, str):
        signal = parse_signal(signal)
    kill_container(root, container_id, signal, all_processes=all)


def delete(root, container_id, force=False):
    from capsa.runtime.lifecycle import delete as delete_container
    delete_container(root, container_id, force=force)


def exec(root, container_id, process_json_path, pid_file=None, detach=True, console_socket=None,
         preserve_fds=0):
    """Run the process described by an OCI process JSON file in the container; returns its pid
    file's pid's exit status when not detached, else 0."""
    from capsa.runtime.execution import exec_process
    from capsa.runtime.launch import start_cgroup_warmup
    from capsa.syscalls.kernel import Kernel
    start_cgroup_warmup()
    opts = {"process": process_json_path, "pid_file": pid_file, "detach": detach,
            "console_socket": console_socket, "preserve_fds": preserve_fds}
    return exec_process(_Context(root), Kernel(), container_id, opts, [container_id])


def pause(root, container_id):
    from capsa.runtime.cgroups.operations import apply_pause
    apply_pause(root, container_id, True)


def resume(root, container_id):
    from capsa.runtime.cgroups.operations import apply_pause
    apply_pause(root, container_id, False)


def update(root, container_id, resources):
    """Apply an OCI linux.resources dict to a live container."""
    from capsa.runtime.cgroups.operations import apply_container_update
    return apply_container_update(root, container_id, resources)
