"""The hardened default: Docker's default capability set, masked and read-only paths, and a
seccomp profile with the decisions of Docker's default profile, built from hardened.json.
Pure (reads only the package's own data file); used by the engine and `capsa-runtime spec`.
"""
import os

# Docker's default capabilities (moby oci/caps): 14, none of them CAP_SYS_ADMIN.
HARDENED_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
HARDENED_MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
    "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
)
HARDENED_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_DATA = os.path.join(os.path.dirname(__file__), "hardened.json")


def build_hardened_process_caps():
    """process.capabilities: the 14 in bounding, effective and permitted; no inheritable and no
    ambient (CVE-2022-24769: inheritable capabilities leaked into execve of file-cap binaries)."""
    caps = list(HARDENED_CAPABILITIES)
    return {"bounding": caps, "effective": list(caps), "permitted": list(caps)}


def read_hardened_data():
    import json
    with open(_DATA, "rb") as handle:
        return json.loads(handle.read())


def build_hardened_seccomp(capabilities=None, machine=None, data=None):
    """linux.seccomp for a process holding `capabilities` (default: the hardened 14) on
    `machine` (default: this host's uname -m). Syscalls gated on a capability are allowed only
    when it is held; without CAP_SYS_ADMIN, clone may not create namespaces and clone3 answers
    ENOSYS (its flags live in memory a filter cannot read, so libcs fall back to clone)."""
    if data is None:
        data = read_hardened_data()
    if capabilities is None:
        capabilities = HARDENED_CAPABILITIES
    if machine is None:
        machine = os.uname().machine
    held = set(capabilities)
    allow = list(data["allow"]) + list(data["allow_by_machine"].get(machine, ()))
    for cap, names in data["allow_with_capability"].items():
        if cap in held:
            allow.extend(names)
    syscalls = [{"names": sorted(set(allow)), "action": "SCMP_ACT_ALLOW"}]
    for rule in data["allow_if_arg"]:
        syscalls.append({"names": [rule["syscall"]], "action": "SCMP_ACT_ALLOW",
                         "args": [{"index": rule["arg"], "value": rule["value"], "op": rule["op"]}]})
    if "CAP_SYS_ADMIN" not in held:
        gate = data["without_cap_sys_admin"]
        index = gate["clone_flags_arg"].get(machine, gate["clone_flags_arg"]["default"])
        syscalls.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                         "args": [{"index": index, "value": gate["clone_namespace_flags"],
                                   "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]})
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
                         "errnoRet": gate["clone3_errno"]})
    return {
        "defaultAction": data["default_action"],
        "defaultErrnoRet": data["default_errno"],
        "architectures": list(data["arches_by_machine"].get(machine, ())),
        "syscalls": syscalls,
    }
