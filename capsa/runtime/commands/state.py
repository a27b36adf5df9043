"""`capsa-runtime state`: print the OCI state JSON of a container. Hot path."""
from capsa import jsonlite as json


def run(ctx, opts, args):
    from capsa.runtime import state as states
    record = states.load(ctx.root, args[0])
    ctx.stdout.write(json.dumps(states.build_oci_state(record), indent=2) + "\n")
    return 0
