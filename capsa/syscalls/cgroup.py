"""cgroup calls of the kernel seam beyond plain file writes: cgroup dirs, bpf(2) device programs,
and the transient systemd units that own a container's cgroups under --systemd-cgroup.

Mirrored by capsa.syscalls.fake; imports only ctypes, os, libc and errors (the D-Bus client,
capsa.syscalls.dbus, only inside the systemd_* methods).
"""
import ctypes
import os

from capsa.syscalls.libc import check, fail, fsencode, libc, syscall

# <linux/bpf.h>
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
# <sys/inotify.h>
IN_MODIFY = 0x2
IN_CLOEXEC = 0o2000000
IN_NONBLOCK = 0o4000


class _ProgLoad(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32)]


class _ProgAttach(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_bpf_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("replace_bpf_fd", ctypes.c_uint32)]


class _ProgQuery(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("query_flags", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("prog_ids", ctypes.c_uint64), ("prog_cnt", ctypes.c_uint32)]


class _GetFdById(ctypes.Structure):
    _fields_ = [("prog_id", ctypes.c_uint32), ("next_id", ctypes.c_uint32),
                ("open_flags", ctypes.c_uint32)]


def _bpf(cmd, attr, what):
    return check(syscall("bpf", cmd, ctypes.byref(attr), ctypes.sizeof(attr)), what)


class CgroupCalls:
    """cgroupfs directories and the eBPF device filter of cgroup v2."""

    def mkdir(self, path, mode=0o755):
        """mkdir of an absolute path (cgroupfs creates the controller files itself)."""
        try:
            os.mkdir(path, mode)
        except OSError as exc:
            fail("mkdir %s" % path, exc.errno)

    def rmdir(self, path):
        try:
            os.rmdir(path)
        except OSError as exc:
            fail("rmdir %s" % path, exc.errno)

    def bpf_load_device_program(self, insns, license="Apache-2.0"):
        """Load a BPF_PROG_TYPE_CGROUP_DEVICE program (bytes of struct bpf_insn); returns its fd."""
        code = ctypes.create_string_buffer(insns, len(insns))
        lic = ctypes.create_string_buffer(license.encode())
        attr = _ProgLoad(prog_type=BPF_PROG_TYPE_CGROUP_DEVICE, insn_cnt=len(insns) // 8,
                         insns=ctypes.addressof(code), license=ctypes.addressof(lic),
                         prog_name=b"capsa_devices")
        fd = syscall("bpf", BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
        if fd < 0:
            err = ctypes.get_errno()
            # Load again with the verifier's log only to explain the refusal: the log costs
            # time on every successful load.
            log = ctypes.create_string_buffer(65536)
            attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
            again = syscall("bpf", BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
            if again >= 0:
                os.close(again)
            fail("bpf(BPF_PROG_LOAD) device filter: " + log.value.decode(errors="replace")[-300:],
                 err)
        os.set_inheritable(fd, False)
        return fd

    def bpf_attach_device_program(self, cgroup_fd, prog_fd):
        attr = _ProgAttach(target_fd=cgroup_fd, attach_bpf_fd=prog_fd,
                           attach_type=BPF_CGROUP_DEVICE, attach_flags=BPF_F_ALLOW_MULTI)
        _bpf(BPF_PROG_ATTACH, attr, "bpf(BPF_PROG_ATTACH) device filter")

    def bpf_detach_device_program(self, cgroup_fd, prog_fd):
        attr = _ProgAttach(target_fd=cgroup_fd, attach_bpf_fd=prog_fd,
                           attach_type=BPF_CGROUP_DEVICE)
        _bpf(BPF_PROG_DETACH, attr, "bpf(BPF_PROG_DETACH) device filter")

    def bpf_query_device_programs(self, cgroup_fd):
        """Ids of the device programs attached to this cgroup itself."""
        ids = (ctypes.c_uint32 * 64)()
        attr = _ProgQuery(target_fd=cgroup_fd, attach_type=BPF_CGROUP_DEVICE,
                          prog_ids=ctypes.addressof(ids), prog_cnt=64)
        _bpf(BPF_PROG_QUERY, attr, "bpf(BPF_PROG_QUERY) device filters")
        return [ids[i] for i in range(attr.prog_cnt)]

    def bpf_prog_fd_by_id(self, prog_id):
        attr = _GetFdById(prog_id=prog_id)
        fd = _bpf(BPF_PROG_GET_FD_BY_ID, attr, "bpf(BPF_PROG_GET_FD_BY_ID %d)" % prog_id)
        os.set_inheritable(fd, False)
        return fd

    def eventfd(self):
        """A close-on-exec eventfd (for v1 cgroup.event_control notifications)."""
        return os.eventfd(0, os.EFD_CLOEXEC)

    def inotify_watch(self, path, mask):
        """A non-blocking inotify fd watching `path` for `mask` (cgroup v2 *.events files
        raise IN_MODIFY when a counter changes)."""
        fd = check(libc.inotify_init1(IN_CLOEXEC | IN_NONBLOCK), "inotify_init1")
        if libc.inotify_add_watch(fd, fsencode(path), mask) < 0:
            try:
                fail("inotify_add_watch %s" % path)
            finally:
                os.close(fd)
        return fd

    # systemd (PID 1) over D-Bus; properties are JSON lists [name, D-Bus signature, value]
    def systemd_start_unit(self, name, properties):
        """StartTransientUnit and wait for its job; a failed leftover of the same name is
        reset first (runc does the same), a live one is refused."""
        from capsa.syscalls.dbus import start_unit
        start_unit(name, properties)

    def systemd_stop_unit(self, name):
        """StopUnit and wait for its job; a unit that is already gone is fine."""
        from capsa.syscalls.dbus import stop_unit
        stop_unit(name)

    def systemd_set_unit_properties(self, name, properties):
        """SetUnitProperties, runtime only (gone at reboot like the unit), as runc does."""
        from capsa.syscalls.dbus import set_unit_properties
        set_unit_properties(name, properties)
