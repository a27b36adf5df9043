"""`capsa-runtime resume <id>`: thaw a paused container. Logic in
capsa.runtime.cgroups.operations."""


def run(ctx, opts, args):
    from capsa.runtime.cgroups.operations import apply_pause
    apply_pause(ctx.root, args[0], False)
    return 0
