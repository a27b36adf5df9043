"""Building config.json for `capsa run` from a request, an image config and host facts (pure)."""
import json

import pytest

from capsa.errors import ConfigError, UsageError
from capsa.engine import specbuild
from capsa.engine.options import parse_options
from capsa.engine.runflags import RUN_TABLE, build_run_request

PASSWD = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n" \
         "www:x:33:33::/var/www:/bin/false\n"
GROUP = "root:x:0:\ntty:x:5:\nuser:x:1000:\nwww:x:33:\naudio:x:29:user,www\nvideo:x:44:user\n"


def request(argv):
    opts, pos = parse_options(argv, RUN_TABLE, "run")
    return build_run_request(opts, pos, {})


def facts(**extra):
    out = {"id": "a" * 64, "rootfs": "/r", "hostname": "aaaaaaaaaaaa",
           "user": {"uid": 0, "gid": 0}, "device_numbers": {}, "cap_last": 40,
           "mount_sources": [], "etc_files": {}, "seccomp": None}
    out.update(extra)
    return out


def spec_for(argv, image_config=None, **extra):
    req = request(argv)
    f = facts(**extra)
    f.setdefault("mount_sources", [])
    if not f["mount_sources"]:
        f["mount_sources"] = [m["source"] or "/vol" for m in req["mounts"]]
    return specbuild.build_spec(req, image_config, f)


def test_entrypoint_and_cmd_rules():
    image = {"Entrypoint": ["/ep"], "Cmd": ["--default"]}
    assert specbuild.build_args(None, [], image) == ["/ep", "--default"]
    assert specbuild.build_args(None, ["x"], image) == ["/ep", "x"]
    # --entrypoint drops the image's CMD
    assert specbuild.build_args("/other", [], image) == ["/other"]
    assert specbuild.build_args("", ["sh"], image) == ["sh"]
    assert specbuild.build_args(None, [], {"Cmd": ["sh"]}) == ["sh"]
    with pytest.raises(UsageError):
        specbuild.build_args(None, [], {})


def test_env_order_and_overrides():
    env = specbuild.build_env_list(["PATH=/img", "A=img"], [("A", "flag"), ("B", "2")], "h", True)
    assert env == ["PATH=/img", "HOSTNAME=h", "A=flag", "TERM=xterm", "B=2"]


def test_user_resolution():
    assert specbuild.build_user("user", PASSWD, GROUP) == {"uid": 1000, "gid": 1000,
                                                           "additionalGids": [29, 44]}
    assert specbuild.build_user("www:user", PASSWD, GROUP) == {"uid": 33, "gid": 1000}
    assert specbuild.build_user("1234", PASSWD, GROUP) == {"uid": 1234, "gid": 1234}
    assert specbuild.build_user("1000:5", PASSWD, GROUP) == {"uid": 1000, "gid": 5}
    assert specbuild.build_user("0", None, None) == {"uid": 0, "gid": 0}
    with pytest.raises(ConfigError):
        specbuild.build_user("ghost", PASSWD, GROUP)
    with pytest.raises(ConfigError):
        specbuild.build_user("user:ghosts", PASSWD, GROUP)


def test_default_spec_is_dockerish():
    spec = spec_for(["img", "echo", "hi"])
    assert spec["process"]["args"] == ["echo", "hi"]
    assert spec["process"]["terminal"] is False
    assert sorted(spec["process"]["capabilities"]["bounding"]) == sorted(specbuild.DOCKER_CAPS)
    assert spec["root"] == {"path": "/r", "readonly": False}
    assert spec["linux"]["cgroupsPath"] == "/capsa/" + "a" * 64
    types = [n["type"] for n in spec["linux"]["namespaces"]]
    assert sorted(types) == ["ipc", "mount", "network", "pid", "uts"]
    assert "/proc/kcore" in spec["linux"]["maskedPaths"]
    assert spec["hostname"] == "aaaaaaaaaaaa"
    json.dumps(spec)


def test_flags_reach_the_spec():
    spec = spec_for(["-t", "-w", "/srv", "--read-only", "--hostname", "box", "--ulimit",
                     "nofile=50:60", "--cap-drop", "ALL", "--cap-add", "CHOWN", "--security-opt",
                     "no-new-privileges", "--sysctl", "net.ipv4.ip_forward=1", "--network",
                     "host", "--label", "a=b", "--name", "n1", "img", "true"],
                    hostname="box")
    p = spec["process"]
    assert p["terminal"] and p["cwd"] == "/srv" and "TERM=xterm" in p["env"]
    assert spec["root"]["readonly"] is True and spec["hostname"] == "box"
    assert {"type": "RLIMIT_NOFILE", "soft": 50, "hard": 60} in p["rlimits"]
    assert p["capabilities"]["effective"] == ["CAP_CHOWN"]
    assert p["noNewPrivileges"] is True
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_forward": "1"}
    assert "network" not in [n["type"] for n in spec["linux"]["namespaces"]]
    assert spec["annotations"]["org.capsa.name"] == "n1"
    assert spec["annotations"]["org.capsa.label.a"] == "b"


def test_resources_translation():
    devs = {"/dev/sda": {"type": "b", "major": 8, "minor": 0}}
    spec = spec_for(["-m", "64m", "--cpus", "0.5", "--pids-limit", "10", "--cpu-shares", "256",
                     "--device-read-bps", "/dev/sda:1k", "--device-write-iops", "/dev/sda:7",
                     "img", "true"], device_numbers=devs)
    res = spec["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20, "swap": 128 << 20}
    assert res["cpu"] == {"quota": 50000, "period": 100000, "shares": 256}
    assert res["pids"] == {"limit": 10}
    assert res["blockIO"]["throttleReadBpsDevice"] == [{"major": 8, "minor": 0, "rate": 1024}]
    assert res["blockIO"]["throttleWriteIOPSDevice"] == [{"major": 8, "minor": 0, "rate": 7}]
    assert res["devices"][0] == {"allow": False, "access": "rwm"}
    spec = spec_for(["-m", "64m", "--memory-swap", "-1", "img", "true"])
    assert spec["linux"]["resources"]["memory"] == {"limit": 64 << 20, "swap": -1}
    with pytest.raises(UsageError):
        spec_for(["--device-read-bps", "/dev/nope:1k", "img", "true"])


def test_devices_and_privileged():
    devs = {"/dev/fuse": {"type": "c", "major": 10, "minor": 229, "fileMode": 0o666}}
    spec = spec_for(["--device", "/dev/fuse:/dev/f:rw", "img", "true"], device_numbers=devs)
    assert spec["linux"]["devices"][0]["path"] == "/dev/f"
    assert {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"} in \
        spec["linux"]["resources"]["devices"]
    priv = spec_for(["--privileged", "img", "true"], seccomp={"defaultAction": "SCMP_ACT_ERRNO"})
    assert len(priv["process"]["capabilities"]["bounding"]) == 41
    assert priv["linux"]["maskedPaths"] == [] and "seccomp" not in priv["linux"]
    assert priv["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"},
                                                     {"allow": True, "access": "rwm"}]


def test_mounts_volumes_tmpfs_and_etc_files():
    req = request(["-v", "/h:/c:ro", "-v", "data:/d", "--tmpfs", "/t:size=1m", "img", "true"])
    f = facts(mount_sources=["/h", "/vols/data/_data", "tmpfs"],
              etc_files={"/etc/hosts": "/x/hosts", "/etc/hostname": "/x/hostname"})
    spec = specbuild.build_spec(req, {}, f)
    by_dest = {m["destination"]: m for m in spec["mounts"]}
    assert by_dest["/c"]["source"] == "/h" and "ro" in by_dest["/c"]["options"]
    assert by_dest["/d"]["source"] == "/vols/data/_data" and "rw" in by_dest["/d"]["options"]
    assert by_dest["/t"]["type"] == "tmpfs" and "size=1m" in by_dest["/t"]["options"]
    assert by_dest["/etc/hosts"]["source"] == "/x/hosts"
    assert "/proc" in by_dest


def test_init_wraps_the_command():
    spec = spec_for(["--init", "img", "sleep", "1"], init_path="/usr/bin/catatonit")
    assert spec["process"]["args"] == ["/dev/init", "--", "sleep", "1"]
    assert any(m["destination"] == "/dev/init" and m["source"] == "/usr/bin/catatonit"
               for m in spec["mounts"])
    with pytest.raises(UsageError):
        spec_for(["--init", "img", "true"], init_path=None)


def test_image_config_applied():
    image = {"Env": ["PATH=/bin", "X=1"], "WorkingDir": "/app", "Cmd": ["run.sh"]}
    spec = spec_for(["img"], image)
    assert spec["process"]["args"] == ["run.sh"] and spec["process"]["cwd"] == "/app"
    assert "X=1" in spec["process"]["env"] and "PATH=/bin" in spec["process"]["env"]
    assert specbuild.build_stop_signal(request(["img"]), {"StopSignal": "SIGQUIT"}) == 3
    assert specbuild.build_stop_signal(request(["--stop-signal", "USR1", "img"]),
                                       {"StopSignal": "SIGQUIT"}) == 10
    assert specbuild.build_stop_signal(request(["img"]), {}) == 15


def test_labels_and_apparmor():
    spec = spec_for(["--security-opt", "label=type:my_t", "--security-opt", "label=level:s0:c1",
                     "--security-opt", "apparmor=prof", "img", "true"])
    assert spec["process"]["selinuxLabel"] == "system_u:system_r:my_t:s0:c1"
    assert spec["process"]["apparmorProfile"] == "prof"
    with pytest.raises(UsageError):
        spec_for(["--security-opt", "label=bogus", "img", "true"])


def test_docker_seccomp_profile_conversion():
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                     "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "excludes": {"caps": ["CAP_SYS_ADMIN"]},
             "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
             "includes": {"arches": ["arm64"]}},
        ]}
    out = specbuild.build_docker_seccomp(profile, ["CAP_CHOWN"])
    assert out["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    names = [r["names"] for r in out["syscalls"]]
    assert names == [["read", "write"], ["clone"]]
    assert out["syscalls"][1]["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
    admin = specbuild.build_docker_seccomp(profile, ["CAP_SYS_ADMIN"])
    assert [r["names"] for r in admin["syscalls"]] == [["read", "write"], ["mount"]]
    with pytest.raises(ConfigError):
        specbuild.build_docker_seccomp({"syscalls": []}, [])
