"""`capsa-runtime start`: release a created container. Hot path: state and lifecycle only."""


def run(ctx, opts, args):
    from capsa.runtime.lifecycle import start
    start(ctx.root, args[0], warn=lambda line: ctx.log("warning", line))
    return 0
