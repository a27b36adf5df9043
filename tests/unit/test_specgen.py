"""Unit tests of capsa.runtime.specgen: the config.json `capsa-runtime spec` writes."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from capsa.errors import ConfigError
from capsa.runtime.specgen import build_default_spec

RUNC = "/usr/sbin/runc"
CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def _mount(spec, destination):
    found = [m for m in spec["mounts"] if m["destination"] == destination]
    assert len(found) == 1, destination
    return found[0]


def test_default_spec_has_runc_spec_facts():
    spec = build_default_spec()
    assert spec["ociVersion"].startswith("1.")
    process = spec["process"]
    assert process["terminal"] is True
    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["args"] == ["sh"]
    assert process["env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                              "TERM=xterm"]
    assert process["cwd"] == "/"
    assert process["capabilities"] == {"bounding": CAPS, "effective": CAPS, "permitted": CAPS}
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert process["noNewPrivileges"] is True
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert spec["hostname"]
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    assert _mount(spec, "/proc") == {"destination": "/proc", "type": "proc", "source": "proc"}
    assert "gid=5" in _mount(spec, "/dev/pts")["options"]
    assert _mount(spec, "/sys")["type"] == "sysfs" and "ro" in _mount(spec, "/sys")["options"]
    assert "mode=1777" in _mount(spec, "/dev/shm")["options"]
    linux = spec["linux"]
    assert [ns["type"] for ns in linux["namespaces"]] == [
        "pid", "network", "ipc", "uts", "mount", "cgroup"]
    assert linux["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert "/proc/kcore" in linux["maskedPaths"] and "/sys/firmware" in linux["maskedPaths"]
    assert "/proc/sys" in linux["readonlyPaths"]
    assert "uidMappings" not in linux and "seccomp" not in linux


def test_args_and_terminal_are_taken_and_specs_share_nothing():
    spec = build_default_spec(("echo", "hi"), terminal=False)
    assert spec["process"]["args"] == ["echo", "hi"]
    assert spec["process"]["terminal"] is False
    spec["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN")
    spec["mounts"][1]["options"].append("exec")
    spec["linux"]["maskedPaths"].clear()
    spec["process"]["env"].append("X=1")
    fresh = build_default_spec()
    assert fresh["process"]["capabilities"]["bounding"] == CAPS
    assert fresh["process"]["capabilities"]["effective"] == CAPS
    assert "exec" not in fresh["mounts"][1]["options"]
    assert fresh["linux"]["maskedPaths"]
    assert len(fresh["process"]["env"]) == 2


def test_spec_is_plain_json():
    for rootless in (False, True):
        spec = build_default_spec(["true"], rootless=rootless, uid=1000, gid=1000)
        assert json.loads(json.dumps(spec)) == spec


def test_rootless_maps_the_caller_and_drops_what_it_cannot_do():
    spec = build_default_spec(rootless=True, uid=1234, gid=5678)
    linux = spec["linux"]
    assert [ns["type"] for ns in linux["namespaces"]] == ["pid", "ipc", "uts", "mount", "cgroup",
                                                          "user"]
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 1234, "size": 1}]
    assert linux["gidMappings"] == [{"containerID": 0, "hostID": 5678, "size": 1}]
    assert "resources" not in linux
    assert _mount(spec, "/sys") == {"destination": "/sys", "type": "none", "source": "/sys",
                                    "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
    for mount in spec["mounts"]:
        assert not [o for o in mount.get("options", ()) if o.startswith(("uid=", "gid="))]
    assert "newinstance" in _mount(spec, "/dev/pts")["options"]
    assert [m["destination"] for m in spec["mounts"]] == [
        m["destination"] for m in build_default_spec()["mounts"]]


def test_rootless_defaults_to_the_effective_ids():
    linux = build_default_spec(rootless=True)["linux"]
    assert linux["uidMappings"][0]["hostID"] == os.geteuid()
    assert linux["gidMappings"][0]["hostID"] == os.getegid()


@pytest.mark.skipif(not os.access(RUNC, os.X_OK), reason="host has no runc at " + RUNC)
@pytest.mark.parametrize("rootless", [False, True])
def test_same_facts_as_runc_spec(tmp_path, rootless):
    argv = [RUNC, "spec", "--bundle", str(tmp_path)] + (["--rootless"] if rootless else [])
    subprocess.run(argv, check=True)
    with open(tmp_path / "config.json") as f:
        theirs = json.load(f)
    ours = build_default_spec(rootless=rootless)
    # Known differences: the version and hostname are capsa's; runc before 1.2 also sets
    # ambient capabilities; runc adds a cgroup namespace only on a unified cgroup2 host.
    for spec in (theirs, ours):
        spec.pop("ociVersion")
        spec.pop("hostname")
        spec["process"]["capabilities"].pop("ambient", None)
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"]
                                       if ns["type"] != "cgroup"]
    assert ours == theirs


def test_hardened_takes_the_security_defaults_or_says_it_is_missing():
    present = importlib.util.find_spec("capsa.runtime.security") is not None and \
        importlib.util.find_spec("capsa.runtime.security.defaults") is not None
    if not present:
        with pytest.raises(ConfigError, match="--hardened"):
            build_default_spec(hardened=True)
        return
    from capsa.runtime.security import defaults
    spec = build_default_spec(hardened=True)
    assert spec["process"]["capabilities"] == defaults.build_hardened_process_caps()
    assert spec["linux"]["seccomp"] == defaults.build_hardened_seccomp()
    assert spec["linux"]["maskedPaths"] == list(defaults.HARDENED_MASKED_PATHS)
    assert spec["linux"]["readonlyPaths"] == list(defaults.HARDENED_READONLY_PATHS)
    assert spec["process"]["args"] == ["sh"]
    rootless = build_default_spec(hardened=True, rootless=True, uid=1, gid=1)
    assert rootless["linux"]["seccomp"] == spec["linux"]["seccomp"]
    assert "resources" not in rootless["linux"]


def test_hardened_is_imported_only_when_asked():
    code = ("import sys; sys.path.insert(0, %r); from capsa.runtime.specgen import "
            "build_default_spec; build_default_spec(rootless=True); "
            "print(sorted(m for m in sys.modules if m.startswith('capsa')))"
            % os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], stdout=subprocess.PIPE,
                         check=True).stdout.decode()
    assert out.strip() == "['capsa', 'capsa.runtime', 'capsa.runtime.specgen']"


@pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="host has no /bin/busybox")
def test_make_bundle_writes_the_spec_and_a_rootfs(tmp_path):
    from tests.bundles import make_bundle

    def mutate(spec):
        spec["process"]["env"].append("FOO=bar")

    bundle = make_bundle(tmp_path, ["echo", "hi"], mutate=mutate)
    assert bundle == str(tmp_path / "bundle")
    with open(os.path.join(bundle, "config.json")) as f:
        spec = json.load(f)
    assert spec["process"]["args"] == ["echo", "hi"]
    assert spec["process"]["terminal"] is False
    assert spec["process"]["env"][-1] == "FOO=bar"
    assert os.path.islink(os.path.join(bundle, spec["root"]["path"], "bin", "sh"))
    other = make_bundle(tmp_path, ["true"], terminal=True, name="two",
                        mutate=lambda spec: dict(spec, hostname="replaced"))
    with open(os.path.join(other, "config.json")) as f:
        spec = json.load(f)
    assert spec["hostname"] == "replaced" and spec["process"]["terminal"] is True
    with pytest.raises(FileExistsError):
        make_bundle(tmp_path, ["true"])


@pytest.mark.skipif(not os.access(RUNC, os.X_OK), reason="host has no runc at " + RUNC)
def test_run_runtime_uses_the_private_root(tmp_path):
    from tests.bundles import delete_all, run_runtime
    root = tmp_path / "state"
    listed = run_runtime(RUNC, "list", "--format", "json", root=root)
    assert listed.returncode == 0 and json.loads(listed.stdout) is None
    bad = run_runtime(RUNC, "state", "nope", root=root)
    assert bad.returncode != 0 and "does not exist" in bad.stderr
    assert delete_all(RUNC, root) == []
