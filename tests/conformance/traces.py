"""What a container client leaves on the host: runtime state, shim sockets, cgroups, mounts, processes.

read_traces() takes a snapshot limited to the names this tier's clients create, so that other
engineers' tests running at the same time are never counted (nor touched) by the final check.
"""
import os

CGROUP_ROOT = "/sys/fs/cgroup"
# podman's runtimes never get --root: runc and capsa-runtime keep state in their default roots
STATE_DIRS = ("/run/runc", "/run/capsa", "/run/containerd/s", "/run/containerd/fifo")
# the clients' host-wide files (podman's shm lock table, empty parents of the per-container
# state), deepest first: removed at the end if this session created them
CLIENT_PATHS = ("/dev/shm/libpod_lock", "/run/containers/networks", "/run/containers",
                "/run/containerd/s", "/run/containerd/fifo", "/run/containerd")


def read_traces(top, namespace):
    """Snapshot: {kind: set of strings}. top: the tier's scratch folder; namespace: containerd's.

    state is the runtimes' entries named after podman's container ids or buildah's, the ctr
    roots, and the shim sockets/fifos; cgroups are those podman (libpod_parent/…), buildah
    (buildah-…) and containerd (/<namespace>/…) create; processes are those whose command line
    names top or that sit in such a cgroup.
    """
    ours = read_podman_ids(top)
    return {
        "client_paths": {p for p in CLIENT_PATHS if os.path.lexists(p)},
        "state": {os.path.join(d, e) for d in STATE_DIRS for e in _listdir(d)
                  if e in ours or e.startswith("buildah-") or d.startswith("/run/containerd/")}
                 | {os.path.join(d, e) for d in _ctr_roots(top) for e in _listdir(d)},
        "cgroups": set(read_cgroups(namespace)),
        # every container runs with --network none: podman makes no /run/netns entry
        "mounts": {m for m in read_mountpoints() if m.startswith(top)},
        "processes": set(read_processes(top, namespace)),
    }


def read_podman_ids(top):
    """The ids of every container (pods' infra ones included) podman made in this session, from
    its events log: the names podman's runtimes keep their state under."""
    import json
    ids = set()
    try:
        with open(os.path.join(top, "podman", "events.log")) as f:
            for line in f:
                event = json.loads(line)
                if event.get("Type") == "container" and event.get("ID"):
                    ids.add(event["ID"])
    except OSError:
        pass
    return ids


def read_cgroups(namespace):
    """Yield the cgroup directories, controller-qualified, that the tier's clients create."""
    for controller in _listdir(CGROUP_ROOT):
        base = os.path.join(CGROUP_ROOT, controller)
        for entry in _listdir(base):
            if entry in ("libpod_parent", namespace) or entry.startswith("buildah-"):
                for path, dirs, _ in os.walk(os.path.join(base, entry)):
                    yield path


def read_mountpoints():
    """Yield every mount point of this mount namespace (octal escapes decoded)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            yield line.split()[4].encode().decode("unicode_escape")


def read_processes(top, namespace):
    """Yield "pid comm" for processes started by the tier's clients."""
    marks = ("libpod", "/%s/" % namespace, "buildah-")
    me = str(os.getpid())
    for pid in _listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open("/proc/%s/cgroup" % pid) as f:
                cgroup = f.read()
            with open("/proc/%s/comm" % pid) as f:
                comm = f.read().strip()
        except OSError:  # gone meanwhile
            continue
        if top in cmdline or any(m in cgroup for m in marks):
            yield "%s %s" % (pid, comm)


def _ctr_roots(top):
    # ctr run --runc-root <top>/ctr-roots/<runtime>: the shim adds /<namespace>
    base = os.path.join(top, "ctr-roots")
    for runtime in _listdir(base):
        for namespace in _listdir(os.path.join(base, runtime)):
            yield os.path.join(base, runtime, namespace)


def remove_empty_cgroups(paths):
    """rmdir the given cgroup directories, deepest first; a cgroup with tasks stays (EBUSY)."""
    for path in sorted(paths, key=len, reverse=True):
        try:
            os.rmdir(path)
        except OSError:
            pass


def remove_client_paths(paths):
    """Remove the given CLIENT_PATHS: the file, or the directory if empty (else it stays)."""
    for path in CLIENT_PATHS:
        if path in paths:
            try:
                (os.rmdir if os.path.isdir(path) else os.unlink)(path)
            except OSError:
                pass


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []
