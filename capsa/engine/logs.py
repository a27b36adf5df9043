"""`capsa logs`: reading a container's ctr.log (k8s-file records, or raw for declared
containers), --tail, -t timestamps and -f following until the container is gone.
Imports os/time and the monitor's record parser.
"""
import os
import time

from capsa.engine.monitor import read_log_records
from capsa.engine.runtimes import _read_all


def build_log_output(data, tail, timestamps, raw=False):
    """-> [(stream, bytes)] ready to write, after --tail and -t are applied."""
    if raw:
        lines = data.splitlines(True)
        if tail is not None:
            lines = lines[-tail:] if tail else []
        return [("stdout", b"".join(lines))]
    records = read_log_records(data)
    # a "line" for --tail is a run of partial records ended by a full one
    lines = []
    current = []
    for rec in records:
        current.append(rec)
        if not rec[2]:
            lines.append(current)
            current = []
    if current:
        lines.append(current)
    if tail is not None:
        lines = lines[-tail:] if tail else []
    out = []
    for line in lines:
        stream = line[0][1]
        payload = b"".join(r[3] for r in line)
        if not line[-1][2]:
            payload += b"\n"
        if timestamps:
            # conmon writes +00:00, capsa's monitor Z: show one form
            stamp = line[0][0]
            if stamp.endswith("+00:00"):
                stamp = stamp[:-6] + "Z"
            payload = stamp.encode() + b" " + payload
        out.append((stream, payload))
    return out


def apply_print_logs(ctx, store, record, path, follow, tail, timestamps):
    raw = record.get("log_format") == "raw"
    out_fd = _fd(ctx.stdout, 1)
    err_fd = _fd(ctx.stderr, 2)
    ctx.stdout.flush()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if not follow:
            return
        fd = None
    data = b""
    if fd is not None:
        data = _read_all(fd)
    pending = b""
    complete = data
    if not raw and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        complete, pending = data[:cut], data[cut:]
    for stream, payload in build_log_output(complete, tail, timestamps, raw):
        os.write(err_fd if stream == "stderr" else out_fd, payload)
    if not follow:
        if fd is not None:
            os.close(fd)
        return
    while True:
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = None
        chunk = _read_all(fd) if fd is not None else b""
        if chunk:
            pending += chunk
            if raw:
                os.write(out_fd, pending)
                pending = b""
            else:
                cut = pending.rfind(b"\n") + 1
                for stream, payload in build_log_output(pending[:cut], None, timestamps):
                    os.write(err_fd if stream == "stderr" else out_fd, payload)
                pending = pending[cut:]
            continue
        if store.status(record) not in ("running", "restarting", "paused") and \
                not _monitor_busy(store, record):
            chunk = _read_all(fd) if fd is not None else b""
            if chunk:
                pending += chunk
                continue
            break
        time.sleep(0.1)
    if fd is not None:
        os.close(fd)


def _monitor_busy(store, record):
    from capsa.engine.store import read_pid_start
    state = store.state(record["id"])
    mon = state.get("monitor_pid")
    return state.get("status") in ("running", "restarting") and bool(mon) and \
        read_pid_start(mon) == state.get("monitor_start")


def _fd(stream, default):
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return default
