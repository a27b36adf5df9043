"""The container's terminal: a pty made inside the container's own devpts, its slave bound onto
/dev/console and made the controlling terminal and stdio, its master sent to the launcher (which
passes it to --console-socket).

Runs in the init after pivot_root; must not import anything not preloaded by capsa.runtime.launch.
"""
import fcntl
import os
import struct

from capsa.errors import ContainerError
from capsa.runtime import sync

TIOCSWINSZ = 0x5414


def apply_console(kernel, process, rootfs_plan, sock):
    """The init's terminal: also bound onto /dev/console."""
    _open_terminal(kernel, process, sock, bind=True)


def apply_exec_console(kernel, process, sock):
    """An exec'd process's terminal, from the container's devpts (after setns)."""
    _open_terminal(kernel, process, sock, bind=False)


def _open_terminal(kernel, process, sock, bind):
    try:
        master, slave = os.openpty()
    except OSError as exc:
        raise ContainerError("cannot open a pty in the container: %s" % exc.strerror,
                             field="process.terminal", hint="mount devpts at /dev/pts")
    slave_name = os.ttyname(slave)
    height, width = process["console_size"]
    if height or width:
        fcntl.ioctl(master, TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    if bind:
        from capsa.runtime.apply.rootfs import apply_console as bind_console
        bind_console(kernel, slave)
    sync.send(sock, "console", {"slave": slave_name}, [master])
    os.close(master)
    kernel.setsid()
    kernel.set_controlling_tty(slave)
    for target in (0, 1, 2):
        kernel.dup2(slave, target)
    if slave > 2:
        os.close(slave)
