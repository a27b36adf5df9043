"""`capsa run` end to end through a real OCI runtime (runc; more with CAPSA_TEST_RUNTIMES):
every flag's effect is read from inside the container. Needs root."""
import json
import os

import pytest

from tests.integration.test_engine_support import make_fixtures

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, cgroups)")


base_rootfs, rootfs, eng = make_fixtures()


def run_in(eng, rootfs, *args, check=0, input=None):
    return eng.run("run", "--rm", "--rootfs", rootfs, *args, check=check, input=input)


def test_output_and_exit_statuses(eng, rootfs):
    assert run_in(eng, rootfs, "echo", "hello").stdout == "hello\n"
    assert run_in(eng, rootfs, "sh", "-c", "exit 3", check=3)
    proc = run_in(eng, rootfs, "sh", "-c", "echo oops >&2; exit 1", check=1)
    assert proc.stderr == "oops\n"
    proc = run_in(eng, rootfs, "nosuchcmd", check=127)
    assert "nosuchcmd" in proc.stderr and "Traceback" not in proc.stderr
    run_in(eng, rootfs, "/etc/passwd", check=126)
    proc = eng.run("run", "--bogus", "--rootfs", rootfs, "true", check=125)
    assert "--bogus" in proc.stderr


def test_env_workdir_user_hostname(eng, rootfs, tmp_path):
    env_file = tmp_path / "vars.env"
    env_file.write_text("# comment\nFROM_FILE=f1\n")
    out = run_in(eng, rootfs, "-e", "A=1", "--env-file", str(env_file), "-w", "/tmp",
                 "-u", "user", "--hostname", "box1", "sh", "-c",
                 "echo $A $FROM_FILE $(pwd) $(id -u):$(id -g) $(hostname) $HOSTNAME").stdout
    assert out.split() == ["1", "f1", "/tmp", "1000:1000", "box1", "box1"]
    out = run_in(eng, rootfs, "-u", "1234:77", "id").stdout
    assert "uid=1234" in out and "gid=77" in out


def test_entrypoint_replaces_the_command(eng, rootfs):
    assert run_in(eng, rootfs, "--entrypoint", "echo", "a", "b").stdout == "a b\n"


def test_read_only_root_and_tmpfs(eng, rootfs):
    proc = run_in(eng, rootfs, "--read-only", "--tmpfs", "/scratch:size=1m", "sh", "-c",
                  "touch /x 2>/dev/null && echo wrote-root; touch /scratch/y && echo wrote-tmpfs;"
                  " grep ' /scratch ' /proc/mounts")
    assert "wrote-root" not in proc.stdout and "wrote-tmpfs" in proc.stdout
    assert "tmpfs /scratch tmpfs" in proc.stdout and "size=1024k" in proc.stdout


def test_bind_volumes_rw_and_ro(eng, rootfs, tmp_path):
    host = tmp_path / "shared"
    host.mkdir()
    (host / "in.txt").write_text("from-host\n")
    run_in(eng, rootfs, "-v", "%s:/data" % host, "sh", "-c", "cat /data/in.txt; echo c > /data/out")
    assert (host / "out").read_text() == "c\n"
    proc = run_in(eng, rootfs, "-v", "%s:/data:ro" % host, "sh", "-c",
                  "echo x > /data/out2 && echo wrote", check=None)
    assert "wrote" not in proc.stdout and not (host / "out2").exists()
    proc = run_in(eng, rootfs, "--mount", "type=bind,source=%s,target=/m,readonly" % host,
                  "cat", "/m/in.txt")
    assert proc.stdout == "from-host\n"
    proc = run_in(eng, rootfs, "--mount", "type=volume,source=mvol,target=/mv",
                  "--mount", "type=tmpfs,target=/mt,tmpfs-size=2m", "sh", "-c",
                  "echo v > /mv/f; grep ' /mt ' /proc/mounts")
    assert "tmpfs /mt tmpfs" in proc.stdout and "size=2048k" in proc.stdout
    assert run_in(eng, rootfs, "-v", "mvol:/again", "cat", "/again/f").stdout == "v\n"


def test_named_volume_persists_and_rm_v(eng, rootfs):
    run_in(eng, rootfs, "-v", "vol1:/v", "sh", "-c", "echo kept > /v/f")
    assert run_in(eng, rootfs, "-v", "vol1:/v", "cat", "/v/f").stdout == "kept\n"
    assert "vol1" in eng.out("volume", "ls").split()
    info = json.loads(eng.out("volume", "inspect", "vol1"))[0]
    assert os.path.isfile(os.path.join(info["Mountpoint"], "f"))
    eng.run("volume", "rm", "vol1", check=0)
    assert "vol1" not in eng.out("volume", "ls", "-q").split()
    # an anonymous volume goes with `rm -v`
    eng.run("run", "--name", "anon", "--rootfs", rootfs, "-v", "/anon", "true", check=0)
    assert len(eng.out("volume", "ls", "-q").split()) == 1
    eng.run("rm", "-v", "anon", check=0)
    assert eng.out("volume", "ls", "-q").split() == []


def cgroup_read(eng, rootfs, flags, path):
    return run_in(eng, rootfs, *flags, "cat", path).stdout.strip()


def test_cgroup_limits_from_inside(eng, rootfs):
    assert cgroup_read(eng, rootfs, ["-m", "64m"],
                       "/sys/fs/cgroup/memory/memory.limit_in_bytes") == str(64 << 20)
    assert cgroup_read(eng, rootfs, ["-m", "64m", "--memory-swap", "100m"],
                       "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes") == str(100 << 20)
    assert cgroup_read(eng, rootfs, ["--cpus", "0.5"],
                       "/sys/fs/cgroup/cpu/cpu.cfs_quota_us") == "50000"
    assert cgroup_read(eng, rootfs, ["--cpu-shares", "512"],
                       "/sys/fs/cgroup/cpu/cpu.shares") == "512"
    assert cgroup_read(eng, rootfs, ["--cpuset-cpus", "0"],
                       "/sys/fs/cgroup/cpuset/cpuset.cpus") == "0"
    assert cgroup_read(eng, rootfs, ["--pids-limit", "20"], "/sys/fs/cgroup/pids/pids.max") == "20"


def test_block_io_throttles(eng, rootfs):
    disk = next((d for d in ("/dev/vda", "/dev/sda", "/dev/nvme0n1") if os.path.exists(d)), None)
    if disk is None:
        pytest.skip("no block device /dev/vda, /dev/sda or /dev/nvme0n1 on this host")
    st = os.stat(disk)
    dev = "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
    out = cgroup_read(eng, rootfs, ["--device-read-bps", disk + ":1mb", "--device-write-iops",
                                    disk + ":100"],
                      "/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device")
    assert out == dev + " 1048576"
    out = cgroup_read(eng, rootfs, ["--device-write-iops", disk + ":100"],
                      "/sys/fs/cgroup/blkio/blkio.throttle.write_iops_device")
    assert out == dev + " 100"
    out = cgroup_read(eng, rootfs, ["--device-write-bps", disk + ":2mb"],
                      "/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device")
    assert out == dev + " 2097152"
    out = cgroup_read(eng, rootfs, ["--device-read-iops", disk + ":77"],
                      "/sys/fs/cgroup/blkio/blkio.throttle.read_iops_device")
    assert out == dev + " 77"


def test_ulimits(eng, rootfs):
    out = run_in(eng, rootfs, "--ulimit", "nofile=100:200", "sh", "-c",
                 "ulimit -n; ulimit -Hn").stdout.split()
    assert out == ["100", "200"]


def cap_eff(eng, rootfs, *flags):
    out = run_in(eng, rootfs, *flags, "grep", "CapEff", "/proc/self/status").stdout
    return int(out.split()[1], 16)


def test_capabilities_add_drop_privileged(eng, rootfs):
    default = cap_eff(eng, rootfs)
    assert default & (1 << 0) and not default & (1 << 12)     # CHOWN yes, NET_ADMIN no
    assert cap_eff(eng, rootfs, "--cap-add", "NET_ADMIN") & (1 << 12)
    assert not cap_eff(eng, rootfs, "--cap-drop", "CHOWN") & 1
    assert cap_eff(eng, rootfs, "--cap-drop", "ALL") == 0
    with open("/proc/self/status") as f:
        host = [int(line.split()[1], 16) for line in f if line.startswith("CapBnd")][0]
    assert cap_eff(eng, rootfs, "--privileged") == host


def test_devices_and_privileged_devices(eng, rootfs):
    out = run_in(eng, rootfs, "--device", "/dev/null:/dev/mynull", "sh", "-c",
                 "echo x > /dev/mynull && ls -l /dev/mynull").stdout
    assert out.startswith("c") and "1,   3" in out
    if os.path.exists("/dev/fuse"):
        assert "fuse" in run_in(eng, rootfs, "--privileged", "ls", "/dev").stdout.split()


def test_security_opts(eng, rootfs, tmp_path):
    out = run_in(eng, rootfs, "--security-opt", "no-new-privileges", "grep", "NoNewPrivs",
                 "/proc/self/status").stdout
    assert out.split()[1] == "1"
    out = run_in(eng, rootfs, "--security-opt", "seccomp=unconfined", "grep", "Seccomp:",
                 "/proc/self/status").stdout
    assert out.split()[1] == "0"
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                             "errnoRet": 1}]}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    proc = run_in(eng, rootfs, "--security-opt", "seccomp=" + str(path), "sh", "-c",
                  "grep Seccomp: /proc/self/status; mkdir /tmp/d && echo made", check=None)
    assert "Seccomp:\t2" in proc.stdout and "made" not in proc.stdout
    run_in(eng, rootfs, "--security-opt", "bogus=1", "true", check=125)
    # LSM options reach the runtime; on a host without SELinux/AppArmor it refuses in one line
    for opt, lsm in (("label=type:spc_t", "/sys/fs/selinux/enforce"),
                     ("apparmor=capsa-test-missing", "/sys/kernel/security/apparmor")):
        proc = run_in(eng, rootfs, "--security-opt", opt, "true", check=None)
        if not os.path.exists(lsm):
            assert proc.returncode == 125 and len(proc.stderr.strip().splitlines()) == 1
    assert run_in(eng, rootfs, "--security-opt", "label=disable", "--security-opt",
                  "apparmor=unconfined", "echo", "ok").stdout == "ok\n"


def test_init_is_pid_one(eng, rootfs):
    from capsa.engine.prepare import read_init_binary
    if read_init_binary() is None:
        pytest.skip("neither catatonit nor tini is installed on this host")
    out = run_in(eng, rootfs, "--init", "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '").stdout
    assert out.startswith("/dev/init -- sh")


def test_tty_and_interactive(eng, rootfs):
    assert run_in(eng, rootfs, "-t", "tty").stdout.strip() == "/dev/pts/0"
    assert run_in(eng, rootfs, "-i", "cat", input="piped in\n").stdout == "piped in\n"
    # without -i the container's stdin is empty
    assert run_in(eng, rootfs, "cat", check=0).stdout == ""


def test_network_none_and_host(eng, rootfs):
    out = run_in(eng, rootfs, "--network", "none", "ls", "/sys/class/net").stdout.split()
    assert out == ["lo"]
    out = run_in(eng, rootfs, "--network", "host", "ls", "/sys/class/net").stdout.split()
    assert len(out) > 1 or out != ["lo"]


def test_dry_run_touches_nothing(eng, rootfs):
    out = json.loads(eng.out("run", "--dry-run", "--rootfs", rootfs, "-m", "32m", "echo", "x"))
    assert out["config"]["process"]["args"] == ["echo", "x"]
    assert out["config"]["linux"]["resources"]["memory"]["limit"] == 32 << 20
    assert isinstance(out["plan"], dict), out["plan"]
    assert "memory.limit_in_bytes" in json.dumps(out["plan"]["cgroup"])
    image = json.loads(eng.out("run", "--dry-run", "-u", "user", "busybox", "id"))
    assert image["config"]["process"]["user"]["uid"] == 1000
    assert isinstance(image["plan"], dict)
    assert not os.path.exists(os.path.join(eng.root, "containers")) or \
        os.listdir(os.path.join(eng.root, "containers")) == []


def test_trace_prints_steps(eng, rootfs):
    proc = run_in(eng, rootfs, "--trace", "true")
    steps = [line.split(None, 3)[-1] for line in proc.stderr.splitlines()
             if line.startswith("trace")]
    for step in ("parse flags", "rootfs", "runtime create", "runtime start", "runtime delete"):
        assert step in steps, proc.stderr


def test_bad_input_leaves_nothing(eng, rootfs, tmp_path):
    for args in (["-v", str(tmp_path / "nope") + ":/x"], ["-u", "ghost"],
                 ["--device", "/dev/nonexistent"], ["--cap-add", "BOGUS"],
                 ["--ulimit", "nofile=x"], ["-m", "lots"], ["--ulimit", "nofile=1:99999999"]):
        proc = eng.run("run", "--name", "bad", "--rootfs", rootfs, *args, "true")
        assert proc.returncode == 125, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert eng.out("ps", "-aq") == ""
    assert not os.listdir(os.path.join(eng.root, "names")) if \
        os.path.isdir(os.path.join(eng.root, "names")) else True


def test_default_busybox_image_offline(eng):
    proc = eng.run("run", "--rm", "busybox", "echo", "hello", check=0)
    assert proc.stdout == "hello\n"


def network_leftovers(eng, ips=(), ids=()):
    """What a container's network can leave: attachment state in the store's network folder,
    leases, netns pins, veths on the default bridge, iptables rules naming its id or address."""
    import subprocess
    state = os.path.join(eng.root, "network")
    found = []
    for folder in ("containers", "netns", "cache", "files"):
        path = os.path.join(state, folder)
        found.extend("state %s/%s" % (folder, e)
                     for e in (os.listdir(path) if os.path.isdir(path) else ()))
    for dirpath, dirs, files in os.walk(os.path.join(state, "ipam")):
        found.extend("lease " + f for f in files if f != "lock" and not f.startswith("last_"))
    with open("/proc/self/mountinfo") as handle:
        found.extend("mount " + l.split()[4] for l in handle if state in l.split()[4])
    bridge = default_network(eng).get("bridge") if os.path.isdir(state) else None
    if bridge and os.path.isdir("/sys/class/net/%s/brif" % bridge):
        found.extend("veth " + v for v in os.listdir("/sys/class/net/%s/brif" % bridge))
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    for line in rules.splitlines():
        words = line.replace("/32", " ").replace("/", " ").replace('"', " ").split()
        if any(ip in words for ip in ips) or any(i[:12] in line for i in ids):
            found.append("rule " + line)
    return found


def default_network(eng):
    return json.loads(eng.out("network", "inspect", "capsa"))[0]


def test_default_network_is_the_bridge_and_rm_leaves_nothing(eng, rootfs):
    # no --network: Docker's model, eth0 on the default bridge network with a route out
    out = run_in(eng, rootfs, "sh", "-c", "ip -4 -o addr show eth0; echo --; ip route; echo --;"
                 " cat /proc/net/route; echo --; cat /etc/hosts; echo --; hostname").stdout
    addr, routes, proc_route, hosts, hostname = out.split("--\n")
    net = default_network(eng)
    assert net["default"] and net["driver"] == "bridge" and net["name"] == "capsa"
    ip = addr.split()[3].split("/")[0]
    import ipaddress
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(net["subnet"]), (ip, net)
    assert routes.startswith("default via %s dev eth0" % net["gateway"]), routes
    # /proc/net/route: destination 00000000 on eth0 (the default route)
    assert any(l.split()[:2] == ["eth0", "00000000"] for l in proc_route.splitlines())
    assert ip + "\t" + hostname.strip() in hosts, hosts
    assert network_leftovers(eng, ips=[ip]) == []


def test_default_network_publishes_a_port_without_a_network_flag(eng, rootfs, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("served by capsa\n")
    port = 18000 + os.getpid() % 1000
    cid = eng.out("run", "-d", "--name", "web", "-p", "%d:80" % port, "-v", "%s:/www:ro" % www,
                  "--rootfs", rootfs, "httpd", "-f", "-p", "80", "-h", "/www").strip()
    assert eng.out("port", "web").strip().endswith(":%d" % port)
    import urllib.request

    def fetch():
        try:
            return urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=2).read()
        except OSError:
            return None
    assert eng.wait_for(fetch, what="published port") == b"served by capsa\n"
    # the attachment is the default network's, on eth0
    assert eng.out("network", "inspect", "capsa").count(cid[:12]) >= 1
    # the explicit spelling is the same network
    out = run_in(eng, rootfs, "--network", "bridge", "ip", "route").stdout
    assert out.startswith("default via %s " % default_network(eng)["gateway"])
    eng.out("rm", "-f", "web")
    assert fetch() is None
    assert network_leftovers(eng, ids=[cid]) == []


def test_failed_create_on_the_default_network_leaves_nothing(eng, rootfs):
    # the command is looked up after the network is attached: the undo must detach it
    proc = eng.run("run", "--rm", "--name", "bad", "--rootfs", rootfs, "nosuchcmd", check=127)
    assert "nosuchcmd" in proc.stderr and "Traceback" not in proc.stderr
    proc = eng.run("create", "--name", "bad", "--rootfs", rootfs, "nosuchcmd", check=127)
    assert eng.out("ps", "-aq") == ""
    # a host port that is taken fails the attach itself
    import socket
    busy = socket.socket()
    busy.bind(("0.0.0.0", 0))
    busy.listen(1)
    try:
        proc = eng.run("run", "--rm", "-p", "%d:80" % busy.getsockname()[1], "--rootfs",
                       rootfs, "true", check=125)
    finally:
        busy.close()
    assert "in use" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert network_leftovers(eng) == []
    assert eng.out("ps", "-aq") == ""


@pytest.mark.parametrize("mode", ["none", "host"])
def test_publish_needs_a_network_of_its_own(eng, rootfs, mode):
    proc = eng.run("run", "--rm", "--network", mode, "-p", "8080:80", "--rootfs", rootfs, "true",
                   check=125)
    assert proc.stderr.strip().count("\n") == 0 and "--publish" in proc.stderr
    assert "--network " + mode in proc.stderr and "Traceback" not in proc.stderr
    assert eng.out("ps", "-aq") == ""


def test_rootfs_tarball(eng, rootfs, tmp_path):
    import tarfile
    tar = tmp_path / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        t.add(rootfs, arcname=".")
    assert run_in(eng, str(tar), "cat", "/etc/hostname").stdout.strip()
    assert eng.out("ps", "-aq") == ""


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_rootfs_disk_images_stay_untouched(eng, rootfs, tmp_path, fmt):
    import hashlib
    import subprocess
    tools = ["mkfs.ext4"] + (["qemu-img", "qemu-storage-daemon"] if fmt == "qcow2" else [])
    missing = [t for t in tools if shutil_which(t) is None]
    if missing:
        pytest.skip("host lacks " + ", ".join(missing))
    raw = tmp_path / "disk.img"
    with open(raw, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-d", rootfs, str(raw)], check=True)
    disk = raw
    if fmt == "qcow2":
        disk = tmp_path / "disk.qcow2"
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(disk)], check=True)
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    out = run_in(eng, str(disk), "sh", "-c", "echo written > /etc/motd; cat /etc/motd").stdout
    assert out == "written\n"
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before
    assert str(disk) not in subprocess.run(["losetup", "-a"], capture_output=True,
                                           text=True).stdout


def shutil_which(name):
    import shutil
    return shutil.which(name)


def test_image_config_applied_as_docker_does(eng, rootfs):
    from capsa.engine.images.store import ImageStore
    os.makedirs(os.path.join(rootfs, "data"), exist_ok=True)
    with open(os.path.join(rootfs, "data", "seed"), "w") as f:
        f.write("from the image\n")
    ImageStore(eng.root).import_rootfs(rootfs, "cfgimg:latest", {
        "Entrypoint": ["sh", "-c"], "Cmd": ["echo default-cmd"], "Env": ["FROM_IMAGE=yes"],
        "WorkingDir": "/tmp", "User": "user", "StopSignal": "SIGUSR1", "Volumes": {"/data": {}}})
    assert eng.out("run", "--rm", "cfgimg") == "default-cmd\n"
    out = eng.out("run", "--rm", "cfgimg", "echo $FROM_IMAGE $(pwd) $(id -un); cat /data/seed")
    assert out == "yes /tmp user\nfrom the image\n"
    assert eng.out("run", "--rm", "--entrypoint", "id", "-u", "0", "cfgimg", "-u") == "0\n"
    eng.out("create", "--name", "sig", "cfgimg", "sleep 60")
    assert json.loads(eng.out("inspect", "sig"))[0]["Config"]["stop_signal"] == 10
    # the image's VOLUME became an anonymous volume, filled from the image, gone with rm -v
    assert len(eng.out("volume", "ls", "-q").split()) == 1
    eng.out("rm", "-v", "sig")
    assert eng.out("volume", "ls", "-q") == ""


def test_volume_create_and_prune(eng, rootfs):
    assert eng.out("volume", "create", "v1").strip() == "v1"
    eng.out("volume", "create", "--label", "a=b", "v2")
    assert json.loads(eng.out("volume", "inspect", "v2"))[0]["Labels"] == {"a": "b"}
    eng.out("create", "--name", "user", "-v", "v1:/v", "--rootfs", rootfs, "true")
    eng.run("volume", "rm", "v1", check=1)
    assert eng.out("volume", "prune").split() == ["v2"]
    assert eng.out("volume", "ls", "-q").split() == ["v1"]
    eng.out("rm", "user")
    eng.out("volume", "rm", "v1")
    eng.run("volume", "create", "bad/name", check=125)


def test_pull_missing_always_never(eng, tmp_path):
    from tests.integration.test_images_support import Registry, have
    if not have("docker-registry", "skopeo"):
        pytest.skip("docker-registry or skopeo is not installed on this host")
    eng.out("run", "--rm", "busybox", "true")
    archive = tmp_path / "bb.tar"
    eng.out("save", "-o", str(archive), "busybox")
    registry = Registry(str(tmp_path))
    try:
        registry.skopeo_copy("docker-archive:" + str(archive), "pulled/bb:v1")
        ref = registry.addr + "/pulled/bb:v1"
        proc = eng.run("run", "--rm", "--pull", "never", ref, "true", check=125)
        assert "not in the store" in proc.stderr
        assert eng.out("run", "--rm", "--tls-verify=false", ref, "echo", "pulled") == "pulled\n"
        assert eng.out("run", "--rm", "--pull", "always", "--tls-verify=false", ref,
                       "echo", "again") == "again\n"
    finally:
        registry.stop()
    proc = eng.run("run", "--rm", "127.0.0.1:1/nothing:here", "true", check=125)
    assert "pulling it failed" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
