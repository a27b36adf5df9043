"""`capsa-runtime update <id>`: change a live container's limits from runc's flags or from
--resources FILE|- (a linux.resources JSON object, as podman sends it)."""


def _read_text(path):
    import sys
    from capsa.errors import UsageError
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, "r") as handle:
            return handle.read()
    except OSError as exc:
        raise UsageError("cannot read --resources %s: %s" % (path, exc.strerror))


def run(ctx, opts, args):
    from capsa.runtime.cgroups.control import build_update_resources
    from capsa.runtime.cgroups.operations import apply_container_update
    resources = build_update_resources(opts, _read_text)
    apply_container_update(ctx.root, args[0], resources)
    return 0
