"""Security calls of the kernel seam: capabilities, keep-caps (the securebit the uid switch
needs), no_new_privs, loading a seccomp program. LSM labels are plain procfs writes
(FsCalls.write_file through a verified dirfd).

Mirrored by capsa.syscalls.fake; imports only ctypes, libc and errors (libseccomp is loaded
lazily by capsa.syscalls.seccomp on the host side, never here: the init only loads finished BPF).
"""
import ctypes

from capsa.syscalls.libc import check, libc, syscall

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_SET_MODE_FILTER = 1


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _prctl(what, option, arg2=0, arg3=0):
    return check(libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0),
                            ctypes.c_ulong(0)), what)


class SecurityCalls:
    """Calls that change the calling process's privileges. Capability sets are bit masks."""

    def capget(self):
        """-> (effective, permitted, inheritable) of this thread, as 64-bit masks."""
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        check(syscall("capget", ctypes.byref(header), data), "capget")
        return tuple(getattr(data[0], name) | getattr(data[1], name) << 32
                     for name in ("effective", "permitted", "inheritable"))

    def capset(self, effective, permitted, inheritable):
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        for index in (0, 1):
            shift = 32 * index
            data[index].effective = effective >> shift & 0xFFFFFFFF
            data[index].permitted = permitted >> shift & 0xFFFFFFFF
            data[index].inheritable = inheritable >> shift & 0xFFFFFFFF
        check(syscall("capset", ctypes.byref(header), data),
              "capset(effective %#x, permitted %#x, inheritable %#x)" % (
                  effective, permitted, inheritable))

    def cap_bound_drop(self, cap):
        _prctl("prctl(PR_CAPBSET_DROP, %d)" % cap, PR_CAPBSET_DROP, cap)

    def cap_ambient_raise(self, cap):
        _prctl("prctl(PR_CAP_AMBIENT_RAISE, %d)" % cap, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)

    def cap_ambient_clear(self):
        _prctl("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)

    def set_keepcaps(self, keep):
        _prctl("prctl(PR_SET_KEEPCAPS, %d)" % keep, PR_SET_KEEPCAPS, 1 if keep else 0)

    def set_no_new_privs(self):
        _prctl("prctl(PR_SET_NO_NEW_PRIVS)", PR_SET_NO_NEW_PRIVS, 1)

    def seccomp_load(self, program, flags):
        """Install a classic BPF program (struct sock_filter array, 8 bytes each); returns the
        notify fd when flags has SECCOMP_FILTER_FLAG_NEW_LISTENER, else 0."""
        buf = ctypes.create_string_buffer(program, len(program))
        fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
        return check(syscall("seccomp", SECCOMP_SET_MODE_FILTER, ctypes.c_uint(flags),
                             ctypes.byref(fprog)),
                     "seccomp(SECCOMP_SET_MODE_FILTER, flags %#x, %d instructions)" % (
                         flags, len(program) // 8),
                     hint="without noNewPrivileges, loading a filter needs CAP_SYS_ADMIN")
