"""`capsa-runtime features`: what this runtime supports, in the OCI features.json shape, read
from the same tables the parser and validators use."""
import json


def build_features():
    from capsa.runtime import spec as specs
    from capsa.runtime.cli import SPEC_VERSION
    from capsa.runtime.mounts import build_mount_extensions, build_mount_features
    from capsa.runtime.apply.security import build_security_features, read_security_facts
    from capsa.runtime.cgroups.features import build_cgroup_features
    linux = {"namespaces": sorted(specs.NAMESPACES)}
    linux.update(build_security_features(read_security_facts()))
    linux["cgroup"] = build_cgroup_features()
    linux["mountExtensions"] = build_mount_extensions()
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": SPEC_VERSION,
        "hooks": list(specs.HOOK_KINDS),
        "mountOptions": build_mount_features(),
        "linux": linux,
        "annotations": {"io.github.capsa.version": __import__("capsa.runtime.cli").runtime.cli.VERSION},
    }


def run(ctx, opts, args):
    ctx.stdout.write(json.dumps(build_features(), indent=2) + "\n")
    return 0
