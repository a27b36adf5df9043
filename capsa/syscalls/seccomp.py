"""libseccomp through ctypes: turns a seccomp plan (capsa.runtime.apply.security) into a classic
BPF program, and reads what libseccomp and the kernel support. `libseccomp.so.2` is loaded on
first use only, never at import. Runs on the host side, before fork (the container's init only
loads the finished program through SecurityCalls.seccomp_load). Imports only ctypes, os, errors.
"""
import ctypes
import os
import struct

from capsa.errors import ConfigError, KernelError

_LIBRARY = "libseccomp.so.2"
SCMP_FLTATR_CTL_NNP = 3
SCMP_FLTATR_CTL_OPTIMIZE = 8
NR_SCMP_ERROR = -1
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 8
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 32

_lib = None


class _ArgCmp(ctypes.Structure):
    # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


def load_library():
    """The libseccomp handle, loaded once; a clear error when the library is missing."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL(_LIBRARY, use_errno=True)
    except OSError:
        raise ConfigError("linux.seccomp needs %s, which is not installed" % _LIBRARY,
                          field="linux.seccomp", hint="install libseccomp2 (apt-get install "
                          "libseccomp2), or drop linux.seccomp")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
    lib.seccomp_arch_add.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_syscall_resolve_name_arch.argtypes = (ctypes.c_uint32, ctypes.c_char_p)
    lib.seccomp_rule_add_array.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp))
    lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
    lib.seccomp_export_pfc.argtypes = (ctypes.c_void_p, ctypes.c_int)
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    _lib = lib
    return lib


def read_libseccomp_version():
    """"2.5.4", or None when libseccomp is not installed."""
    try:
        lib = load_library()
    except ConfigError:
        return None
    version = lib.seccomp_version().contents
    return "%d.%d.%d" % (version.major, version.minor, version.micro)


def read_known_arches(names):
    """The subset of libseccomp arch names (tables.SECCOMP_ARCHES values) this libseccomp knows."""
    lib = load_library()
    return [name for name in names if lib.seccomp_arch_resolve_name(name.encode())]


def read_supported_flags(flags):
    """Which SECCOMP_FILTER_FLAG_* bits the kernel accepts: with a NULL program, a known flag
    fails with EFAULT and an unknown one with EINVAL (the probe libseccomp itself uses)."""
    from capsa.syscalls.libc import libc, NR
    supported = []
    for bit in flags:
        probe = bit
        if bit == SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV:
            probe |= SECCOMP_FILTER_FLAG_NEW_LISTENER  # EINVAL alone (kernel/seccomp.c)
        ctypes.set_errno(0)
        if libc.syscall(NR["seccomp"], SECCOMP_SET_MODE_FILTER, ctypes.c_uint(probe), None) < 0 \
                and ctypes.get_errno() == 14:
            supported.append(bit)
    return supported


def read_syscall_number(name):
    """The native number (or libseccomp's negative pseudo number) of a syscall name, or None."""
    number = load_library().seccomp_syscall_resolve_name(name.encode())
    return None if number == NR_SCMP_ERROR else number


def compile_filter(seccomp, export="bpf"):
    """-> (program bytes, names skipped as unknown). `seccomp` is the plan's seccomp dict;
    export "pfc" gives libseccomp's readable listing of the same filter instead of BPF."""
    lib = load_library()
    ctx = lib.seccomp_init(seccomp["default"])
    if not ctx:
        raise ConfigError("libseccomp refused the default action %#x" % seccomp["default"],
                          field="linux.seccomp.defaultAction")
    try:
        # the runtime sets no_new_privs itself, only when the spec asks for it
        lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0)
        # binary search over syscall numbers (libseccomp >= 2.5): fewer jumps per syscall
        lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)
        for name in seccomp["arches"]:
            token = lib.seccomp_arch_resolve_name(name.encode())
            if not token:
                raise ConfigError("libseccomp %s does not know the architecture %s" % (
                    read_libseccomp_version(), name), field="linux.seccomp.architectures",
                    hint="remove it, or install a newer libseccomp2")
            result = lib.seccomp_arch_add(ctx, token)
            if result < 0 and result != -17:  # EEXIST: the native arch is always in
                raise ConfigError("cannot add architecture %s: %s" % (name, os.strerror(-result)),
                                  field="linux.seccomp.architectures")
        skipped = []
        for rule in seccomp["rules"]:
            number = lib.seccomp_syscall_resolve_name(rule["name"].encode())
            if number == NR_SCMP_ERROR:
                # unknown to this libseccomp: skipped, as runc does, so one profile serves
                # old and new kernels
                if rule["name"] not in skipped:
                    skipped.append(rule["name"])
                continue
            args = rule["args"]
            array = (_ArgCmp * max(len(args), 1))(*[_ArgCmp(*arg) for arg in args])
            result = lib.seccomp_rule_add_array(ctx, rule["action"], number, len(args), array)
            if result < 0:
                raise ConfigError("libseccomp refused the rule for %s: %s" % (
                    rule["name"], os.strerror(-result)), field=rule["field"])
        fd = os.memfd_create("capsa-seccomp", os.MFD_CLOEXEC)
        try:
            exporter = lib.seccomp_export_pfc if export == "pfc" else lib.seccomp_export_bpf
            result = exporter(ctx, fd)
            if result < 0:
                raise KernelError("seccomp export: " + os.strerror(-result), errno=-result)
            size = os.lseek(fd, 0, os.SEEK_END)
            program = os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    if export == "bpf" and seccomp.get("enosys_stub"):
        program = build_enosys_stub(read_last_syscalls(seccomp)) + program
    return program, skipped


# struct sock_filter opcodes (linux/filter.h) and what the stub needs to know
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGT_K = 0x25
_JSET_K = 0x45
_RET_K = 0x06
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_X32_BIT = 0x40000000
_ERRNO_ENOSYS = 0x00050000 | 38
AUDIT_ARCH_X86_64 = 0xC000003E
SCMP_ARCH_X32 = 0x4000003E
_S390 = (0x16, 0x80000016)  # AUDIT_ARCH_S390, AUDIT_ARCH_S390X


def read_last_syscalls(seccomp):
    """-> {audit arch: {"native"|"x32": highest syscall number the profile names}} for each arch
    of the filter and the native one (Docker lists no arch on some machines)."""
    lib = load_library()
    tokens = [lib.seccomp_arch_resolve_name(name.encode()) for name in seccomp["arches"]]
    tokens.append(lib.seccomp_arch_native())
    names = set(rule["name"] for rule in seccomp["rules"])
    names.update(seccomp.get("other_names", ()))
    last = {}
    for token in tokens:
        audit, mode = (AUDIT_ARCH_X86_64, "x32") if token == SCMP_ARCH_X32 else (token, "native")
        if mode in last.get(audit, {}):
            continue
        numbers = [lib.seccomp_syscall_resolve_name_arch(token, name.encode()) for name in names]
        numbers = [number for number in numbers if number >= 0]
        if numbers:
            last.setdefault(audit, {})[mode] = max(numbers)
    return last


def build_enosys_stub(last):
    """Classic BPF to put before libseccomp's program: a syscall numbered above everything the
    profile names is newer than the profile, so it gets ENOSYS (libcs then fall back to an older
    call) instead of the default action's EPERM or kill. runc does the same (patchbpf)."""
    if not last:
        return b""
    # built as (code, jt, jf, k) with jump targets as labels, resolved below
    insns = []
    for index, audit in enumerate(sorted(last)):
        modes = last[audit]
        following = "arch%d" % (index + 1) if index + 1 < len(last) else "filter"
        insns.append(("arch%d" % index, _LD_W_ABS, 0, 0, _OFFSET_ARCH))
        insns.append((None, _JEQ_K, None, following, audit))
        insns.append((None, _LD_W_ABS, 0, 0, _OFFSET_NR))
        if audit in _S390:
            # unknown large numbers reach the filter as 0, the old multiplexer setup(2)
            insns.append((None, _JEQ_K, "enosys", None, 0))
        if audit == AUDIT_ARCH_X86_64:
            x32 = "x32-%d" % index
            insns.append((None, _JSET_K, x32 if "x32" in modes else "filter",
                          None if "native" in modes else "filter", _X32_BIT))
            if "native" in modes:
                insns.append((None, _JGT_K, "enosys", "filter", modes["native"]))
            if "x32" in modes:
                insns.append((x32, _JGT_K, "enosys", "filter", modes["x32"]))
        else:
            insns.append((None, _JGT_K, "enosys", "filter", modes["native"]))
    insns.append(("enosys", _RET_K, 0, 0, _ERRNO_ENOSYS))
    where = {}
    for position, insn in enumerate(insns):
        if insn[0]:
            where[insn[0]] = position
    where["filter"] = len(insns)
    out = []
    for position, (_, code, jt, jf, k) in enumerate(insns):
        jumps = []
        for target in (jt, jf):
            if isinstance(target, str):
                target = where[target] - position - 1
            jumps.append(target or 0)
        out.append(struct.pack("=HBBI", code, jumps[0], jumps[1], k))
    return b"".join(out)
