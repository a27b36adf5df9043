"""`capsa-runtime kill <id> [signal]`: signal the init (default SIGTERM), or with --all every
process in the container's cgroup. Hot path."""


def run(ctx, opts, args):
    from capsa.runtime.lifecycle import kill, parse_signal
    signal = parse_signal(args[1]) if len(args) > 1 else 15
    kill(ctx.root, args[0], signal, all_processes=bool(opts.get("all")))
    return 0
