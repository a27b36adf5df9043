"""The ctypes handle on libc and the raw syscall numbers capsa needs.

Owns: loading libc once (`CDLL(None)`, never find_library: 1.4 ms vs 0.01 ms), syscall numbers
per architecture, and turning a -1 return into KernelError. Imports only ctypes, os and errors.
"""
import ctypes
import os

from capsa.errors import KernelError

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)

# Numbers of syscalls glibc 2.36 has no wrapper for (or a wrapper too new to rely on).
_NUMBERS = {
    "x86_64": {"pivot_root": 155, "setns": 308, "unshare": 272, "open_tree": 428, "move_mount": 429,
               "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "pidfd_open": 434,
               "clone3": 435, "close_range": 436, "openat2": 437, "pidfd_getfd": 438,
               "mount_setattr": 442, "pidfd_send_signal": 424, "seccomp": 317, "bpf": 321,
               "capget": 125, "capset": 126, "ioprio_set": 251, "sched_setattr": 314,
               "personality": 135, "prlimit64": 302, "setgroups": 116, "setresuid": 117,
               "setresgid": 119, "execveat": 322, "memfd_create": 319, "keyctl": 250,
               "sethostname": 170, "setdomainname": 171},
    "aarch64": {"pivot_root": 41, "setns": 268, "unshare": 97, "open_tree": 428, "move_mount": 429,
                "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "pidfd_open": 434,
                "clone3": 435, "close_range": 436, "openat2": 437, "pidfd_getfd": 438,
                "mount_setattr": 442, "pidfd_send_signal": 424, "seccomp": 277, "bpf": 280,
                "capget": 90, "capset": 91, "ioprio_set": 30, "sched_setattr": 274,
                "personality": 92, "prlimit64": 261, "setgroups": 159, "setresuid": 147,
                "setresgid": 149, "execveat": 281, "memfd_create": 279, "keyctl": 219,
                "sethostname": 161, "setdomainname": 162},
}
NR = _NUMBERS.get(os.uname().machine, _NUMBERS["x86_64"])


def fsencode(path):
    if path is None:
        return None
    if isinstance(path, bytes):
        return path
    return os.fsencode(path)


def fail(what, err=None, hint=None):
    """Raise KernelError for a failed call; `what` names the call and its arguments."""
    if err is None:
        err = ctypes.get_errno()
    raise KernelError(what + ": " + os.strerror(err), errno=err, hint=hint)


def check(result, what, hint=None):
    if result < 0:
        fail(what, hint=hint)
    return result


def syscall(name, *args):
    return libc.syscall(NR[name], *args)
