"""Security calls of the kernel seam: capabilities, securebits, LSM attributes, seccomp loading.

Mirrored by capsa.syscalls.fake; imports only ctypes, os, libc and errors (libseccomp is loaded
lazily by capsa.syscalls.seccomp, never at import).
"""


class SecurityCalls:
    """Calls that change the calling process's privileges."""
