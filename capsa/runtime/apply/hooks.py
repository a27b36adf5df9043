"""Running OCI hooks: each gets the container state as JSON on stdin, is waited for with its
timeout, and is killed when the timeout passes.

Uses os.posix_spawn and a pidfd for the timeout (no subprocess, no threads). Must not import
launch or command modules.
"""
from capsa import jsonlite as json
import os
import select

from capsa.errors import ContainerError
from capsa.runtime.apply.process import build_env_dict


def apply_hooks(kind, hooks, state, warn=None):
    """Run hooks[kind] in order. A failure raises, except for poststart/poststop, which only warn
    (the spec lets the lifecycle go on)."""
    data = json.dumps(state).encode()
    for index, hook in enumerate(hooks.get(kind) or ()):
        field = "hooks.%s[%d]" % (kind, index)
        try:
            _run_one(hook, data, field)
        except ContainerError as err:
            if kind in ("poststart", "poststop"):
                if warn is not None:
                    warn(err.line())
                continue
            raise


def _run_one(hook, data, field):
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawn(hook["path"], hook["args"], build_env_dict(hook["env"]),
                             file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0)])
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        raise ContainerError("cannot run hook %s: %s" % (hook["path"], exc.strerror), field=field)
    os.close(read_end)
    try:
        os.write(write_end, data)
    except OSError:
        pass  # a hook that does not read its stdin is allowed
    os.close(write_end)
    status = _wait(pid, hook.get("timeout"))
    if status is None:
        raise ContainerError("hook %s did not finish within %d s and was killed" %
                             (hook["path"], hook["timeout"]), field=field)
    if status != 0:
        raise ContainerError("hook %s failed with exit status %d" % (hook["path"], status),
                             field=field)


def _wait(pid, timeout):
    if timeout:
        pidfd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)
        if not ready:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return None
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)

