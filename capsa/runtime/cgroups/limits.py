"""minimal_containers' limit keys → an OCI linux.resources dict (the engine's declared containers).

Pure: imports only errors. Keys: max_physical_memory, max_memory, max_processes, cpu_share,
net_classid, iops_limit and io_bw_limit (the last two repeatable, "MAJOR:MINOR VALUE").
"""
from capsa.errors import ConfigError

LIMIT_KEYS = ("max_physical_memory", "max_memory", "max_processes", "cpu_share", "net_classid",
              "iops_limit", "io_bw_limit")
_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def build_bytes(text, key):
    """"512M", "2g", "1048576" → bytes (the suffixes memory.limit_in_bytes itself accepts)."""
    value = text.strip().lower()
    scale = 1
    if value.endswith("b") and value[-2:-1] in _SUFFIXES:
        value = value[:-1]
    if value and value[-1] in _SUFFIXES:
        scale = _SUFFIXES[value[-1]]
        value = value[:-1]
    if not value.isdigit() or int(value) == 0:
        raise ConfigError("%r is not a size in bytes" % text, field=key,
                          hint="write e.g. 536870912, 512M or 2G")
    return int(value) * scale


def _count(text, key, low, high, what):
    value = text.strip()
    if not value.isdigit() or not low <= int(value) <= high:
        raise ConfigError("%r is not %s" % (text, what), field=key)
    return int(value)


def build_classid(text, key="net_classid"):
    """net_cls.classid from decimal, 0x hex, or the tc handle form "MAJOR:MINOR" (hex halves)."""
    value = text.strip().lower()
    try:
        if ":" in value:
            major, minor = value.split(":")
            number = (int(major, 16) << 16) | int(minor or "0", 16)
            if int(major, 16) > 0xFFFF or int(minor or "0", 16) > 0xFFFF:
                raise ValueError(value)
        elif value.startswith("0x"):
            number = int(value, 16)
        else:
            number = int(value, 10)
    except ValueError:
        number = -1
    if not 0 <= number <= 0xFFFFFFFF:
        raise ConfigError("%r is not a class id" % text, field=key,
                          hint="write e.g. 0x100001 or 10:1 (tc's MAJOR:MINOR)")
    return number


def _device_lines(values, key):
    out = []
    for text in values:
        parts = text.split()
        numbers = parts[0].split(":") if parts else []
        if len(parts) != 2 or len(numbers) != 2 or not all(n.isdigit() for n in numbers) \
                or not parts[1].isdigit():
            raise ConfigError("%r is not \"MAJOR:MINOR VALUE\"" % text, field=key,
                              hint="e.g. %s=8:0 %s" % (key, "1000" if key == "iops_limit"
                                                       else "10485760"))
        out.append({"major": int(numbers[0]), "minor": int(numbers[1]), "rate": int(parts[1])})
    return out


def build_resources_from_limits(config):
    """{key: str or [str]} of a minimal_containers config → OCI linux.resources (only what is set).

    max_memory is memory plus swap, which is exactly OCI's memory.swap; without
    max_physical_memory it caps memory too, since physical use cannot exceed the total.
    """
    values = {}
    for key in LIMIT_KEYS:
        value = config.get(key)
        if value is None:
            continue
        values[key] = list(value) if isinstance(value, (list, tuple)) else [value]
        if key not in ("iops_limit", "io_bw_limit") and len(values[key]) > 1:
            raise ConfigError("given more than once", field=key, hint="keep one line")
    resources = {}
    memory = {}
    if "max_physical_memory" in values:
        memory["limit"] = build_bytes(values["max_physical_memory"][0], "max_physical_memory")
    if "max_memory" in values:
        memory["swap"] = build_bytes(values["max_memory"][0], "max_memory")
        memory.setdefault("limit", memory["swap"])
        if memory["swap"] < memory["limit"]:
            raise ConfigError("max_memory (memory plus swap) is below max_physical_memory",
                              field="max_memory", hint="raise max_memory or drop it")
    if memory:
        resources["memory"] = memory
    if "max_processes" in values:
        resources["pids"] = {"limit": _count(values["max_processes"][0], "max_processes", 1,
                                             1 << 22, "a process count of at least 1")}
    if "cpu_share" in values:
        resources["cpu"] = {"shares": _count(values["cpu_share"][0], "cpu_share", 2, 262144,
                                             "a CPU share in [2, 262144] (1024 is the default)")}
    if "net_classid" in values:
        resources["network"] = {"classID": build_classid(values["net_classid"][0])}
    block = {}
    if "iops_limit" in values:
        lines = _device_lines(values["iops_limit"], "iops_limit")
        block["throttleReadIOPSDevice"] = lines
        block["throttleWriteIOPSDevice"] = [dict(line) for line in lines]
    if "io_bw_limit" in values:
        lines = _device_lines(values["io_bw_limit"], "io_bw_limit")
        block["throttleReadBpsDevice"] = lines
        block["throttleWriteBpsDevice"] = [dict(line) for line in lines]
    if block:
        resources["blockIO"] = block
    return resources
