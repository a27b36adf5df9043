"""How the engine prints: aligned tables, JSON (`--format json`), Docker-style ages and statuses.

Pure formatting plus writes to ctx.stdout; imports json and time only.
"""
import json
import time


def write_table(ctx, headers, rows):
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(str(cell)))
    lines = []
    for row in [headers] + rows:
        cells = [str(c).ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    ctx.stdout.write("\n".join(lines) + "\n")


def write_json_out(ctx, data):
    ctx.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_timestamp(text):
    """RFC 3339 (as format_time writes it) -> seconds since the epoch, or None."""
    if not text:
        return None
    import calendar
    try:
        base, _, frac = text.rstrip("Z").partition(".")
        whole = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
        return whole + float("0." + (frac or "0"))
    except ValueError:
        return None


def build_age(seconds):
    """Docker's human durations: 'Less than a second', '5 seconds', '3 minutes', 'About an hour'."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return "%d seconds" % s
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return "%d minutes" % m
    h = int(round(s / 3600.0))
    if h == 1:
        return "About an hour"
    if h < 48:
        return "%d hours" % h
    if h < 24 * 7 * 2:
        return "%d days" % (h // 24)
    return "%d weeks" % (h // (24 * 7))


def build_status_text(status, state, now):
    if status == "running":
        started = read_timestamp(state.get("started_at")) or now
        return "Up " + build_age(now - started)
    if status == "paused":
        return "Up (Paused)"
    if status == "restarting":
        return "Restarting (%s)" % state.get("exit_code")
    if status == "exited":
        finished = read_timestamp(state.get("finished_at")) or now
        return "Exited (%s) %s ago" % (state.get("exit_code"), build_age(now - finished))
    return "Created"
