"""`capsa-runtime pause <id>`: freeze every process of a running container (v1 freezer.state,
v2 cgroup.freeze). Logic in capsa.runtime.cgroups.operations."""


def run(ctx, opts, args):
    from capsa.runtime.cgroups.operations import apply_pause
    apply_pause(ctx.root, args[0], True)
    return 0
