"""`capsa-runtime list`: the containers under --root, as a table, JSON or ids."""
from capsa import jsonlite as json


def run(ctx, opts, args):
    from capsa.errors import StateError, UsageError
    from capsa.runtime import state as states
    fmt = opts.get("format") or "table"
    if fmt not in ("table", "json"):
        raise UsageError("invalid --format %r: use table or json" % fmt)
    rows = []
    for container_id in states.list_ids(ctx.root):
        try:
            record = states.load(ctx.root, container_id)
        except StateError:
            continue
        rows.append(states.build_oci_state(record))
    if opts.get("quiet"):
        for row in rows:
            ctx.stdout.write(row["id"] + "\n")
    elif fmt == "json":
        ctx.stdout.write(json.dumps(rows) + "\n")
    else:
        ctx.stdout.write("%-12s %-8s %-10s %-40s %-30s %s\n" % ("ID", "PID", "STATUS", "BUNDLE",
                                                                "CREATED", "OWNER"))
        for row in rows:
            ctx.stdout.write("%-12s %-8d %-10s %-40s %-30s %s\n" % (
                row["id"], row["pid"], row["status"], row["bundle"], row["created"],
                row["owner"] or "root"))
    return 0
