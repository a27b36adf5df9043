"""Carries out a cgroup plan: create, join, freeze, kill, update and destroy a container's cgroups.

Every change goes through the `kernel` seam (write_file, mkdir, rmdir, bpf calls); read_* functions
only read cgroupfs. Imports only errors, plan and devices, and those lazily where they are big.
"""
import errno as errnos
import os

from capsa.errors import ConfigError, KernelError

# Writes whose order against a sibling matters (memory.limit ≤ memsw.limit, cfs period/quota,
# rt period/runtime): the kernel answers EINVAL or EBUSY and the write is retried after the rest.
_ORDER_ERRNOS = (errnos.EINVAL, errnos.EBUSY)
# Files the kernel accepts and then ignores: read back to refuse the limit clearly.
_READ_BACK = ("memory.kmem.limit_in_bytes",)
_DESTROY_TRIES = 40


def _dirs(plan):
    """Each distinct dir of the plan once, v1 hierarchies first, the unified one last."""
    seen = []
    for controller in sorted(plan["paths"], key=lambda name: name == "unified"):
        path = plan["paths"][controller]
        if path not in seen:
            seen.append(path)
    return seen


def _mkdir_parents(kernel, path, created):
    try:
        kernel.mkdir(path, 0o755)
    except KernelError as err:
        if err.errno == errnos.EEXIST:
            return False
        if err.errno != errnos.ENOENT or path.count("/") < 2:
            raise
        _mkdir_parents(kernel, os.path.dirname(path), created)
        kernel.mkdir(path, 0o755)
    created.append(path)
    return True


def _read(kernel, path):
    return kernel.read_file(path).decode().strip()


def _fill_cpuset(kernel, path):
    # A new v1 cpuset starts with no CPUs and no nodes, and a task cannot join it until both
    # are set: copy them from the parent (cgroup.clone_children is off by default).
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not _read(kernel, path + "/" + name):
            kernel.write_file(path + "/" + name, _read(kernel, os.path.dirname(path) + "/" + name))


def _fail(err, entry, what=None):
    directory, name, value, field = entry[0], entry[1], entry[2], entry[3]
    if err.errno == errnos.ENOENT:
        message = "this kernel has no %s in %s" % (name, directory)
        hint = "the controller or option is not available here; leave the limit out"
    else:
        message = "cannot write %r to %s/%s: %s" % (value, directory, name,
                                                    what or os.strerror(err.errno or errnos.EIO))
        hint = None
    raise KernelError(message, errno=err.errno, field=field, hint=hint)


def _write_one(kernel, entry):
    directory, name, value = entry[0], entry[1], entry[2]
    fallback = entry[4] if len(entry) > 4 else None
    try:
        kernel.write_file(directory + "/" + name, value)
    except KernelError as err:
        if err.errno == errnos.ENOENT and fallback:
            kernel.write_file(directory + "/" + fallback[0], fallback[1])
            return
        if err.errno == errnos.ENOENT and name == "memory.memsw.limit_in_bytes" and value == "-1":
            return  # no swap accounting: an unlimited swap is already what we have
        raise
    if name in _READ_BACK:
        now = _read(kernel, directory + "/" + name)
        if now != value:
            raise KernelError("this kernel ignores %s (reads back %s); kernel memory limits are "
                              "gone since Linux 6.x" % (name, now), errno=errnos.EOPNOTSUPP,
                              field=entry[3] if len(entry) > 3 else None,
                              hint="leave linux.resources.memory.kernel out")


def apply_writes(kernel, writes):
    """Write [dir, file, value, field?, fallback?] entries; order-sensitive failures retry last."""
    deferred = []
    for entry in writes:
        try:
            _write_one(kernel, entry)
        except KernelError as err:
            if err.errno in _ORDER_ERRNOS and entry[1] != "memory.kmem.limit_in_bytes":
                deferred.append(entry)
                continue
            if len(entry) > 3 and err.field is None:
                _fail(err, entry)
            raise
    for entry in deferred:
        try:
            _write_one(kernel, entry)
        except KernelError as err:
            if len(entry) > 3 and err.field is None:
                _fail(err, entry)
            raise


def _apply_devices(kernel, setup):
    if setup["kind"] == "v1":
        for directory, name, line in setup["writes"]:
            try:
                kernel.write_file(directory + "/" + name, line)
            except KernelError as err:
                raise KernelError("cannot write %r to %s/%s: %s" % (line, directory, name,
                                                                   os.strerror(err.errno)),
                                  errno=err.errno, field="linux.resources.devices")
    elif setup["kind"] == "bpf":
        from capsa.runtime.cgroups.devices import build_bpf_bytes
        program = [tuple(insn) for insn in setup["program"]]
        prog_fd = kernel.bpf_load_device_program(build_bpf_bytes(program))
        try:
            dir_fd = kernel.open(setup["dir"], os.O_RDONLY | os.O_DIRECTORY)
            try:
                old = kernel.bpf_query_device_programs(dir_fd) or []
                kernel.bpf_attach_device_program(dir_fd, prog_fd)
                # ALLOW_MULTI runs every attached program and needs all to allow: the previous
                # filter must go once the new one is in, never before (no unfiltered window).
                for prog_id in old:
                    old_fd = kernel.bpf_prog_fd_by_id(prog_id)
                    try:
                        kernel.bpf_detach_device_program(dir_fd, old_fd)
                    finally:
                        kernel.close(old_fd)
            finally:
                kernel.close(dir_fd)
        finally:
            kernel.close(prog_fd)


def apply_cgroup_create(kernel, plan):
    """mkdir every dir of the plan, enable v2 controllers, apply device rules and limits.

    On failure removes what it made and re-raises. Records in plan["created"] the dirs it made
    and in plan["existed"] the container dirs that were there before: save the plan afterwards.
    """
    created = []
    existed = []
    try:
        cpuset_root = plan.get("cpuset_root")
        for path in _dirs(plan):
            before = len(created)
            if not _mkdir_parents(kernel, path, created):
                existed.append(path)
            if cpuset_root:
                for new in created[before:]:
                    if new.startswith(cpuset_root.rstrip("/") + "/"):
                        _fill_cpuset(kernel, new)
        for directory, name, line in plan.get("enable", ()):
            try:
                kernel.write_file(directory + "/" + name, line)
            except KernelError as err:
                raise KernelError("cannot enable %s for the container in %s: %s"
                                  % (line, directory, os.strerror(err.errno)), errno=err.errno,
                                  field="linux.cgroupsPath",
                                  hint="use a cgroupsPath whose parents hold no processes")
        _apply_devices(kernel, plan["devices"])
        apply_writes(kernel, plan["writes"])
    except BaseException:
        _remove(kernel, list(reversed(created)))
        raise
    plan["created"] = created
    plan["existed"] = existed
    return plan


def apply_cgroup_join(kernel, plan, pid):
    """Move `pid` (the container's process, before it runs user code) into every cgroup."""
    for path in _dirs(plan):
        kernel.write_file(path + "/cgroup.procs", str(pid))


def apply_systemd_join(kernel, plan, pid):
    """--systemd-cgroup: systemd makes the container's unit with `pid` already in it, then
    capsa makes the hierarchies systemd leaves alone, writes every limit and joins them all.

    systemd writes its own idea of each limit when it makes (or reloads) the unit, so the
    unit's properties carry the same limits (plan["systemd"]) and the cgroupfs writes follow."""
    unit = plan["systemd"]
    properties = list(unit["properties"])
    if not unit["unit"].endswith(".slice"):
        properties.append(["PIDs", "au", [pid]])
    kernel.systemd_start_unit(unit["unit"], properties)
    apply_cgroup_create(kernel, plan)
    # the unit's folders are this container's, though systemd made some of them
    plan["existed"] = []
    apply_cgroup_join(kernel, plan, pid)


def _subdirs(path):
    try:
        return [entry.path for entry in os.scandir(path) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _remove(kernel, dirs, tries=1):
    import time
    for path in dirs:
        for child in _subdirs(path):
            _remove(kernel, [child], tries)
        delay = 0.005
        for attempt in range(tries):
            try:
                kernel.rmdir(path)
                break
            except KernelError as err:
                if err.errno == errnos.ENOENT:
                    break
                if err.errno != errnos.EBUSY or attempt == tries - 1:
                    if tries == 1:
                        break  # cleanup after a failure: keep the first error
                    raise KernelError("cannot remove cgroup %s: %s" % (path, os.strerror(err.errno)),
                                      errno=err.errno, hint="processes may still be running in it")
                # Tasks of a killed container leave the cgroup only once they are reaped.
                time.sleep(delay)
                delay = min(delay * 2, 0.1)


def apply_cgroup_destroy(kernel, plan):
    """rmdir the container's cgroups (and any nested ones) with retries while tasks drain;
    also empty ancestors this plan created. Dirs that existed before create are left alone.
    A systemd unit is stopped first: systemd removes the folders it made."""
    if plan.get("systemd"):
        kernel.systemd_stop_unit(plan["systemd"]["unit"])
    existed = set(plan.get("existed") or ())
    leaves = [path for path in _dirs(plan) if path not in existed]
    _remove(kernel, leaves, _DESTROY_TRIES)
    ancestors = [path for path in plan.get("created") or () if path not in leaves]
    for path in sorted(ancestors, key=len, reverse=True):
        try:
            kernel.rmdir(path)
        except KernelError:
            pass  # shared with another container, or already gone


def read_frozen(plan):
    """"frozen", "freezing", "thawed", or "unknown" when the cgroup has no freezer."""
    freezer = plan.get("freezer")
    try:
        if not freezer:
            return "unknown"
        if freezer[0] == "v1":
            with open(freezer[1] + "/freezer.state", "rb") as handle:
                return handle.read().decode().strip().lower()
        with open(freezer[1] + "/cgroup.freeze", "rb") as handle:
            wanted = handle.read().strip() == b"1"
        with open(freezer[1] + "/cgroup.events", "rb") as handle:
            frozen = b"frozen 1" in handle.read()
    except OSError:
        return "unknown"
    if frozen:
        return "frozen"
    return "freezing" if wanted else "thawed"


def apply_freeze(kernel, plan, frozen):
    """Freeze (True) or thaw (False) every process of the container, and wait until it holds."""
    import time
    freezer = plan.get("freezer")
    if not freezer:
        raise KernelError("this host has no cgroup freezer", errno=errnos.ENOTSUP,
                          hint="mount the v1 freezer controller or use cgroup v2")
    if freezer[0] == "v1":
        path, value = freezer[1] + "/freezer.state", "FROZEN" if frozen else "THAWED"
    else:
        path, value = freezer[1] + "/cgroup.freeze", "1" if frozen else "0"
    want = "frozen" if frozen else "thawed"
    delay = 0.001
    for _ in range(200):
        kernel.write_file(path, value)
        state = read_frozen(plan)
        if state == want or state == "unknown":
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    if frozen:
        kernel.write_file(path, "THAWED" if freezer[0] == "v1" else "0")
    raise KernelError("the container's processes did not reach %s state" % want,
                      errno=errnos.EBUSY, hint="try again")


def _pid_dir(plan):
    paths = plan["paths"]
    for controller in ("pids", "freezer", "memory", "cpu", "cpuacct", "devices", "blkio", "unified"):
        if controller in paths:
            return paths[controller]
    return next(iter(paths.values()), None)


def _read_procs(path, pids):
    try:
        with open(path + "/cgroup.procs", "rb") as handle:
            pids.update(int(word) for word in handle.read().split())
    except OSError:
        return
    for child in _subdirs(path):
        _read_procs(child, pids)


def read_pids(plan):
    """Every pid in the container's cgroup and the cgroups nested in it, sorted."""
    pids = set()
    path = _pid_dir(plan)
    if path:
        _read_procs(path, pids)
    return sorted(pids)


def apply_kill_all(kernel, plan, signal):
    """Signal every process of the container: cgroup.kill (v2, Linux 5.14) for SIGKILL, else
    freeze, signal each pid, thaw, so a forking process cannot escape between read and kill."""
    unified = plan["paths"].get("unified")
    if signal == 9 and unified and os.path.exists(unified + "/cgroup.kill"):
        kernel.write_file(unified + "/cgroup.kill", "1")
        if _pid_dir(plan) == unified:
            return
    frozen = False
    if plan.get("freezer"):
        try:
            apply_freeze(kernel, plan, True)
            frozen = True
        except KernelError:
            frozen = False
    try:
        for pid in read_pids(plan):
            try:
                kernel.kill(pid, signal)
            except KernelError as err:
                if err.errno != errnos.ESRCH:
                    raise
    finally:
        if frozen:
            apply_freeze(kernel, plan, False)


def read_stats(plan):
    """runc `events --stats` data: cpu, memory, pids, blkio, hugetlb (see stats.py)."""
    from capsa.runtime.cgroups.stats import read_cgroup_stats
    return read_cgroup_stats(plan)


def build_merged_resources(old, new):
    """The resources after an update: objects merge key by key, lists and scalars replace."""
    if not isinstance(new, dict):
        raise ConfigError("must be a JSON object of linux.resources", field="resources")
    merged = dict(old or {})
    memory = new.get("memory")
    old_memory = merged.get("memory") or {}
    if isinstance(memory, dict) and "limit" in memory and "swap" not in memory and \
            old_memory.get("limit") and old_memory.get("swap") == old_memory.get("limit"):
        # Swap was off (memory+swap == memory): keep it off at the new limit, or v1 refuses a
        # limit above the old memsw and v2 would suddenly allow swap.
        memory = dict(memory, swap=memory["limit"])
        new = dict(new, memory=memory)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            area = dict(merged[key])
            area.update(value)
            merged[key] = area
        else:
            merged[key] = value
    return merged


def apply_update(kernel, plan, resources):
    """Apply changed limits to a live container; returns the new plan (save it to state)."""
    from capsa.runtime.cgroups.plan import (build_all_device_rules, build_device_setup,
                                            build_writes_for)
    merged = build_merged_resources(plan.get("resources"), resources)
    changed = {key: merged[key] for key in resources if key != "devices"}
    writes = build_writes_for(plan["paths"], plan["layout"], changed)
    new_plan = dict(plan)
    new_plan["resources"] = merged
    new_plan["writes"] = build_writes_for(plan["paths"], plan["layout"],
                                          {k: v for k, v in merged.items() if k != "devices"})
    if "devices" in resources:
        rules = build_all_device_rules(resources["devices"], plan.get("node_rules") or [])
        new_plan["device_rules"] = rules
        new_plan["devices"] = build_device_setup(plan["paths"], plan["layout"], rules)
    unit = plan.get("systemd")
    if unit:
        from capsa.runtime.cgroups.systemd import build_device_properties, build_systemd_update
        properties = build_systemd_update(merged, plan["layout"])
        if "devices" in resources:
            properties += build_device_properties(
                new_plan["device_rules"], (plan["layout"].get("systemd") or {}).get("devices")
                or {})[0]
        # systemd first: it rewrites the files from its properties, never the other way round
        kernel.systemd_set_unit_properties(unit["unit"], properties)
    try:
        apply_writes(kernel, writes)
    except KernelError:
        # Half an update is worse than none: put back what the changed areas had (runc does
        # the same), then report the first error.
        old = plan.get("resources") or {}
        try:
            apply_writes(kernel, build_writes_for(plan["paths"], plan["layout"],
                                                  {key: old[key] for key in changed if key in old}))
        except (KernelError, ConfigError):
            pass
        raise
    if "devices" in resources:
        setup = new_plan["devices"]
        if setup["kind"] == "v1":
            from capsa.runtime.cgroups.devices import build_v1_device_update
            changes = build_v1_device_update(plan.get("device_rules") or [],
                                             new_plan["device_rules"])
            setup = dict(setup, writes=[[setup["dir"], name, line] for name, line in changes])
        _apply_devices(kernel, setup)
    return new_plan
