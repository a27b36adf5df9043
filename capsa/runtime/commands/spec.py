"""`capsa-runtime spec`: write a starting config.json into the bundle (as `runc spec` does)."""
import json
import os


def run(ctx, opts, args):
    from capsa.errors import StateError
    from capsa.runtime.specgen import build_default_spec
    bundle = opts.get("bundle") or "."
    path = os.path.join(bundle, "config.json")
    if os.path.exists(path):
        raise StateError("%s already exists" % path, hint="remove it first")
    spec = build_default_spec(rootless=bool(opts.get("rootless")),
                              hardened=bool(opts.get("hardened")))
    try:
        with open(path, "x") as handle:
            handle.write(json.dumps(spec, indent=2) + "\n")
    except OSError as exc:
        raise StateError("cannot write %s: %s" % (path, exc.strerror))
    return 0
