"""What the cgroup commands (pause, resume, update, events, ps) share: runc's update flags as
linux.resources, its byte sizes, the event JSON lines, and the ps table filter.

Pure but for read_text of --resources; imports only errors (json lazily).
"""
from capsa.errors import UsageError

_RAM_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

# runc update flag (its cli dest) → (resources area, key, kind)
UPDATE_FLAGS = (
    ("blkio_weight", "blockIO", "weight", "uint"),
    ("cpu_period", "cpu", "period", "uint"),
    ("cpu_quota", "cpu", "quota", "int"),
    ("cpu_burst", "cpu", "burst", "uint"),
    ("cpu_share", "cpu", "shares", "uint"),
    ("cpu_rt_period", "cpu", "realtimePeriod", "uint"),
    ("cpu_rt_runtime", "cpu", "realtimeRuntime", "int"),
    ("cpu_idle", "cpu", "idle", "int"),
    ("cpuset_cpus", "cpu", "cpus", "str"),
    ("cpuset_mems", "cpu", "mems", "str"),
    ("memory", "memory", "limit", "ram"),
    ("memory_reservation", "memory", "reservation", "ram"),
    ("memory_swap", "memory", "swap", "ram"),
    ("kernel_memory", "memory", "kernel", "ram"),
    ("kernel_memory_tcp", "memory", "kernelTCP", "ram"),
    ("pids_limit", "pids", "limit", "int"),
)


def build_ram_bytes(text, flag):
    """Docker's RAMInBytes: "-1", "1048576", "64m", "1g", "512MiB", "100kb" (binary units)."""
    value = text.strip().lower()
    if value == "-1":
        return -1
    for tail in ("ib", "b"):
        if value.endswith(tail) and value[:-len(tail)][-1:] in "kmgtp" and len(value) > len(tail):
            value = value[:-len(tail)]
            break
    unit = value[-1:] if value[-1:] in _RAM_UNITS else ""
    number = value[:-1] if unit else value
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if amount < 0 or not number:
        raise UsageError("invalid value %r for --%s: want bytes like 1048576, 64m or 1g, or -1"
                         % (text, flag.replace("_", "-")))
    return int(amount * _RAM_UNITS[unit])


def _number(text, flag, kind):
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or (kind == "uint" and value < 0):
        raise UsageError("invalid value %r for --%s: want a%s whole number"
                         % (text, flag.replace("_", "-"), " non-negative" if kind == "uint" else ""))
    return value


def build_update_resources(opts, read_text):
    """linux.resources for `update`: from --resources FILE|- (JSON; `read_text(path)` reads it,
    "-" meaning stdin), else from runc's individual flags. Intel RDT flags are refused."""
    for flag in ("l3_cache_schema", "mem_bw_schema"):
        if opts.get(flag):
            raise UsageError("--%s: Intel RDT is not supported by capsa-runtime"
                             % flag.replace("_", "-"))
    source = opts.get("resources")
    if source:
        from capsa import jsonlite as json
        text = read_text(source)
        try:
            resources = json.loads(text)
        except ValueError as err:
            raise UsageError("--resources %s is not JSON: %s" % (source, err))
        if not isinstance(resources, dict):
            raise UsageError("--resources %s must hold a JSON object of linux.resources" % source)
        return resources
    resources = {}
    for dest, area, key, kind in UPDATE_FLAGS:
        text = opts.get(dest)
        if text is None or text == "":
            continue
        if kind == "ram":
            value = build_ram_bytes(text, dest)
        elif kind == "str":
            value = text
        else:
            value = _number(text, dest, kind)
        resources.setdefault(area, {})[key] = value
    return resources


def build_event(kind, container_id, data=None):
    """One line of `events` output, as runc prints it: {"type", "id", "data"}."""
    from capsa import jsonlite as json
    event = {"type": kind, "id": container_id}
    if data is not None:
        event["data"] = data
    return json.dumps(event) + "\n"


def build_ps_table(output, pids):
    """Keep the header and the rows of `ps` output whose PID column is one of `pids`."""
    lines = output.splitlines()
    if not lines:
        raise UsageError("ps printed nothing")
    header = lines[0].split()
    if "PID" not in header:
        raise UsageError("no PID column in the ps output", hint="pass ps options that show PID")
    column = header.index("PID")
    wanted = set(pids)
    rows = [lines[0]]
    for line in lines[1:]:
        fields = line.split(None, column + 1)
        if len(fields) > column and fields[column].isdigit() and int(fields[column]) in wanted:
            rows.append(line)
    return "\n".join(rows) + "\n"
