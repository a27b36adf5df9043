"""`features` is generated from the tables the parser and validators use: each advertised word
is accepted, and each accepted word is advertised."""
import json

from capsa.runtime import cli, mounts, spec as specs
from capsa.runtime.commands.features import build_features


def test_features_shape_and_versions(capsys):
    assert cli.main(["features"]) == 0
    features = json.loads(capsys.readouterr().out)
    assert features["ociVersionMin"] == "1.0.0"
    assert features["ociVersionMax"] == cli.SPEC_VERSION
    assert set(features["linux"]) >= {"namespaces", "capabilities", "cgroup", "seccomp",
                                      "apparmor", "selinux", "mountExtensions"}


def test_namespaces_and_hooks_come_from_the_spec_tables():
    features = build_features()
    assert features["linux"]["namespaces"] == sorted(specs.NAMESPACES)
    assert features["hooks"] == list(specs.HOOK_KINDS)
    for kind in features["linux"]["namespaces"]:
        new, join = specs.build_namespaces({"namespaces": [{"type": kind}]})
        assert new == [kind]


def test_every_advertised_mount_option_is_accepted():
    """On a bind mount or on a fresh filesystem: filesystem-only words are refused on binds."""
    features = build_features()
    assert features["mountOptions"] == mounts.build_mount_features()
    for word in features["mountOptions"]:
        accepted = False
        for mount in ({"destination": "/x", "type": "bind", "source": "/tmp",
                       "options": ["bind", word]},
                      {"destination": "/x", "type": "tmpfs", "source": "tmpfs",
                       "options": [word]}):
            try:
                mounts.build_mount(mount, 0, "/bundle")
                accepted = True
            except Exception:
                pass
        assert accepted, "advertised mount option %r is refused everywhere" % word


def test_capabilities_listed_are_known_to_validation():
    from capsa.runtime.security.tables import CAPABILITIES
    features = build_features()
    assert features["linux"]["capabilities"] == list(CAPABILITIES)


def test_cgroup_drivers_advertised_are_the_ones_built():
    from capsa.syscalls.kernel import Kernel
    cgroup = build_features()["linux"]["cgroup"]
    assert cgroup == {"v1": True, "v2": True, "systemd": True, "systemdUser": False,
                      "rdma": True}
    # the systemd driver's calls are part of the kernel seam (so the fake records them)
    for name in ("systemd_start_unit", "systemd_stop_unit", "systemd_set_unit_properties"):
        assert callable(getattr(Kernel, name))
