"""`capsa-runtime create`: set a container up and leave its init waiting for `start`.

Imports the plan and launch machinery only here, never on the state/start/kill/delete path.
"""
import os


def prepare(ctx, opts, container_id):
    """Shared by create and run: load, validate and plan. Nothing is touched on the host."""
    from capsa.runtime import state as states
    from capsa.runtime.plan import build_plan, read_facts
    from capsa.runtime.spec import read_spec
    states.validate_id(container_id)
    bundle = os.path.abspath(opts.get("bundle") or ".")
    spec = read_spec(bundle)
    facts = read_facts(ctx.systemd_cgroup)
    plan = build_plan(spec, bundle, container_id, facts, opts)
    return bundle, plan, spec


def run(ctx, opts, args):
    from capsa.runtime.launch import create_container, start_cgroup_warmup
    start_cgroup_warmup()
    from capsa.syscalls.kernel import Kernel
    bundle, plan, spec = prepare(ctx, opts, args[0])
    create_container(ctx, Kernel(), args[0], bundle, plan, spec, pid_file=opts.get("pid_file"))
    return 0
