"""cgroup calls of the kernel seam beyond plain file writes: bpf(2) device programs, cgroup fds.

Mirrored by capsa.syscalls.fake; imports only ctypes, os, libc and errors.
"""


class CgroupCalls:
    """Calls that attach programs to cgroups."""
