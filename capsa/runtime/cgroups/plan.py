"""The cgroup plan: where a container's cgroups live and every file write its limits need.

Pure translation of the spec's linux.cgroupsPath and linux.resources for v1, v2 and hybrid
hosts (with runc's v1→v2 conversions); the result is JSON data kept in state.json and handed
back to capsa.runtime.cgroups.manager. Imports only errors and devices; never touches the host.
"""
from capsa.errors import ConfigError
from capsa.runtime.cgroups.devices import (DEFAULT_ALLOWED, build_bpf_program, build_device_rules,
                                           build_v1_device_writes)

PLAN_VERSION = 1
_SYSTEMD_DEFAULT_SLICE = "system.slice"
_SYSTEMD_PREFIX = "capsa"
_PAGE_UNITS = ("KB", "MB", "GB", "TB", "PB")
# Period before quota and rt period before runtime: the kernel checks each against the other.
_V1_CPU_FILES = (("shares", "cpu.shares"), ("period", "cpu.cfs_period_us"),
                 ("quota", "cpu.cfs_quota_us"), ("burst", "cpu.cfs_burst_us"),
                 ("realtimePeriod", "cpu.rt_period_us"), ("realtimeRuntime", "cpu.rt_runtime_us"),
                 ("idle", "cpu.idle"))
RESOURCE_KEYS = ("devices", "memory", "cpu", "pids", "blockIO", "hugepageLimits", "network",
                  "rdma", "unified")


def build_clean_path(path):
    """Lexically resolve "." and ".." without climbing above the start (runc's CleanPath)."""
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return ("/" if path.startswith("/") else "") + "/".join(parts)


def build_systemd_names(cgroups_path, container_id):
    """"slice:prefix:name" → (slice, unit, path): the unit systemd makes and the path it gives
    that unit, "a-b.slice" nesting in "a.slice" as systemd nests them."""
    if not cgroups_path:
        cgroups_path = "%s:%s:%s" % (_SYSTEMD_DEFAULT_SLICE, _SYSTEMD_PREFIX, container_id)
    parts = cgroups_path.split(":")
    if len(parts) != 3:
        raise ConfigError("%r is not of the form \"slice:prefix:name\" that --systemd-cgroup "
                          "needs" % cgroups_path, field="linux.cgroupsPath",
                          hint="e.g. system.slice:capsa:" + container_id)
    slice_name, prefix, name = parts
    if not slice_name:
        slice_name = _SYSTEMD_DEFAULT_SLICE
    for value, what in ((slice_name, "slice"), (prefix, "prefix"), (name, "name")):
        if "/" in value or value in (".", ".."):
            raise ConfigError("systemd %s %r must not contain \"/\"" % (what, value),
                              field="linux.cgroupsPath")
    if not name:
        raise ConfigError("the name part of %r is empty" % cgroups_path,
                          field="linux.cgroupsPath", hint="e.g. system.slice:capsa:" + container_id)
    if not slice_name.endswith(".slice"):
        raise ConfigError("systemd slice %r must end in .slice" % slice_name,
                          field="linux.cgroupsPath")
    path = ""
    if slice_name != "-.slice":
        words = slice_name[:-len(".slice")].split("-")
        if "" in words:
            raise ConfigError("systemd slice %r has an empty part between dashes" % slice_name,
                              field="linux.cgroupsPath")
        for index in range(len(words)):
            path += "/" + "-".join(words[:index + 1]) + ".slice"
    if name.endswith(".slice"):
        return slice_name, name, path + "/" + name
    unit = (prefix + "-" if prefix else "") + name + ".scope"
    return slice_name, unit, path + "/" + unit


def build_systemd_path(cgroups_path, container_id):
    """"slice:prefix:name" → the path systemd gives that unit."""
    return build_systemd_names(cgroups_path, container_id)[2]


def build_cgroup_paths(linux, container_id, layout, systemd=False):
    """{controller or "unified": absolute dir} for every hierarchy the container joins."""
    cgroups_path = linux.get("cgroupsPath") or ""
    if not isinstance(cgroups_path, str):
        raise ConfigError("must be a string", field="linux.cgroupsPath")
    if systemd:
        if not layout.get("systemd_running"):
            raise ConfigError("--systemd-cgroup needs systemd running as init, and it is not "
                              "(no /run/systemd/system)", field="linux.cgroupsPath",
                              hint="drop --systemd-cgroup to use the cgroupfs driver")
        inner = build_systemd_path(cgroups_path, container_id)
    elif cgroups_path:
        inner = build_clean_path(cgroups_path)
    else:
        inner = container_id
    if inner in ("", "/"):
        raise ConfigError("%r names the root cgroup; a container needs its own"
                          % cgroups_path, field="linux.cgroupsPath")
    mounts = {}
    for controller, mountpoint in layout["v1"].items():
        # name=systemd is where legacy systemd tracks a unit's processes: joined under the
        # systemd driver, so that exec'd processes stay in the container's unit too
        if not controller.startswith("name=") or (systemd and controller == "name=systemd"):
            mounts[controller] = mountpoint
    if layout.get("v2"):
        mounts["unified"] = layout["v2"]
    own = layout.get("own") or {}
    paths = {}
    for controller, mountpoint in mounts.items():
        if inner.startswith("/"):
            base = mountpoint.rstrip("/")
        else:
            # A relative path lives below the runtime's own cgroup (runc's rule); on cgroup2
            # below its parent, since the runtime's own cgroup holds processes and so may not
            # enable controllers for children ("no internal processes").
            base = (own.get(controller) or mountpoint).rstrip("/")
            if controller == "unified" and base != mountpoint.rstrip("/"):
                base = base.rsplit("/", 1)[0]
        paths[controller] = base + "/" + inner.strip("/")
    return paths


def _where(layout, controller):
    """"v1", "v2" or None: which hierarchy carries `controller` on this host."""
    if controller in layout["v1"]:
        return "v1"
    if layout.get("v2") and controller in layout.get("v2_controllers", ()):
        return "v2"
    return None


def _int(area, key, field, low=None, high=None):
    value = area.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise ConfigError("%r is not an integer" % (value,), field=field + "." + key)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError("%d is out of range [%s, %s]" % (value, low, high),
                          field=field + "." + key)
    return value


def _dict(resources, key):
    value = resources.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("must be an object", field="linux.resources." + key)
    return value


def _list(area, key, field):
    value = area.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError("must be a list", field=field + "." + key)
    return value


class _Writes:
    """Collects [controller, file, value, field, fallback] before controllers become dirs."""

    __slots__ = ("layout", "entries")

    def __init__(self, layout):
        self.layout = layout
        self.entries = []

    def need(self, controller, field):
        where = _where(self.layout, controller)
        if where is None:
            raise ConfigError("this host has no %s cgroup controller mounted" % controller,
                              field=field, hint="mount it, or leave this limit out")
        return where

    def add(self, controller, name, value, field, fallback=None):
        self.entries.append([controller, name, str(value), field, fallback])


def v2_weight_from_shares(shares):
    """cpu.shares [2, 262144] → cpu.weight [1, 10000], the linear map runc and crun use."""
    if shares <= 0:
        return 0
    return 1 + ((max(shares, 2) - 2) * 9999) // 262142


def v2_io_weight_from_blkio(weight):
    """blkio.weight [10, 1000] → io.weight [1, 10000], runc's linear map."""
    if weight <= 0:
        return 0
    return 1 + ((weight - 10) * 9999) // 990


def v2_swap_from_v1(swap, limit):
    """OCI swap is memory+swap (v1 memsw); v2 memory.swap.max counts swap only. -1 = max."""
    limit = limit or 0
    swap = swap or 0
    if limit == -1 and swap == 0:
        return -1
    if swap in (-1, 0):
        return swap
    if limit == 0:
        raise ConfigError("a swap limit needs a memory limit on cgroup v2",
                          field="linux.resources.memory.swap", hint="set memory.limit too")
    if limit < 0:
        raise ConfigError("swap %d cannot be set with an unlimited memory limit" % swap,
                          field="linux.resources.memory.swap")
    if swap < limit:
        raise ConfigError("memory+swap %d is below the memory limit %d" % (swap, limit),
                          field="linux.resources.memory.swap", hint="swap counts memory plus swap")
    return swap - limit


def _max(value):
    return "max" if value is None or value < 0 else value


def _memory(writes, memory):
    field = "linux.resources.memory"
    limit = _int(memory, "limit", field, -1)
    reservation = _int(memory, "reservation", field, -1)
    swap = _int(memory, "swap", field, -1)
    kernel = _int(memory, "kernel", field, -1)
    kernel_tcp = _int(memory, "kernelTCP", field, -1)
    swappiness = memory.get("swappiness")
    if swappiness is not None and (type(swappiness) is not int or not -1 <= swappiness <= 100):
        raise ConfigError("%r is not in [0, 100]" % (swappiness,), field=field + ".swappiness")
    oom = memory.get("disableOOMKiller")
    if oom is not None and not isinstance(oom, bool):
        raise ConfigError("must be true or false", field=field + ".disableOOMKiller")
    if not (limit or reservation or swap or kernel or kernel_tcp or oom
            or (swappiness is not None and swappiness >= 0) or memory.get("useHierarchy")):
        return
    where = writes.need("memory", field)
    if where == "v1":
        if swap and swap > 0 and (not limit or limit < 0):
            # memsw.limit may never be below memory.limit, which is unlimited unless set.
            raise ConfigError("a swap limit needs a memory limit", field=field + ".swap",
                              hint="set memory.limit too (e.g. to the same value)")
        if limit and swap and limit > 0 and 0 < swap < limit:
            raise ConfigError("memory+swap %d is below the memory limit %d" % (swap, limit),
                              field=field + ".swap", hint="swap counts memory plus swap")
        if memory.get("useHierarchy"):
            writes.add("memory", "memory.use_hierarchy", 1, field + ".useHierarchy")
        if limit:
            writes.add("memory", "memory.limit_in_bytes", limit, field + ".limit")
        if swap:
            writes.add("memory", "memory.memsw.limit_in_bytes", swap, field + ".swap")
        if reservation:
            writes.add("memory", "memory.soft_limit_in_bytes", reservation, field + ".reservation")
        if kernel:
            writes.add("memory", "memory.kmem.limit_in_bytes", kernel, field + ".kernel")
        if kernel_tcp:
            writes.add("memory", "memory.kmem.tcp.limit_in_bytes", kernel_tcp, field + ".kernelTCP")
        if swappiness is not None and swappiness >= 0:
            writes.add("memory", "memory.swappiness", swappiness, field + ".swappiness")
        if oom:
            writes.add("memory", "memory.oom_control", 1, field + ".disableOOMKiller")
        return
    for key, value in (("kernel", kernel), ("kernelTCP", kernel_tcp)):
        if value:
            raise ConfigError("cgroup v2 has no separate kernel memory limit", field=field + "." + key,
                              hint="leave it out; memory.limit covers kernel memory on v2")
    if oom:
        raise ConfigError("cgroup v2 cannot turn the OOM killer off", field=field + ".disableOOMKiller")
    if swappiness is not None and swappiness >= 0:
        raise ConfigError("cgroup v2 has no per-cgroup swappiness", field=field + ".swappiness",
                          hint="leave it out")
    if limit:
        writes.add("memory", "memory.max", _max(limit), field + ".limit")
    v2_swap = v2_swap_from_v1(swap, limit)
    if v2_swap:
        writes.add("memory", "memory.swap.max", _max(v2_swap), field + ".swap")
    if reservation:
        writes.add("memory", "memory.low", _max(reservation), field + ".reservation")


def _cpu(writes, cpu):
    field = "linux.resources.cpu"
    shares = _int(cpu, "shares", field, 0, 262144)
    quota = _int(cpu, "quota", field, -1)
    period = _int(cpu, "period", field, 0, 1000000)
    burst = _int(cpu, "burst", field, 0)
    rt_runtime = _int(cpu, "realtimeRuntime", field, -1)
    rt_period = _int(cpu, "realtimePeriod", field, 0)
    idle = _int(cpu, "idle", field, 0, 1)
    for key in ("cpus", "mems"):
        value = cpu.get(key)
        if value is not None and (not isinstance(value, str) or
                                  not set(value) <= set("0123456789,- \n")):
            raise ConfigError("%r is not a CPU or node list like \"0-2,4\"" % (value,),
                              field=field + "." + key)
    if quota is not None and 0 < quota < 1000:
        raise ConfigError("quota %d is below the kernel's minimum of 1000 µs" % quota,
                          field=field + ".quota")
    if period is not None and 0 < period < 1000:
        raise ConfigError("period %d is below the kernel's minimum of 1000 µs" % period,
                          field=field + ".period")
    if shares or quota or period or burst is not None or rt_runtime or rt_period or idle is not None:
        where = writes.need("cpu", field)
        if where == "v1":
            values = {"shares": shares, "period": period, "quota": quota, "burst": burst,
                      "realtimePeriod": rt_period, "realtimeRuntime": rt_runtime, "idle": idle}
            for key, name in _V1_CPU_FILES:
                # burst and idle mean something at 0; the others are "unset" at 0 (runc).
                if values[key] or (values[key] is not None and key in ("burst", "idle")):
                    writes.add("cpu", name, values[key], field + "." + key)
        else:
            if rt_runtime or rt_period:
                raise ConfigError("cgroup v2 has no realtime CPU budget",
                                  field=field + (".realtimeRuntime" if rt_runtime else ".realtimePeriod"),
                                  hint="leave realtimeRuntime and realtimePeriod out")
            if shares:
                writes.add("cpu", "cpu.weight", v2_weight_from_shares(shares), field + ".shares")
            if quota or period:
                value = str(_max(quota if quota else -1))
                if period:
                    value += " %d" % period
                writes.add("cpu", "cpu.max", value, field + ".quota")
            if burst is not None:
                writes.add("cpu", "cpu.max.burst", burst, field + ".burst")
            if idle is not None:
                writes.add("cpu", "cpu.idle", idle, field + ".idle")
    for key in ("cpus", "mems"):
        if cpu.get(key):
            writes.need("cpuset", field + "." + key)
            writes.add("cpuset", "cpuset." + key, cpu[key].strip(), field + "." + key)


def _pids(writes, pids):
    field = "linux.resources.pids"
    limit = _int(pids, "limit", field)
    if limit:
        writes.need("pids", field + ".limit")
        writes.add("pids", "pids.max", _max(limit), field + ".limit")


def _device_number(entry, field):
    for key in ("major", "minor"):
        if type(entry.get(key)) is not int or entry[key] < 0:
            raise ConfigError("needs integer %s (see ls -l /dev)" % key, field=field + "." + key)
    return "%d:%d" % (entry["major"], entry["minor"])


def _block_io(writes, block):
    field = "linux.resources.blockIO"
    weight = _int(block, "weight", field, 0, 1000)
    leaf = _int(block, "leafWeight", field, 0, 1000)
    devices = _list(block, "weightDevice", field)
    throttles = []
    for key, v1_file, v2_key in (("throttleReadBpsDevice", "blkio.throttle.read_bps_device", "rbps"),
                                 ("throttleWriteBpsDevice", "blkio.throttle.write_bps_device", "wbps"),
                                 ("throttleReadIOPSDevice", "blkio.throttle.read_iops_device", "riops"),
                                 ("throttleWriteIOPSDevice", "blkio.throttle.write_iops_device", "wiops")):
        for index, entry in enumerate(_list(block, key, field)):
            where = "%s.%s[%d]" % (field, key, index)
            if not isinstance(entry, dict):
                raise ConfigError("must be an object with major, minor and rate", field=where)
            number = _device_number(entry, where)
            rate = _int(entry, "rate", where, 0)
            throttles.append((number, rate or 0, v1_file, v2_key, where + ".rate"))
    if not (weight or leaf or devices or throttles):
        return
    for value, key in ((weight, "weight"), (leaf, "leafWeight")):
        if value and value < 10:
            raise ConfigError("%d is out of range [10, 1000]" % value, field=field + "." + key)
    where = writes.need("io" if _where(writes.layout, "blkio") is None else "blkio", field)
    v1 = where == "v1" and _where(writes.layout, "blkio") == "v1"
    controller = "blkio" if v1 else "io"
    if v1:
        if weight:
            writes.add(controller, "blkio.weight", weight, field + ".weight",
                       ["blkio.bfq.weight", str(weight)])
        if leaf:
            writes.add(controller, "blkio.leaf_weight", leaf, field + ".leafWeight")
    else:
        if leaf:
            raise ConfigError("cgroup v2 has no leaf weight", field=field + ".leafWeight",
                              hint="leave it out")
        if weight:
            writes.add(controller, "io.bfq.weight", weight, field + ".weight",
                       ["io.weight", "default %d" % v2_io_weight_from_blkio(weight)])
    for index, entry in enumerate(devices):
        where = "%s.weightDevice[%d]" % (field, index)
        if not isinstance(entry, dict):
            raise ConfigError("must be an object with major, minor and weight", field=where)
        number = _device_number(entry, where)
        dev_weight = _int(entry, "weight", where, 10, 1000)
        dev_leaf = _int(entry, "leafWeight", where, 10, 1000)
        if dev_weight:
            if v1:
                writes.add(controller, "blkio.weight_device", "%s %d" % (number, dev_weight),
                           where + ".weight", ["blkio.bfq.weight_device", "%s %d" % (number, dev_weight)])
            else:
                writes.add(controller, "io.bfq.weight", "%s %d" % (number, dev_weight),
                           where + ".weight",
                           ["io.weight", "%s %d" % (number, v2_io_weight_from_blkio(dev_weight))])
        if dev_leaf:
            if not v1:
                raise ConfigError("cgroup v2 has no leaf weight", field=where + ".leafWeight")
            writes.add(controller, "blkio.leaf_weight_device", "%s %d" % (number, dev_leaf),
                       where + ".leafWeight")
    for number, rate, v1_file, v2_key, where in throttles:
        if v1:
            writes.add(controller, v1_file, "%s %d" % (number, rate), where)
        else:
            writes.add(controller, "io.max", "%s %s=%s" % (number, v2_key, rate or "max"), where)


def build_page_size(text, field):
    """"2MB" / "1GB" / "64KB" checked; the name hugetlb.<size>.* files use."""
    if not isinstance(text, str) or len(text) < 3 or text[-2:] not in _PAGE_UNITS \
            or not text[:-2].isdigit():
        raise ConfigError("%r is not a page size like \"2MB\" or \"1GB\"" % (text,), field=field)
    return text


def _hugetlb(writes, limits):
    field = "linux.resources.hugepageLimits"
    if not limits:
        return
    if not isinstance(limits, list):
        raise ConfigError("must be a list", field=field)
    where = writes.need("hugetlb", field)
    for index, entry in enumerate(limits):
        item = "%s[%d]" % (field, index)
        if not isinstance(entry, dict):
            raise ConfigError("must be an object with pageSize and limit", field=item)
        size = build_page_size(entry.get("pageSize"), item + ".pageSize")
        limit = _int(entry, "limit", item, 0)
        if limit is None:
            raise ConfigError("needs a limit in bytes", field=item + ".limit")
        name = "hugetlb.%s.limit_in_bytes" % size if where == "v1" else "hugetlb.%s.max" % size
        writes.add("hugetlb", name, limit, item + ".limit")


def _network(writes, network):
    field = "linux.resources.network"
    class_id = _int(network, "classID", field, 0, 0xFFFFFFFF)
    priorities = _list(network, "priorities", field)
    if class_id is not None:
        if writes.need("net_cls", field + ".classID") != "v1":
            raise ConfigError("net_cls exists only on cgroup v1", field=field + ".classID")
        writes.add("net_cls", "net_cls.classid", class_id, field + ".classID")
    for index, entry in enumerate(priorities):
        item = "%s.priorities[%d]" % (field, index)
        if writes.need("net_prio", item) != "v1":
            raise ConfigError("net_prio exists only on cgroup v1", field=item)
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or " " in name or "/" in name:
            raise ConfigError("needs an interface name", field=item + ".name")
        priority = _int(entry, "priority", item, 0, 0xFFFFFFFF)
        writes.add("net_prio", "net_prio.ifpriomap", "%s %d" % (name, priority or 0),
                   item + ".priority")


def _rdma(writes, rdma):
    field = "linux.resources.rdma"
    for device in sorted(rdma):
        entry = rdma[device]
        item = "%s.%s" % (field, device)
        if not isinstance(entry, dict) or not device or " " in device:
            raise ConfigError("must be an object with hcaHandles and hcaObjects", field=item)
        parts = [device]
        handles = _int(entry, "hcaHandles", item, 0, 0x7FFFFFFF)
        objects = _int(entry, "hcaObjects", item, 0, 0x7FFFFFFF)
        if handles is not None:
            parts.append("hca_handle=%d" % handles)
        if objects is not None:
            parts.append("hca_object=%d" % objects)
        if len(parts) > 1:
            writes.need("rdma", item)
            writes.add("rdma", "rdma.max", " ".join(parts), item)


def _unified(writes, unified):
    field = "linux.resources.unified"
    if not unified:
        return
    if not writes.layout.get("v2"):
        raise ConfigError("needs cgroup v2, and this host has only v1", field=field,
                          hint="use the v1 fields of linux.resources instead")
    for key in sorted(unified):
        value = unified[key]
        if not key or "/" in key or key.startswith(".") or key.startswith("cgroup.") and \
                key not in ("cgroup.max.depth", "cgroup.max.descendants"):
            raise ConfigError("%r is not a settable cgroup v2 file" % key, field=field)
        if not isinstance(value, str):
            raise ConfigError("values must be strings", field="%s.%s" % (field, key))
        writes.add("unified", key, value, "%s.%s" % (field, key))


def build_resource_writes(resources, layout):
    """[[controller, file, value, field, fallback-or-None]] for linux.resources, in write order."""
    if resources is None:
        resources = {}
    if not isinstance(resources, dict):
        raise ConfigError("must be an object", field="linux.resources")
    writes = _Writes(layout)
    _memory(writes, _dict(resources, "memory"))
    _cpu(writes, _dict(resources, "cpu"))
    _pids(writes, _dict(resources, "pids"))
    _block_io(writes, _dict(resources, "blockIO"))
    _hugetlb(writes, resources.get("hugepageLimits"))
    _network(writes, _dict(resources, "network"))
    _rdma(writes, _dict(resources, "rdma"))
    _unified(writes, _dict(resources, "unified"))
    return writes.entries


def build_node_rules(linux):
    """Allow rules for the device nodes linux.devices asks the runtime to create."""
    rules = []
    devices = linux.get("devices") or []
    for device in devices if isinstance(devices, list) else []:
        if isinstance(device, dict) and device.get("type") in ("c", "b", "u") and \
                type(device.get("major")) is int and type(device.get("minor")) is int:
            rules.append([True, "b" if device["type"] == "b" else "c", device["major"],
                          device["minor"], "rwm"])
    return rules


def build_all_device_rules(devices, node_rules):
    """The spec's device cgroup rules, then the linux.devices nodes, then the defaults."""
    return build_device_rules(devices) + node_rules + [list(rule) for rule in DEFAULT_ALLOWED]


def _dir_of(paths, controller):
    if controller == "io":
        return paths.get("unified")
    if controller in paths:
        return paths[controller]
    return paths.get("unified")


def build_writes_for(paths, layout, resources):
    """Resource writes with controllers turned into the plan's dirs: [[dir, file, value, field, fb]]."""
    entries = []
    for controller, name, value, field, fallback in build_resource_writes(resources, layout):
        entries.append([_dir_of(paths, controller), name, value, field, fallback])
    return entries


def build_device_setup(paths, layout, rules):
    """How device rules are enforced here: v1 devices cgroup writes, or a v2 eBPF program."""
    if "devices" in paths:
        return {"kind": "v1", "dir": paths["devices"],
                "writes": [[paths["devices"], name, line]
                           for name, line in build_v1_device_writes(rules)]}
    if "unified" in paths:
        return {"kind": "bpf", "dir": paths["unified"], "program": [list(insn) for insn in build_bpf_program(rules)]}
    return {"kind": "none"}


def build_cgroup_plan(linux, container_id, layout, systemd=False):
    """Pure: the container's cgroup plan (see docs/cgroups.md for every key)."""
    if linux is None:
        linux = {}
    if not isinstance(linux, dict):
        raise ConfigError("must be an object", field="linux")
    paths = build_cgroup_paths(linux, container_id, layout, systemd)
    resources = linux.get("resources") or {}
    if not isinstance(resources, dict):
        raise ConfigError("must be an object", field="linux.resources")
    writes = build_writes_for(paths, layout, resources)
    node_rules = build_node_rules(linux)
    rules = build_all_device_rules(resources.get("devices"), node_rules)
    unit = None
    if systemd:
        from capsa.runtime.cgroups.systemd import build_systemd_unit
        slice_name, unit_name, _ = build_systemd_names(linux.get("cgroupsPath") or "",
                                                       container_id)
        unit = build_systemd_unit(slice_name, unit_name, container_id, resources, rules, layout)
    enable = []
    unified = paths.get("unified")
    if unified:
        wanted = [name for name in layout.get("v2_controllers", ()) if name not in layout["v1"]]
        if layout["mode"] == "hybrid":
            # Only what a write needs: the runtime's own cgroup may be an ancestor, and a v2
            # cgroup holding processes refuses subtree_control (EBUSY, "no internal processes").
            used = set(entry[1].split(".")[0] for entry in writes if entry[0] == unified)
            wanted = [name for name in wanted if name in used]
        if wanted:
            # A v2 controller is usable in a child only once every ancestor enables it.
            root = layout["v2"].rstrip("/")
            line = " ".join("+" + name for name in wanted)
            parent = root
            for part in unified[len(root) + 1:].split("/")[:-1]:
                enable.append([parent, "cgroup.subtree_control", line])
                parent += "/" + part
            enable.append([parent, "cgroup.subtree_control", line])
    if "freezer" in paths:
        freezer = ["v1", paths["freezer"]]
    elif unified:
        freezer = ["v2", unified]
    else:
        freezer = None
    return {
        "version": PLAN_VERSION,
        "id": container_id,
        "mode": layout["mode"],
        # the transient unit that owns the cgroups (--systemd-cgroup), else None
        "systemd": unit,
        "paths": paths,
        "enable": enable,
        "writes": writes,
        "device_rules": rules,
        "node_rules": node_rules,
        "devices": build_device_setup(paths, layout, rules),
        "freezer": freezer,
        "cpuset_root": layout["v1"].get("cpuset"),
        "layout": layout,
        "resources": {key: resources[key] for key in RESOURCE_KEYS if key in resources},
        "created": [],
    }
