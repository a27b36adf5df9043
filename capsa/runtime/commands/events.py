"""`capsa-runtime events <id>`: resource statistics as JSON lines, once (--stats) or every
--interval (default 5s) with "oom" events, until the container stops."""


def run(ctx, opts, args):
    from capsa.runtime.cgroups.operations import run_events

    def write(line):
        ctx.stdout.write(line)
        ctx.stdout.flush()
    interval = opts.get("interval")
    run_events(ctx.root, args[0], write, 5.0 if interval is None else interval,
               bool(opts.get("stats")))
    return 0
