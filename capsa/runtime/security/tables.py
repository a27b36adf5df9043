"""The security tables: capability names and numbers, seccomp actions, operators, architectures
and filter flags. The validator, the compiler and `features` all read these, so what is advertised
is what is accepted. Pure data; imports nothing.
"""

# Index = capability number (linux/capability.h). The running kernel may know fewer:
# /proc/sys/kernel/cap_last_cap says how many, and names past it are refused.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
CAP_NUMBERS = {name: number for number, name in enumerate(CAPABILITIES)}
CAP_SETPCAP = 8
CAP_SYS_ADMIN = 21
CAP_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")

# OCI action -> (SECCOMP_RET_* value, its word in /proc/sys/kernel/seccomp/actions_avail).
# KILL is KILL_THREAD (seccomp(2)); ERRNO and TRACE carry errnoRet in the low 16 bits.
SECCOMP_ACTIONS = {
    "SCMP_ACT_KILL": (0x00000000, "kill_thread"),
    "SCMP_ACT_KILL_THREAD": (0x00000000, "kill_thread"),
    "SCMP_ACT_KILL_PROCESS": (0x80000000, "kill_process"),
    "SCMP_ACT_TRAP": (0x00030000, "trap"),
    "SCMP_ACT_ERRNO": (0x00050000, "errno"),
    "SCMP_ACT_NOTIFY": (0x7FC00000, "user_notif"),
    "SCMP_ACT_TRACE": (0x7FF00000, "trace"),
    "SCMP_ACT_LOG": (0x7FFC0000, "log"),
    "SCMP_ACT_ALLOW": (0x7FFF0000, "allow"),
}
SECCOMP_ACTIONS_WITH_ERRNO = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")

# OCI operator -> enum scmp_compare (seccomp.h of libseccomp).
SECCOMP_OPERATORS = {
    "SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7,
}
SECCOMP_MAX_ARGS = 6

# OCI architecture -> the name seccomp_arch_resolve_name() knows (libseccomp's own spelling).
SECCOMP_ARCHES = {
    "SCMP_ARCH_X86": "x86", "SCMP_ARCH_X86_64": "x86_64", "SCMP_ARCH_X32": "x32",
    "SCMP_ARCH_ARM": "arm", "SCMP_ARCH_AARCH64": "aarch64", "SCMP_ARCH_MIPS": "mips",
    "SCMP_ARCH_MIPS64": "mips64", "SCMP_ARCH_MIPS64N32": "mips64n32", "SCMP_ARCH_MIPSEL": "mipsel",
    "SCMP_ARCH_MIPSEL64": "mipsel64", "SCMP_ARCH_MIPSEL64N32": "mipsel64n32",
    "SCMP_ARCH_PPC": "ppc", "SCMP_ARCH_PPC64": "ppc64", "SCMP_ARCH_PPC64LE": "ppc64le",
    "SCMP_ARCH_S390": "s390", "SCMP_ARCH_S390X": "s390x", "SCMP_ARCH_PARISC": "parisc",
    "SCMP_ARCH_PARISC64": "parisc64", "SCMP_ARCH_RISCV64": "riscv64",
    "SCMP_ARCH_LOONGARCH64": "loongarch64", "SCMP_ARCH_M68K": "m68k",
}

# OCI flag -> SECCOMP_FILTER_FLAG_* bit of seccomp(2), with the kernel that added it.
SECCOMP_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,               # 3.17
    "SECCOMP_FILTER_FLAG_LOG": 2,                 # 4.14
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,          # 4.17
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": 32,  # 5.19
}
SECCOMP_FLAG_NEW_LISTENER = 8    # 5.0: the filter returns a notify fd (SCMP_ACT_NOTIFY)
SECCOMP_FLAG_TSYNC_ESRCH = 16    # 5.7: TSYNC and NEW_LISTENER together need it

# Syscalls the runtime itself makes after an early (before `start`) filter load, before exec:
# notifying them would wait on a listener that has not been handed its fd yet.
SECCOMP_NO_NOTIFY = ("write", "sendmsg")

# LSM -> where the exec label is written, below /proc/thread-self/attr (Linux 5.8 gave
# AppArmor its own folder; older kernels only have the shared "exec").
LSM_EXEC_ATTRS = {"apparmor": ("apparmor/exec", "exec"), "selinux": ("exec",)}
