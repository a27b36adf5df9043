"""Resource statistics of a container's cgroups in runc's `events --stats` shape, and its OOM count.

Only reads cgroupfs (v1 files, v2 files, or both on a hybrid host), but for apply_oom_watch,
which registers an OOM notification through the kernel seam. Imports nothing from capsa at
load time; a missing file just leaves its field out.
"""

_USER_HZ_NS = 10000000  # cpuacct.stat counts USER_HZ (100) ticks; runc reports nanoseconds


def _text(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode()
    except OSError:
        return None


def _number(path):
    text = _text(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return 0
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def _keyed(path):
    """"key value" lines → {key: int}."""
    out = {}
    for line in (_text(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def _where(plan, controller):
    """(kind, dir) of the hierarchy carrying `controller` for this plan, or (None, None)."""
    paths = plan["paths"]
    layout = plan.get("layout") or {}
    if controller in paths:
        return "v1", paths[controller]
    if "unified" in paths and (layout.get("mode") == "v2" or
                               controller in layout.get("v2_controllers", ())):
        return "v2", paths["unified"]
    return None, None


def _put(target, key, value):
    if value is not None:
        target[key] = value


def _cpu(plan):
    cpu = {"usage": {}, "throttling": {}}
    kind, path = _where(plan, "cpuacct")
    if kind == "v1":
        _put(cpu["usage"], "total", _number(path + "/cpuacct.usage"))
        percpu = _text(path + "/cpuacct.usage_percpu")
        if percpu:
            cpu["usage"]["percpu"] = [int(word) for word in percpu.split()]
        ticks = _keyed(path + "/cpuacct.stat")
        cpu["usage"]["kernel"] = ticks.get("system", 0) * _USER_HZ_NS
        cpu["usage"]["user"] = ticks.get("user", 0) * _USER_HZ_NS
    kind, path = _where(plan, "cpu")
    if kind is None and plan["paths"].get("unified"):
        kind, path = "v2", plan["paths"]["unified"]  # cpu.stat is there without the controller
    if kind:
        stat = _keyed(path + "/cpu.stat")
        if kind == "v2" and "usage_usec" in stat:
            cpu["usage"]["total"] = stat["usage_usec"] * 1000
            cpu["usage"]["kernel"] = stat.get("system_usec", 0) * 1000
            cpu["usage"]["user"] = stat.get("user_usec", 0) * 1000
        _put(cpu["throttling"], "periods", stat.get("nr_periods"))
        _put(cpu["throttling"], "throttledPeriods", stat.get("nr_throttled"))
        if "throttled_time" in stat:
            cpu["throttling"]["throttledTime"] = stat["throttled_time"]
        elif "throttled_usec" in stat:
            cpu["throttling"]["throttledTime"] = stat["throttled_usec"] * 1000
    return cpu


def _entry(path, prefix, usage, peak, limit, failcnt):
    entry = {"limit": _number(path + "/" + prefix + limit) or 0,
             "failcnt": _number(path + "/" + prefix + failcnt) or 0}
    _put(entry, "usage", _number(path + "/" + prefix + usage))
    _put(entry, "max", _number(path + "/" + prefix + peak))
    return entry


def _memory(plan):
    kind, path = _where(plan, "memory")
    if kind is None:
        return {}
    raw = _keyed(path + "/memory.stat")
    memory = {"raw": raw}
    if kind == "v1":
        memory["cache"] = raw.get("total_cache", raw.get("cache", 0))
        memory["usage"] = _entry(path, "memory.", "usage_in_bytes", "max_usage_in_bytes",
                                 "limit_in_bytes", "failcnt")
        memory["swap"] = _entry(path, "memory.memsw.", "usage_in_bytes", "max_usage_in_bytes",
                                "limit_in_bytes", "failcnt")
        memory["kernel"] = _entry(path, "memory.kmem.", "usage_in_bytes", "max_usage_in_bytes",
                                  "limit_in_bytes", "failcnt")
        memory["kernelTCP"] = _entry(path, "memory.kmem.tcp.", "usage_in_bytes",
                                     "max_usage_in_bytes", "limit_in_bytes", "failcnt")
        return memory
    events = _keyed(path + "/memory.events")
    memory["cache"] = raw.get("file", 0)
    memory["usage"] = {"limit": _number(path + "/memory.max") or 0, "failcnt": events.get("max", 0)}
    _put(memory["usage"], "usage", _number(path + "/memory.current"))
    _put(memory["usage"], "max", _number(path + "/memory.peak"))
    memory["swap"] = {"limit": _number(path + "/memory.swap.max") or 0, "failcnt": 0}
    _put(memory["swap"], "usage", _number(path + "/memory.swap.current"))
    return memory


def _pids(plan):
    kind, path = _where(plan, "pids")
    if kind is None:
        return {}
    pids = {}
    _put(pids, "current", _number(path + "/pids.current"))
    _put(pids, "limit", _number(path + "/pids.max"))
    return pids


def _blkio_lines(path, name):
    entries = []
    for line in (_text(path + "/" + name) or "").splitlines():
        parts = line.split()
        if len(parts) == 3 and ":" in parts[0]:
            major, minor = parts[0].split(":")
            entries.append({"major": int(major), "minor": int(minor), "op": parts[1],
                            "value": int(parts[2])})
    return entries


def _blkio(plan):
    kind, path = _where(plan, "blkio")
    if kind == "v1":
        return {"ioServiceBytesRecursive":
                _blkio_lines(path, "blkio.throttle.io_service_bytes_recursive"),
                "ioServicedRecursive": _blkio_lines(path, "blkio.throttle.io_serviced_recursive")}
    kind, path = _where(plan, "io")
    if kind is None:
        return {}
    served, count = [], []
    for line in (_text(path + "/io.stat") or "").splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, minor = (int(x) for x in parts[0].split(":"))
        values = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
        for key, op, target in (("rbytes", "Read", served), ("wbytes", "Write", served),
                                ("rios", "Read", count), ("wios", "Write", count)):
            if key in values:
                target.append({"major": major, "minor": minor, "op": op,
                               "value": int(values[key])})
    return {"ioServiceBytesRecursive": served, "ioServicedRecursive": count}


def _hugetlb(plan):
    import os
    kind, path = _where(plan, "hugetlb")
    if kind is None:
        return {}
    out = {}
    try:
        names = os.listdir(path)
    except OSError:
        return {}
    for name in names:
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "hugetlb":
            continue
        size = parts[1]
        if size in out:
            continue
        base = path + "/hugetlb." + size
        if kind == "v1":
            entry = {"failcnt": _number(base + ".failcnt") or 0}
            _put(entry, "usage", _number(base + ".usage_in_bytes"))
            _put(entry, "max", _number(base + ".max_usage_in_bytes"))
        else:
            entry = {"failcnt": _keyed(base + ".events").get("max", 0)}
            _put(entry, "usage", _number(base + ".current"))
            _put(entry, "max", _number(base + ".max"))
        out[size] = entry
    return out


def read_cgroup_stats(plan):
    """The `data` of a runc stats event for this plan's cgroups."""
    return {"cpu": _cpu(plan), "memory": _memory(plan), "pids": _pids(plan),
            "blkio": _blkio(plan), "hugetlb": _hugetlb(plan)}


def read_oom_count(plan):
    """How many times the kernel's OOM killer has killed in the container's memory cgroup."""
    kind, path = _where(plan, "memory")
    if kind == "v1":
        return _keyed(path + "/memory.oom_control").get("oom_kill", 0)
    if kind == "v2":
        return _keyed(path + "/memory.events").get("oom_kill", 0)
    return 0


def apply_oom_watch(kernel, plan):
    """-> (kind, fd) that turns readable when the kernel's OOM killer visits the container's
    memory cgroup: v1 an eventfd registered on memory.oom_control via cgroup.event_control,
    v2 an inotify watch on memory.events; None where neither can be had (the caller polls)."""
    import os
    from capsa.errors import KernelError
    kind, path = _where(plan, "memory")
    try:
        if kind == "v1":
            efd = kernel.eventfd()
            try:
                ofd = kernel.open(path + "/memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    kernel.write_file(path + "/cgroup.event_control", "%d %d" % (efd, ofd))
                finally:
                    kernel.close(ofd)
            except KernelError:
                kernel.close(efd)
                raise
            return ("eventfd", efd)
        if kind == "v2":
            return ("inotify", kernel.inotify_watch(path + "/memory.events", 0x2))  # IN_MODIFY
    except KernelError:
        return None
    return None
