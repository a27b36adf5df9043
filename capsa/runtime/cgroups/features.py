"""What capsa's cgroup layer supports, for `capsa-runtime features` (runtime-spec features.md).

Built from the same tables the plan uses, so what is advertised is what is accepted.
Imports only plan; pure.
"""
from capsa.runtime.cgroups.plan import RESOURCE_KEYS

# Per hierarchy, the linux.resources fields the plan turns into writes.
SUPPORTED = {
    "v1": {"memory": ["limit", "reservation", "swap", "kernel", "kernelTCP", "swappiness",
                      "disableOOMKiller", "useHierarchy"],
           "cpu": ["shares", "quota", "period", "burst", "realtimeRuntime", "realtimePeriod",
                   "cpus", "mems", "idle"],
           "pids": ["limit"],
           "blockIO": ["weight", "leafWeight", "weightDevice", "throttleReadBpsDevice",
                       "throttleWriteBpsDevice", "throttleReadIOPSDevice",
                       "throttleWriteIOPSDevice"],
           "hugepageLimits": ["pageSize", "limit"], "network": ["classID", "priorities"],
           "rdma": ["hcaHandles", "hcaObjects"], "devices": ["allow", "type", "major", "minor",
                                                             "access"]},
    "v2": {"memory": ["limit", "reservation", "swap"],
           "cpu": ["shares", "quota", "period", "burst", "cpus", "mems", "idle"],
           "pids": ["limit"],
           "blockIO": ["weight", "weightDevice", "throttleReadBpsDevice", "throttleWriteBpsDevice",
                       "throttleReadIOPSDevice", "throttleWriteIOPSDevice"],
           "hugepageLimits": ["pageSize", "limit"], "rdma": ["hcaHandles", "hcaObjects"],
           "unified": ["*"], "devices": ["allow", "type", "major", "minor", "access"]},
}


def build_cgroup_features():
    """The `linux.cgroup` object of the features document. systemd: transient units over
    PID 1's D-Bus (--systemd-cgroup); systemdUser is false: no user-manager bus for rootless."""
    return {"v1": True, "v2": True, "systemd": True, "systemdUser": False, "rdma": True}


def build_resource_keys():
    return list(RESOURCE_KEYS)
