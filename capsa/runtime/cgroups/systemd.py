"""The systemd cgroup driver's pure half: linux.resources and device rules → the properties of
the transient unit systemd makes for a container (runc's translation, property for property).

systemd rewrites a unit's cgroup files from its own properties on every daemon-reload, so each
limit it manages must be told to it too, not only written to cgroupfs. Imports only errors.
"""
INFINITY = (1 << 64) - 1
# systemd rounds CPUQuotaPerSecUSec to 1% of a CPU (10 ms per s); round up, not down, so the
# cpu.cfs_quota_us capsa writes afterwards is never above what systemd allows.
_QUOTA_STEP = 10000
_DEFAULT_PERIOD = 100000


def build_unit_properties(slice_name, unit, container_id, mode):
    """The properties every container unit gets (PIDs are added when the init exists)."""
    props = [["Description", "s", "capsa container " + container_id]]
    if unit.endswith(".slice"):
        props.append(["Wants", "as", [slice_name]])
    else:
        # a scope in the slice, with no implicit ordering on shutdown.target & co.
        props.append(["Slice", "s", slice_name])
        props.append(["DefaultDependencies", "b", False])
    # Delegate: systemd leaves the sub-tree (exec --cgroup, nested runtimes) to capsa.
    props.append(["Delegate", "b", True])
    accounting = ("MemoryAccounting", "CPUAccounting", "TasksAccounting",
                  "IOAccounting" if mode == "v2" else "BlockIOAccounting")
    props.extend([name, "b", True] for name in accounting)
    return props


def _positive(area, key):
    value = area.get(key) if isinstance(area, dict) else None
    return value if type(value) is int and value > 0 else None


def _bytes_or_infinity(value):
    return INFINITY if value is not None and value < 0 else value


def build_cpu_quota_properties(quota, period, version):
    """runc's rule: CPUQuotaPerSecUSec = quota/period in µs per second (infinity for no quota),
    CPUQuotaPeriodUSec where systemd knows it (v242)."""
    props = []
    if not quota and not period:
        return props
    per_sec = INFINITY
    if quota and quota > 0:
        use_period = period or _DEFAULT_PERIOD
        per_sec = quota * 1000000 // use_period
        if per_sec % _QUOTA_STEP:
            per_sec = (per_sec // _QUOTA_STEP + 1) * _QUOTA_STEP
    props.append(["CPUQuotaPerSecUSec", "t", per_sec])
    if period and (not version or version >= 242):
        props.append(["CPUQuotaPeriodUSec", "t", period])
    return props


def build_cpuset_mask(text):
    """"0-2,4" → the little-endian byte mask systemd's AllowedCPUs takes ([0x17])."""
    bits = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        for cpu in range(int(low), int(high or low) + 1):
            bits.add(cpu)
    mask = [0] * ((max(bits) // 8 + 1) if bits else 0)
    for cpu in bits:
        mask[cpu // 8] |= 1 << (cpu % 8)
    return mask


def build_resource_properties(resources, mode, version):
    """The unit properties for the limits systemd itself manages (not devices)."""
    from capsa.runtime.cgroups.plan import v2_io_weight_from_blkio, v2_weight_from_shares
    resources = resources or {}
    memory = resources.get("memory") or {}
    cpu = resources.get("cpu") or {}
    props = []
    limit = memory.get("limit")
    if type(limit) is int and limit != 0:
        props.append(["MemoryLimit" if mode != "v2" else "MemoryMax", "t",
                      _bytes_or_infinity(limit)])
    shares = _positive(cpu, "shares")
    if shares:
        if mode == "v2":
            props.append(["CPUWeight", "t", v2_weight_from_shares(shares)])
        else:
            props.append(["CPUShares", "t", shares])
    props.extend(build_cpu_quota_properties(cpu.get("quota"), cpu.get("period"), version))
    weight = _positive(resources.get("blockIO") or {}, "weight")
    if weight:
        if mode == "v2":
            props.append(["IOWeight", "t", v2_io_weight_from_blkio(weight)])
        else:
            props.append(["BlockIOWeight", "t", weight])
    pids = (resources.get("pids") or {}).get("limit")
    if type(pids) is int and pids != 0:
        props.append(["TasksMax", "t", INFINITY if pids < 0 else pids])
    if mode == "v2":
        reservation = memory.get("reservation")
        if type(reservation) is int and reservation != 0:
            props.append(["MemoryLow", "t", _bytes_or_infinity(reservation)])
        swap = memory.get("swap")
        if type(swap) is int and swap != 0:
            # OCI swap is memory+swap; systemd's MemorySwapMax is swap alone
            if swap < 0:
                props.append(["MemorySwapMax", "t", INFINITY])
            elif type(limit) is int and limit > 0 and swap >= limit:
                props.append(["MemorySwapMax", "t", swap - limit])
        if not version or version >= 244:
            for key, name in (("cpus", "AllowedCPUs"), ("mems", "AllowedMemoryNodes")):
                if cpu.get(key):
                    props.append([name, "ay", build_cpuset_mask(cpu[key])])
        props.extend(build_unified_properties(resources.get("unified") or {}))
    return props


def build_unified_properties(unified):
    """Raw cgroup v2 keys that systemd also manages, as its properties."""
    props = []
    names = (("memory.max", "MemoryMax"), ("memory.high", "MemoryHigh"),
             ("memory.low", "MemoryLow"), ("memory.min", "MemoryMin"),
             ("memory.swap.max", "MemorySwapMax"), ("pids.max", "TasksMax"))
    for key, name in names:
        value = unified.get(key)
        if isinstance(value, str) and (value.strip() == "max" or value.strip().isdigit()):
            props.append([name, "t", INFINITY if value.strip() == "max" else int(value)])
    weight = unified.get("cpu.weight")
    if isinstance(weight, str) and weight.strip().isdigit():
        props.append(["CPUWeight", "t", int(weight)])
    quota = unified.get("cpu.max")
    if isinstance(quota, str) and quota.split():
        words = quota.split()
        period = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
        if words[0] == "max":
            props.extend(build_cpu_quota_properties(-1, period, 0))
        elif words[0].isdigit():
            props.extend(build_cpu_quota_properties(int(words[0]), period, 0))
    return props


def build_effective_devices(rules):
    """Replay ordered [allow, type, major, minor, access] rules as the v1 devices cgroup does
    (a fresh cgroup denies all): -> (default_allow, exceptions [type, major, minor, access])."""
    default_allow = False
    exceptions = []
    for allow, kind, major, minor, access in rules:
        if kind == "a" and major == -1 and minor == -1 and access == "rwm":
            default_allow = allow
            exceptions = []
            continue
        if allow != default_allow:
            for entry in exceptions:
                if entry[:3] == [kind, major, minor]:
                    entry[3] = "".join(c for c in "rwm" if c in entry[3] + access)
                    break
            else:
                exceptions.append([kind, major, minor, access])
        else:
            for entry in list(exceptions):
                if entry[:3] == [kind, major, minor]:
                    entry[3] = "".join(c for c in entry[3] if c not in access)
                    if not entry[3]:
                        exceptions.remove(entry)
    return default_allow, exceptions


def build_device_properties(rules, names):
    """DevicePolicy/DeviceAllow for the rules, and warnings for what systemd cannot say.

    `names` maps "c"/"b" → {major: name} from /proc/devices, for a rule with any minor
    (systemd's "char-NAME"). systemd lists only what is allowed: a rule it cannot express is
    left out, which only narrows access; deny rules over a default of allow cannot be told to
    it at all (its default then lets everything through on its next reload, as with runc)."""
    default_allow, exceptions = build_effective_devices(rules)
    warnings = []
    if default_allow:
        if exceptions:
            warnings.append("systemd cannot hold device deny rules; they are written to the "
                            "cgroup but systemd may lift them on its next reload")
        return [["DevicePolicy", "s", "auto"], ["DeviceAllow", "a(ss)", []]], warnings
    allow = []
    for kind, major, minor, access in exceptions:
        for letter, word in (("c", "char"), ("b", "block")):
            if kind not in (letter, "a"):
                continue
            if major == -1:
                if minor != -1:
                    warnings.append("systemd cannot allow %s *:%d; left out" % (word, minor))
                    continue
                spec = word + "-*"
            elif minor == -1:
                name = (names.get(letter) or {}).get(major) or \
                    (names.get(letter) or {}).get(str(major))
                if not name:
                    warnings.append("no /proc/devices name for %s major %d; %s %d:* left out"
                                    % (word, major, word, major))
                    continue
                spec = word + "-" + name
            else:
                spec = "/dev/%s/%d:%d" % (word, major, minor)
            entry = [spec, access]
            if entry not in allow:
                allow.append(entry)
    return [["DevicePolicy", "s", "strict"], ["DeviceAllow", "a(ss)", allow]], warnings


def build_proc_devices(text):
    """/proc/devices → {"c": {major: name}, "b": {major: name}} (JSON keys are strings)."""
    names = {"c": {}, "b": {}}
    current = None
    for line in text.splitlines():
        if line.startswith("Character"):
            current = names["c"]
        elif line.startswith("Block"):
            current = names["b"]
        elif current is not None and line.split():
            words = line.split()
            if len(words) == 2 and words[0].isdigit():
                current.setdefault(words[0], words[1])
    return names


def build_systemd_unit(slice_name, unit, container_id, resources, rules, layout):
    """-> {"unit", "slice", "properties", "warnings"}: what create asks systemd for."""
    facts = layout.get("systemd") or {}
    version = facts.get("version") or 0
    mode = "v2" if layout.get("mode") == "v2" else "v1"
    props = build_unit_properties(slice_name, unit, container_id, mode)
    props.extend(build_resource_properties(resources, mode, version))
    device_props, warnings = build_device_properties(rules, facts.get("devices") or {})
    props.extend(device_props)
    return {"unit": unit, "slice": slice_name, "properties": props, "warnings": warnings}


def build_systemd_update(resources, layout):
    """The properties `update` sends systemd for the merged resources (devices apart)."""
    facts = layout.get("systemd") or {}
    return build_resource_properties(resources, "v2" if layout.get("mode") == "v2" else "v1",
                                     facts.get("version") or 0)
