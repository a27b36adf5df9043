"""The engine's option parser and the `run` flag translations (pure; no root)."""
import pytest

from capsa.errors import UsageError
from capsa.engine.options import parse_options
from capsa.engine import runflags
from capsa.engine.runflags import RUN_TABLE, build_run_request


def parse_run(argv, env=None):
    opts, pos = parse_options(argv, RUN_TABLE, "run")
    return build_run_request(opts, pos, env or {})


def test_short_clusters_and_attached_values():
    opts, pos = parse_options(["-dit", "-m64m", "-e", "A=1", "--name=x", "img", "-e", "cmd"],
                              RUN_TABLE, "run")
    assert opts["detach"] and opts["interactive"] and opts["tty"]
    assert opts["memory"] == "64m"
    assert opts["env"] == ["A=1"]
    assert opts["name"] == "x"
    # flags after the image belong to the container's command
    assert pos == ["img", "-e", "cmd"]


def test_interspersed_and_double_dash():
    table = [("-f --force", "force", "bool")]
    opts, pos = parse_options(["a", "-f", "b"], table, "rm", interspersed=True)
    assert opts["force"] and pos == ["a", "b"]
    opts, pos = parse_options(["--", "-f"], table, "rm", interspersed=True)
    assert not opts["force"] and pos == ["-f"]


@pytest.mark.parametrize("argv", [["--bogus", "img"], ["-Z", "img"], ["--name"], ["-c", "x", "i"],
                                  ["--rm=maybe", "img"]])
def test_bad_flags_are_usage_errors(argv):
    with pytest.raises(UsageError):
        parse_options(argv, RUN_TABLE, "run")


def test_too_many_positionals():
    with pytest.raises(UsageError) as exc:
        parse_options(["a", "b"], [], "logs", interspersed=True, max_positionals=1)
    assert "too many" in exc.value.line()


@pytest.mark.parametrize("text,expected", [("64m", 64 << 20), ("1g", 1 << 30), ("512k", 512 << 10),
                                           ("100", 100), ("1.5g", int(1.5 * (1 << 30))),
                                           ("64mb", 64 << 20), ("2B", 2)])
def test_bytes(text, expected):
    assert runflags.build_bytes(text, "--memory") == expected


@pytest.mark.parametrize("text", ["", "m", "12x", "-5m", "abc"])
def test_bad_bytes(text):
    with pytest.raises(UsageError) as exc:
        runflags.build_bytes(text, "--memory")
    assert exc.value.field == "--memory"


def test_signals():
    assert runflags.build_signal("TERM") == 15
    assert runflags.build_signal("SIGKILL") == 9
    assert runflags.build_signal("usr1") == 10
    assert runflags.build_signal("9") == 9
    assert runflags.build_signal("RTMIN+2") == 36
    with pytest.raises(UsageError):
        runflags.build_signal("SIGNOPE")
    with pytest.raises(UsageError):
        runflags.build_signal("99")


def test_restart_policies():
    assert runflags.build_restart("on-failure:3") == {"name": "on-failure", "max_retries": 3}
    assert runflags.build_restart("always")["name"] == "always"
    assert runflags.build_restart(None)["name"] == "no"
    for bad in ("sometimes", "always:3", "on-failure:x"):
        with pytest.raises(UsageError):
            runflags.build_restart(bad)


def test_env_from_flags_files_and_host():
    env = runflags.build_env(["A=1", "HOME_X", "MISSING", "B="], [("f.env", "# c\nC=3\n\nD=4=5\n")],
                             {"HOME_X": "/h"})
    assert env == [("C", "3"), ("D", "4=5"), ("A", "1"), ("HOME_X", "/h"), ("B", "")]
    with pytest.raises(UsageError) as exc:
        runflags.build_env([], [("f.env", "GOOD=1\n=bad\n")], {})
    assert "f.env line 2" in exc.value.line()


def test_ulimits():
    assert runflags.build_ulimit("nofile=100:200") == {"type": "RLIMIT_NOFILE", "soft": 100,
                                                       "hard": 200}
    assert runflags.build_ulimit("nproc=50")["hard"] == 50
    for bad in ("nofile", "bogus=1", "nofile=a", "nofile=10:5"):
        with pytest.raises(UsageError):
            runflags.build_ulimit(bad)


def test_volume_flag_forms():
    bind = runflags.build_volume_flag("/host:/ctr:ro")
    assert bind["kind"] == "bind" and bind["readonly"] and bind["target"] == "/ctr"
    named = runflags.build_volume_flag("data:/var/data")
    assert named["kind"] == "volume" and named["source"] == "data" and not named["readonly"]
    anon = runflags.build_volume_flag("/scratch")
    assert anon["kind"] == "volume" and anon["source"] == ""
    prop = runflags.build_volume_flag("/a:/b:rshared,nocopy")
    assert prop["propagation"] == "rshared" and not prop["copy"]
    for bad in ("/a:rel", "/a:/b:bogus", "a:b:c:d"):
        with pytest.raises(UsageError):
            runflags.build_volume_flag(bad)


def test_mount_flag_forms():
    m = runflags.build_mount_flag("type=bind,source=/h,target=/c,readonly")
    assert m["kind"] == "bind" and m["readonly"] and m["source"] == "/h"
    t = runflags.build_mount_flag("type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1770")
    assert t["options"] == ["size=1048576", "mode=1770"]
    v = runflags.build_mount_flag("type=volume,src=vol,dst=/v")
    assert v["kind"] == "volume" and v["source"] == "vol"
    for bad in ("type=nfs,target=/x", "type=bind,source=rel,target=/x", "type=bind,source=/a",
                "type=bind,source=/a,target=/b,colour=red"):
        with pytest.raises(UsageError):
            runflags.build_mount_flag(bad)


def test_tmpfs_and_device_flags():
    t = runflags.build_tmpfs_flag("/run:size=1m,noexec")
    assert t["target"] == "/run" and t["options"] == ["size=1m", "noexec"]
    d = runflags.build_device("/dev/fuse:/dev/f2:r")
    assert d == {"host": "/dev/fuse", "target": "/dev/f2", "access": "r"}
    assert runflags.build_device("/dev/null")["target"] == "/dev/null"
    with pytest.raises(UsageError):
        runflags.build_device("fuse")


def test_security_opts():
    s = runflags.build_security_opts(["no-new-privileges", "seccomp=unconfined",
                                      "apparmor=myprof", "label=type:t1"])
    assert s["no_new_privileges"] and s["seccomp"] == "unconfined"
    assert s["apparmor"] == "myprof" and s["label"] == ["type:t1"]
    assert runflags.build_security_opts(["no-new-privileges:true"])["no_new_privileges"]
    with pytest.raises(UsageError):
        runflags.build_security_opts(["selinux=on"])


def test_run_request_resources():
    req = parse_run(["-m", "64m", "--cpus", "1.5", "--cpu-shares", "512", "--cpuset-cpus", "0",
                     "--pids-limit", "20", "--device-read-bps", "/dev/sda:1mb",
                     "--device-write-iops", "/dev/sda:100", "--blkio-weight", "300", "img"])
    res = req["resources"]
    assert res["memory"] == 64 << 20
    assert res["cpu_quota"] == 150000 and res["cpu_period"] == 100000
    assert res["cpu_shares"] == 512 and res["cpuset_cpus"] == "0" and res["pids_limit"] == 20
    assert res["device_read_bps"] == [{"path": "/dev/sda", "rate": 1 << 20}]
    assert res["device_write_iops"] == [{"path": "/dev/sda", "rate": 100}]
    assert res["blkio_weight"] == 300


@pytest.mark.parametrize("argv,field", [
    (["--memory-swap", "32m", "-m", "64m", "img"], "--memory-swap"),
    (["--memory-swap", "128m", "img"], "--memory-swap"),
    (["-m", "1k", "img"], "--memory"),
    (["--cpus", "0", "img"], "--cpus"),
    (["--cpuset-cpus", "a", "img"], "--cpuset-cpus"),
    (["--blkio-weight", "5", "img"], "--blkio-weight"),
    (["--rm", "--restart", "always", "img"], "--restart"),
    (["--name", "bad name", "img"], "--name"),
    (["--cap-add", "NOPE", "img"], "--cap-add"),
    (["-v", "/a:/x", "--tmpfs", "/x", "img"], "--volume"),
])
def test_run_request_errors_name_the_flag(argv, field):
    with pytest.raises(UsageError) as exc:
        parse_run(argv)
    assert exc.value.field == field


def test_run_request_image_and_command():
    req = parse_run(["--rm", "busybox", "echo", "-n", "hi"])
    assert req["image"] == "busybox" and req["command"] == ["echo", "-n", "hi"]
    assert req["restart"]["name"] == "no"
    req = parse_run(["--rootfs", "/r", "true"])
    assert req["image"] is None and req["command"] == ["true"]
    with pytest.raises(UsageError):
        parse_run([])


def test_network_defaults_to_the_bridge_as_docker_does():
    # no --network: the default bridge network (prepare attaches it through NetworkManager)
    assert parse_run(["busybox"])["network"] == runflags.DEFAULT_NETWORK_MODE == "bridge"
    assert parse_run(["--rootfs", "/r", "true"])["network"] == "bridge"
    req = parse_run(["-p", "8080:80", "busybox"])
    assert req["network"] == "bridge" and req["publish"] == ["8080:80"]
    for mode in ("none", "host", "web", "container:db", "ns:/run/netns/x", "bridge"):
        assert parse_run(["--network", mode, "busybox"])["network"] == mode
        assert parse_run(["--net=" + mode, "busybox"])["network"] == mode


@pytest.mark.parametrize("mode", ["none", "host"])
def test_publish_without_a_network_of_its_own_is_an_error(mode):
    with pytest.raises(UsageError) as exc:
        parse_run(["--network", mode, "-p", "8080:80", "busybox"])
    assert exc.value.field == "--publish" and mode in exc.value.message
    assert "--network" in exc.value.hint


def test_caps_normalised():
    req = parse_run(["--cap-add", "net_admin", "--cap-drop", "ALL", "img"])
    assert req["cap_add"] == ["CAP_NET_ADMIN"] and req["cap_drop"] == ["ALL"]


def test_pull_policy_and_tls_verify():
    req = parse_run(["img"])
    assert req["pull"] == "missing" and req["tls_verify"] is True
    req = parse_run(["--pull", "always", "--tls-verify=false", "img"])
    assert req["pull"] == "always" and req["tls_verify"] is False
    with pytest.raises(UsageError) as exc:
        parse_run(["--pull", "sometimes", "img"])
    assert exc.value.field == "--pull"
