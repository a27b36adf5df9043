"""`capsa-runtime ps <id> [ps options]`: the container's processes, as `ps` rows (default
`ps -ef`) or a JSON list of pids (--format json)."""


def run(ctx, opts, args):
    from capsa.runtime.cgroups.operations import read_ps
    ctx.stdout.write(read_ps(ctx.root, args[0], opts.get("format") or "table", args[1:]))
    return 0
