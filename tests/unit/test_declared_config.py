"""minimal_containers-compatible config files: parsing every key, every malformed case with its
line number, and the mapping to an OCI config (pure; no root)."""
import pytest

from capsa.errors import ConfigError
from capsa.engine import declared

GOOD = b"""# web server
root=/srv/web
init=@/usr/local/bin/boot
namespaces=uphtic
max_physical_memory=512M
max_memory=1G
max_processes=100
cpu_share=512
net_classid=1048577
id_map_start=200000
mount=/data:/data
mount=/cache:/var/cache
mount_ro=/etc/ssl:/etc/ssl
iops_limit=8:0 1000
io_bw_limit=8:0 1048576
"""


def parse(text):
    return declared.build_declared_config(text if isinstance(text, bytes) else text.encode(),
                                          "configs/web")


def test_every_minimal_containers_key():
    cfg = parse(GOOD)
    assert cfg["root"] == "/srv/web" and cfg["init"] == "@/usr/local/bin/boot"
    assert cfg["namespaces"] == ["cgroup", "ipc", "pid", "time", "user", "uts"]
    assert cfg["max_physical_memory"] == 512 << 20 and cfg["max_memory"] == 1 << 30
    assert cfg["max_processes"] == 100 and cfg["cpu_share"] == 512
    assert cfg["net_classid"] == 1048577 and cfg["id_map_start"] == 200000
    assert [(m["source"], m["target"], m["readonly"]) for m in cfg["mounts"]] == [
        ("/data", "/data", False), ("/cache", "/var/cache", False), ("/etc/ssl", "/etc/ssl", True)]
    assert cfg["iops_limit"] == [{"major": 8, "minor": 0, "rate": 1000}]
    assert cfg["io_bw_limit"] == [{"major": 8, "minor": 0, "rate": 1048576}]
    assert cfg["restart"] == {"name": "no", "max_retries": 0}


def test_namespace_words_and_defaults():
    base = "root=/r\ninit=/sbin/init\n"
    assert parse(base + "namespaces=all")["namespaces"] == sorted(
        ["user", "pid", "uts", "time", "ipc", "cgroup"])
    assert parse(base + "namespaces=none")["namespaces"] == []
    assert parse(base + "namespaces=p\n")["id_map_start"] == 10000
    # no trailing newline and blank lines are fine
    assert parse("\n\n" + base + "namespaces=h")["namespaces"] == ["uts"]


def test_capsa_keys():
    cfg = parse("image=busybox\ncommand=sh -c 'echo hi'\nenv=A=1\nenv=B=x#y\nvolume=data:/d\n"
                "publish=8080:80\nnetwork=host\nrestart=on-failure:3\nuser=1000:1000\n"
                "workdir=/tmp\n")
    assert cfg["command"] == ["sh", "-c", "echo hi"]
    assert cfg["env"] == [("A", "1"), ("B", "x#y")]
    assert cfg["volumes"] == ["data:/d"] and cfg["publish"] == ["8080:80"]
    assert cfg["restart"] == {"name": "on-failure", "max_retries": 3}
    assert cfg["namespaces"] == ["cgroup", "ipc", "pid", "uts"]


@pytest.mark.parametrize("text,where,words", [
    (b"root=/r\r\ninit=/i\nnamespaces=p\n", "line 1", "CRLF"),
    (b"root=/r\ninit=/i\nnamespaces=p\r\n", "line 3", "CRLF"),
    (b"root=/r\ninit=/i\nnamespaces=p\ncolour=blue\n", "line 4", "unknown key 'colour'"),
    (b"root=/r\ninit=/i\nroot=/s\nnamespaces=p\n", "line 3",
     "duplicate key 'root' (first set on line 1)"),
    (b"root=/r\ninit=/i\nnamespaces=p\nnamespaces=u\n", "line 4", "duplicate key"),
    (b"root=/r\ninit=/i\nnamespaces=pz\n", "line 3", "unknown namespace 'z'"),
    (b"root=/r\ninit=/i\nnamespaces=\n", "line 3", "empty namespaces"),
    (b"root=/r\ninit=/i\nnamespaces=p\njust words\n", "line 4", "expected KEY=VALUE"),
    (b"root=/r # the root\ninit=/i\nnamespaces=p\n", "line 1", "unexpected '#'"),
    (b"root=/r\ninit=/i\nnamespaces=p\nmax_processes=ten\n", "line 4", "whole number"),
    (b"root=/r\ninit=/i\nnamespaces=p\nmax_physical_memory=lots\n", "line 4", "invalid size"),
    (b"root=/r\ninit=/i\nnamespaces=p\nmount=/a\n", "line 4", "invalid mount"),
    (b"root=/r\ninit=/i\nnamespaces=p\nmount_ro=/a:rel\n", "line 4", "invalid mount"),
    (b"root=/r\ninit=/i\nnamespaces=p\niops_limit=8:0\n", "line 4", "invalid iops_limit"),
    (b"root=/r\ninit=/i\nnamespaces=p\nio_bw_limit=sda 100\n", "line 4", "invalid io_bw_limit"),
    (b"root=rel\ninit=/i\nnamespaces=p\n", "line 1", "absolute"),
    (b"root=/r\ninit=sbin/init\nnamespaces=p\n", "line 2", "absolute"),
    (b"root=/r\ninit=/i\nnamespaces=p\nrestart=sometimes\n", "line 4", "restart policy"),
    (b"root=/r\ninit=/i\nnamespaces=p\ncpu_share=1\n", "line 4", "at least 2"),
    (b"root=/r\ninit=/i\nnamespaces=p\nmax_physical_memory=2G\nmax_memory=1G\n", "line 5",
     "below"),
    (b"root=/r\nimage=busybox\ninit=/i\nnamespaces=p\n", "line 2", "exclude"),
])
def test_malformed_configs_name_the_line(text, where, words):
    with pytest.raises(ConfigError) as exc:
        parse(text)
    line = exc.value.line()
    assert line.startswith("configs/web " + where), line
    assert words in line


@pytest.mark.parametrize("text,missing", [
    (b"init=/i\nnamespaces=p\n", "root"), (b"root=/r\nnamespaces=p\n", "init"),
    (b"root=/r\ninit=/i\n", "namespaces"), (b"", "root"), (b"# only a comment\n", "root"),
])
def test_missing_required_keys(text, missing):
    with pytest.raises(ConfigError) as exc:
        parse(text)
    assert "missing key " + missing in exc.value.line()


def test_oversized_and_binary_files():
    big = b"root=/r\ninit=/i\nnamespaces=p\n" + b"#" * 4096 + b"\n"
    with pytest.raises(ConfigError) as exc:
        parse(big)
    assert "too long" in exc.value.line()
    with pytest.raises(ConfigError):
        parse(b"root=/\xff\ninit=/i\nnamespaces=p\n")


def facts(**extra):
    out = {"id": "f" * 64, "rootfs": "/srv/web", "mounts": [], "cap_last": 40,
           "host_caps": None, "devices": {}}
    out.update(extra)
    return out


def test_spec_mapping_of_limits_and_namespaces():
    cfg = parse(GOOD)
    spec = declared.build_declared_spec(cfg, "web", facts(mounts=[
        {"source": "/data", "target": "/data", "readonly": False},
        {"source": "/etc/ssl", "target": "/etc/ssl", "readonly": True}]))
    linux = spec["linux"]
    types = sorted(n["type"] for n in linux["namespaces"])
    # time is made by the engine (unshare before the runtime runs), not by the runtime
    assert types == ["cgroup", "ipc", "mount", "pid", "user", "uts"]
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 200000, "size": 65536}]
    assert linux["gidMappings"] == linux["uidMappings"]
    res = linux["resources"]
    assert res["memory"] == {"limit": 512 << 20, "swap": 1 << 30}
    assert res["pids"] == {"limit": 100} and res["cpu"] == {"shares": 512}
    assert res["network"] == {"classID": 1048577}
    assert res["blockIO"]["throttleReadIOPSDevice"] == [{"major": 8, "minor": 0, "rate": 1000}]
    assert res["blockIO"]["throttleWriteBpsDevice"] == [{"major": 8, "minor": 0, "rate": 1048576}]
    assert {"allow": False, "type": "b", "access": "rwm"} in res["devices"]
    assert spec["hostname"] == "web"
    assert spec["process"]["args"] == ["/dev/.capsa-init"]
    assert spec["process"]["env"] == []
    assert spec["annotations"]["org.capsa.init.host-path"] == "/usr/local/bin/boot"
    dests = {m["destination"]: m for m in spec["mounts"]}
    assert dests["/dev/.capsa-init"]["source"] == "/usr/local/bin/boot"
    assert "ro" in dests["/etc/ssl"]["options"] and "rw" in dests["/data"]["options"]
    assert dests["/proc"]["type"] == "proc" and dests["/tmp"]["type"] == "tmpfs"
    assert "network" not in types


def test_spec_without_user_or_uts_namespace():
    cfg = parse("root=/r\ninit=/sbin/init\nnamespaces=u\nid_map_start=0\n")
    spec = declared.build_declared_spec(cfg, "x", facts())
    assert "hostname" not in spec
    assert spec["linux"]["uidMappings"][0]["hostID"] == 0
    # a user namespace without its own pid namespace cannot mount procfs: the host's is bound
    proc = [m for m in spec["mounts"] if m["destination"] == "/proc"][0]
    assert proc["type"] == "bind"
    cfg = parse("root=/r\ninit=/sbin/init\nnamespaces=none\n")
    spec = declared.build_declared_spec(cfg, "x", facts())
    assert [n["type"] for n in spec["linux"]["namespaces"]] == ["mount"]
    assert "uidMappings" not in spec["linux"]


def test_shell_mode_and_kept_environment():
    cfg = parse("root=/r\ninit=/sbin/init\nnamespaces=p\n")
    spec = declared.build_declared_spec(cfg, "x", facts(), shell="@/bin/busybox",
                                        keep_env={"HOME": "/root"})
    assert spec["process"]["terminal"] is True
    assert spec["process"]["args"] == ["/dev/.capsa-init"]
    assert "HOME=/root" in spec["process"]["env"]
    spec = declared.build_declared_spec(cfg, "x", facts(), shell="/bin/sh")
    assert spec["process"]["args"] == ["/bin/sh"]


def test_capabilities_limited_to_what_the_host_holds():
    cfg = parse("root=/r\ninit=/sbin/init\nnamespaces=p\n")
    spec = declared.build_declared_spec(cfg, "x", facts(host_caps=["CAP_CHOWN", "CAP_KILL"]))
    assert spec["process"]["capabilities"]["bounding"] == ["CAP_CHOWN", "CAP_KILL"]


def test_time_offsets_text():
    assert declared.build_time_offsets(123.9, 456.2) == "monotonic -123 0\nboottime -456 0\n"


def test_mount_checks_warn_or_fail(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    cfg = parse("root=/r\ninit=/i\nnamespaces=p\nmount=%s:/a\nmount=/nope/x:/b\n" % src)
    warnings = []
    mounts = declared.read_checked_mounts(cfg, warnings.append)
    assert [m["target"] for m in mounts] == ["/a"]
    assert "line 5" in warnings[0] and "going on" in warnings[0]
    cfg = parse("root=/r\ninit=/i\nnamespaces=p\nmount_ro=/nope/x:/b\n")
    with pytest.raises(ConfigError) as exc:
        declared.read_checked_mounts(cfg, warnings.append)
    assert "line 4" in exc.value.line()


def test_list_rows_from_configs_and_pid_files(tmp_path):
    from capsa.engine.store import ContainerStore
    import os
    home = tmp_path / "home"
    for sub in ("configs", "logs", "pids"):
        (home / sub).mkdir(parents=True)
    (home / "configs" / "a").write_text("root=/r\ninit=/i\nnamespaces=p\n")
    (home / "configs" / "b").write_text("root=/r\ninit=/i\nnamespaces=p\n")
    (home / "pids" / "a").write_text(str(os.getpid()))
    (home / "pids" / "b").write_text("999999999")
    rows = declared.build_list_rows(str(home), ContainerStore(str(tmp_path / "store")))
    assert rows == [("a", True, "declared"), ("b", False, "declared")]


def test_names_are_file_names():
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(Exception):
            declared.check_name(bad)


def test_time_namespace_through_the_kernel_seam():
    from capsa.syscalls.fake import FakeKernel
    from capsa.syscalls.proc import CLONE_NEWTIME
    kernel = FakeKernel()
    declared.apply_time_namespace(kernel)
    assert kernel.names() == ["unshare", "write_file"]
    assert kernel.calls_of("unshare") == [(CLONE_NEWTIME,)]
    text = kernel.files["/proc/self/timens_offsets"].decode()
    mono, boot = text.splitlines()
    assert mono.startswith("monotonic -") and boot.startswith("boottime -")
    assert int(boot.split()[1]) <= 0 and int(mono.split()[1]) <= 0


def test_max_memory_alone_caps_memory_too():
    """cgroup v1 refuses memsw without a memory limit; physical use cannot exceed the total."""
    from capsa.engine.declared import build_limits
    assert build_limits({"max_memory": 64 << 20})["memory"] == {"limit": 64 << 20,
                                                                "swap": 64 << 20}
    assert build_limits({"max_memory": 64 << 20, "max_physical_memory": 32 << 20})["memory"] == \
        {"limit": 32 << 20, "swap": 64 << 20}
