"""Container state under --root: one folder per container, atomic writes, a lock per container.

The status is derived, never trusted from a file: from the init pid and its start time (pid
reuse), whether exec.fifo still exists (created), and the freezer (paused). Imports only os,
json and errors; the cgroup freezer is read lazily, only for a live started container.
"""
from capsa import jsonlite as json
import os

from capsa.errors import StateError, UsageError

STATE_FILE = "state.json"
FIFO_NAME = "exec.fifo"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+-.")


def validate_id(container_id):
    """runc's rule: letters, digits and _ + - . only, not '.' or '..', and not empty."""
    if not container_id or container_id in (".", "..") or not _ID_CHARS.issuperset(container_id):
        raise UsageError("invalid container id %r" % container_id,
                         hint="use only letters, digits and _ + - .")
    if len(container_id) > 1024:
        raise UsageError("container id is longer than 1024 characters")


def container_dir(root, container_id):
    validate_id(container_id)
    return os.path.join(root, container_id)


def ensure_root(root):
    try:
        os.makedirs(root, 0o700, exist_ok=True)
    except OSError as exc:
        raise StateError("cannot create state root %s: %s" % (root, exc.strerror),
                         hint="pass a writable --root")


def lock(path):
    """Take the per-container lock (flock on the folder itself); returns the fd to close."""
    import fcntl
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def write_atomic(path, data):
    """Write to a temp file beside `path` and rename it over: readers see old or new, never half."""
    if isinstance(data, str):
        data = data.encode()
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def save(directory, record):
    write_atomic(os.path.join(directory, STATE_FILE), json.dumps(record))


def load(root, container_id):
    directory = container_dir(root, container_id)
    try:
        with open(os.path.join(directory, STATE_FILE), "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        if os.path.isdir(directory):
            return {"id": container_id, "pid": 0, "incomplete": True, "dir": directory}
        raise StateError("container %s does not exist" % container_id,
                         hint="see capsa-runtime list")
    except OSError as exc:
        raise StateError("cannot read state of %s: %s" % (container_id, exc.strerror))
    try:
        record = json.loads(data)
    except ValueError:
        return {"id": container_id, "pid": 0, "incomplete": True, "dir": directory}
    record["dir"] = directory
    return record


def list_ids(root):
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if os.path.isdir(os.path.join(root, name)))


def read_start_time(pid):
    """Field 22 of /proc/<pid>/stat (clock ticks since boot), or None if gone or a zombie."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def derive_status(record):
    """creating / created / running / paused / stopped, from what can be observed now."""
    if record.get("incomplete"):
        return "stopped"
    pid = record.get("pid") or 0
    if pid <= 0:
        return "creating"
    start = read_start_time(pid)
    if start is None or start != record.get("pid_start"):
        return "stopped"
    if os.path.exists(os.path.join(record["dir"], FIFO_NAME)):
        return "created"
    cgroup = record.get("cgroup")
    if cgroup:
        from capsa.runtime.cgroups.manager import read_frozen
        try:
            if read_frozen(cgroup) == "frozen":
                return "paused"
        except (OSError, ValueError):
            pass
    return "running"


def build_oci_state(record, status=None):
    """The OCI state JSON (what `state` prints and hooks read on stdin)."""
    if status is None:
        status = derive_status(record)
    state = {
        "ociVersion": record.get("ociVersion", "1.2.0"),
        "id": record["id"],
        "status": status,
        "pid": record.get("pid", 0) if status not in ("stopped",) else 0,
        "bundle": record.get("bundle", ""),
        "rootfs": record.get("rootfs", ""),
        "created": record.get("created", ""),
        "owner": record.get("owner", ""),
    }
    if record.get("annotations"):
        state["annotations"] = record["annotations"]
    return state
