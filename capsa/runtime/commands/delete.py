"""`capsa-runtime delete [--force] <id>`: remove a container and everything it held. Hot path."""


def run(ctx, opts, args):
    from capsa.runtime.lifecycle import delete
    delete(ctx.root, args[0], force=bool(opts.get("force")),
           warn=lambda line: ctx.log("warning", line))
    return 0
