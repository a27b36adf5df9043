"""capsa-runtime end to end, as root: real containers from busybox bundles, checked from inside.

Each test runs the real command line (the installed launcher, or this checkout) with a private
--root, and the fixture proves nothing is left behind: no state folder, no cgroup, no mount.
"""
import array
import json
import os
import socket
import subprocess
import time

import pytest

from tests.bundles import capsa_runtime_command, delete_all, make_bundle

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, mounts)")


def _mounts(under):
    """Mount points below `under` (other work on the host may mount elsewhere meanwhile)."""
    with open("/proc/self/mountinfo") as handle:
        return sorted(line.split(" ")[4] for line in handle if line.split(" ")[4].startswith(under))


def _cgroup_dirs(container_id):
    found = []
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        if os.path.basename(top) == container_id:
            found.append(top)
        if top.count("/") > 6:
            dirs[:] = []
    return found


def add_user_namespace(spec, host_id):
    """A new user namespace mapping container ids 0-65535 to host ids from `host_id`."""
    spec["linux"]["namespaces"].append({"type": "user"})
    spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": host_id, "size": 65536}]
    spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": host_id, "size": 65536}]


class Runtime:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.root = tmp_path / "state"
        self.cmd = capsa_runtime_command()
        self.ids = []
        self.made = []

    def traversable(self, prefix):
        """Put the next bundles in a 0755 folder (the fixture removes it): as with runc, a
        container root mapped to another host uid must reach its rootfs, and pytest's own tmp
        root is 0700."""
        import tempfile
        self.tmp = type(self.tmp)(tempfile.mkdtemp(prefix=prefix))
        os.chmod(self.tmp, 0o755)
        self.made.append(self.tmp)
        return self.tmp

    def __call__(self, *argv, timeout=60):
        """Run the runtime with stdout/stderr in files, not pipes: a created or detached
        container keeps its stdio open, and a pipe reader would wait for it (as with runc)."""
        self.calls = getattr(self, "calls", 0) + 1
        out = self.tmp / ("out.%d" % self.calls)
        err = self.tmp / ("err.%d" % self.calls)
        with open(out, "w") as stdout, open(err, "w") as stderr:
            status = subprocess.run(self.cmd + ["--root", str(self.root)] + [str(a) for a in argv],
                                    stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                    timeout=timeout).returncode
        return subprocess.CompletedProcess(argv, status, out.read_text(), err.read_text())

    def bundle(self, args, name="bundle", **kwargs):
        return make_bundle(self.tmp, args, name=name, **kwargs)

    def run_bundle(self, bundle, container_id):
        self.ids.append(container_id)
        return self("run", "--bundle", bundle, container_id)

    def run(self, args, mutate=None, name="bundle", container_id=None):
        bundle = self.bundle(args, name=name, mutate=mutate)
        container_id = container_id or "c-" + name
        self.ids.append(container_id)
        return self("run", "--bundle", bundle, container_id)


@pytest.fixture
def rt(tmp_path):
    before = _mounts(str(tmp_path))
    runtime = Runtime(tmp_path)
    yield runtime
    delete_all(runtime.cmd, runtime.root)
    import shutil
    for folder in runtime.made:
        shutil.rmtree(folder, ignore_errors=True)
    assert not os.path.exists(runtime.root) or os.listdir(runtime.root) == []
    for container_id in runtime.ids:
        assert _cgroup_dirs(container_id) == []
    assert _mounts(str(tmp_path)) == before


def test_run_prints_and_returns_exit_status(rt):
    result = rt.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_pid_1_in_new_pid_namespace_and_hostname(rt):
    def mutate(spec):
        spec["hostname"] = "boxy"
    result = rt.run(["sh", "-c", "echo $$; hostname; cat /proc/1/cmdline | tr '\\0' ' '"],
                    mutate=mutate)
    assert result.returncode == 0, result.stderr
    pid, hostname, cmdline = result.stdout.splitlines()
    assert (pid, hostname) == ("1", "boxy")
    assert cmdline.startswith("sh -c")


def test_a_new_network_namespace_has_loopback_up_as_with_runc(rt):
    """runc brings lo up in a network namespace it makes; --network none of podman and Docker
    count on 127.0.0.1 answering. A joined namespace is left as it is."""
    from tests.bundles import RUNC, run_runtime
    probe = ["sh", "-c", "cat /sys/class/net/lo/operstate /sys/class/net/lo/flags; "
             "nc -l -p 7070 -e echo hi & sleep 0.2; nc 127.0.0.1 7070"]
    bundle = rt.bundle(probe)
    ours = rt.run_bundle(bundle, "lo-up")
    theirs = run_runtime(RUNC, "run", "--bundle", bundle, "lo-up-runc", root=rt.tmp / "runc")
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.split() == theirs.stdout.split()
    # operstate of lo is "unknown" once up; flags carry IFF_UP (0x1)
    state, flags, answer = ours.stdout.split()
    assert int(flags, 16) & 1 and answer == "hi"


def test_lifecycle_create_start_state_delete_and_pid_file(rt, tmp_path):
    bundle = rt.bundle(["sh", "-c", "echo started > /tmp/flag; sleep 30"],
                       mutate=lambda s: s["root"].update(readonly=False))
    pid_file = tmp_path / "pid"
    created = rt("create", "--bundle", bundle, "--pid-file", pid_file, "life")
    assert created.returncode == 0, created.stderr
    state = json.loads(rt("state", "life").stdout)
    assert state["status"] == "created" and state["pid"] == int(pid_file.read_text())
    assert state["bundle"] == bundle and state["id"] == "life"
    assert rt("start", "life").returncode == 0
    assert json.loads(rt("state", "life").stdout)["status"] == "running"
    second = rt("start", "life")
    assert second.returncode != 0 and "not created" in second.stderr
    refused = rt("delete", "life")
    assert refused.returncode != 0 and "delete --force" in refused.stderr
    listed = json.loads(rt("list", "--format", "json").stdout)
    assert [c["id"] for c in listed] == ["life"]
    assert rt("kill", "life", "KILL").returncode == 0
    for _ in range(100):
        if json.loads(rt("state", "life").stdout)["status"] == "stopped":
            break
        time.sleep(0.02)
    assert json.loads(rt("state", "life").stdout)["status"] == "stopped"
    assert rt("delete", "life").returncode == 0
    assert "does not exist" in rt("state", "life").stderr


def test_delete_force_kills_a_running_container(rt):
    bundle = rt.bundle(["sleep", "100"])
    assert rt("run", "--detach", "--bundle", bundle, "busy").returncode == 0
    rt.ids.append("busy")
    pid = json.loads(rt("state", "busy").stdout)["pid"]
    assert rt("delete", "--force", "busy").returncode == 0
    assert not os.path.exists("/proc/%d/stat" % pid) or \
        open("/proc/%d/stat" % pid).read().split(") ")[1][0] == "Z"


def test_kill_all_reaches_every_process(rt):
    bundle = rt.bundle(["sh", "-c", "sleep 100 & sleep 100 & wait"],
                       mutate=lambda s: s["linux"]["namespaces"].remove({"type": "pid"}))
    assert rt("run", "-d", "--bundle", bundle, "many").returncode == 0
    rt.ids.append("many")
    assert rt("kill", "--all", "many", "9").returncode == 0
    for _ in range(200):
        if json.loads(rt("state", "many").stdout)["status"] == "stopped":
            break
        time.sleep(0.02)
    assert json.loads(rt("state", "many").stdout)["status"] == "stopped"


def test_exec_joins_namespaces_and_reports_status(rt):
    bundle = rt.bundle(["sleep", "100"], mutate=lambda s: s.update(hostname="exechost"))
    assert rt("run", "-d", "--bundle", bundle, "ex").returncode == 0
    rt.ids.append("ex")
    result = rt("exec", "ex", "sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '; exit 4")
    assert result.returncode == 4
    assert result.stdout.splitlines() == ["exechost", "sleep 100 "]
    user = rt("exec", "--user", "1000:1000", "--env", "X=y", "ex", "sh", "-c", "id -u; echo $X")
    assert user.stdout.split() == ["1000", "y"]
    missing = rt("exec", "ex", "no-such-program")
    assert missing.returncode != 0
    assert missing.stderr.strip() == ("capsa-runtime: process.args[0]: no-such-program: "
                                      "executable file not found in $PATH")


def test_user_namespace_mappings(rt):
    """The container's root is host uid 200000 and sees itself as 0."""
    rt.traversable("capsa-userns-")
    result = rt.run(["sh", "-c", "cat /proc/self/uid_map; id -u; stat -c %u /proc/1"],
                    mutate=lambda spec: add_user_namespace(spec, 200000))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0].split() == ["0", "200000", "65536"]
    assert lines[1:3] == ["0", "0"]


def test_time_namespace_offsets(rt):
    def mutate(spec):
        spec["linux"]["namespaces"].append({"type": "time"})
        spec["linux"]["timeOffsets"] = {"boottime": {"secs": 864000}}
    result = rt.run(["cat", "/proc/uptime"], mutate=mutate)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[0]) >= 864000


def test_rlimits_and_umask(rt):
    def mutate(spec):
        spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456},
                                      {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}]
        spec["process"]["user"]["umask"] = 0o027
    result = rt.run(["sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c; umask"], mutate=mutate)
    assert result.stdout.split() == ["123", "456", "0", "0027"], result.stderr


def test_rlimit_above_hard_limit_is_one_clear_line(rt):
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("host has no finite RLIMIT_NOFILE hard limit")

    def mutate(spec):
        spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": hard + 1,
                                       "hard": hard + 1}]
    result = rt.run(["true"], mutate=mutate, container_id="limited")
    if result.returncode == 0:
        pytest.skip("this host lets root raise hard limits (CAP_SYS_RESOURCE)")
    err = result.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "process.rlimits[0]" in err and "RLIMIT_NOFILE" in err
    assert str(hard + 1) in err and str(hard) in err


def test_failed_create_leaves_nothing(rt, tmp_path):
    bundle = rt.bundle(["true"], mutate=lambda s: s["mounts"].append(
        {"destination": "/x", "type": "nosuchfs", "source": "none"}))
    rt.ids.append("broken")
    result = rt("create", "--bundle", bundle, "broken")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert rt("list", "-q").stdout == ""


def test_bad_config_names_the_field(rt):
    bundle = rt.bundle(["true"], mutate=lambda s: s["process"].update(cwd="relative"))
    result = rt("create", "--bundle", bundle, "badcwd")
    assert result.returncode != 0
    assert result.stderr == "capsa-runtime: process.cwd: cwd must be an absolute path, " \
                            "not 'relative'\n"
    assert not os.path.exists(rt.root / "badcwd")


def test_hooks_run_in_order_with_state(rt, tmp_path):
    log = tmp_path / "hooks"
    log.mkdir()

    def hook(kind):
        return {"path": "/bin/sh", "args": ["sh", "-c", "cat > %s/%s.json; echo %s >> %s/order" %
                                            (log, kind, kind, log)]}

    def mutate(spec):
        spec["hooks"] = dict((kind, [hook(kind)]) for kind in
                             ("prestart", "createRuntime", "createContainer", "poststart",
                              "poststop"))
    bundle = rt.bundle(["true"], mutate=mutate)
    assert rt("create", "--bundle", bundle, "hooked").returncode == 0
    assert (log / "order").read_text().split() == ["prestart", "createRuntime", "createContainer"]
    state = json.loads((log / "createRuntime.json").read_text())
    assert state["id"] == "hooked" and state["status"] == "creating" and state["pid"] > 0
    assert state["bundle"] == bundle
    assert rt("start", "hooked").returncode == 0
    assert json.loads((log / "poststart.json").read_text())["status"] == "running"
    time.sleep(0.2)
    assert rt("delete", "hooked").returncode == 0
    assert (log / "order").read_text().split()[-2:] == ["poststart", "poststop"]
    assert json.loads((log / "poststop.json").read_text())["status"] == "stopped"


def test_failing_prestart_hook_aborts_create(rt):
    bundle = rt.bundle(["true"], mutate=lambda s: s.update(
        hooks={"prestart": [{"path": "/bin/false"}]}))
    result = rt("create", "--bundle", bundle, "hookfail")
    assert result.returncode != 0 and "hooks.prestart[0]" in result.stderr
    assert rt("list", "-q").stdout == ""


def test_console_socket_receives_pty_master(rt, tmp_path):
    path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    bundle = rt.bundle(["sh", "-c", "tty; stty size"], terminal=True,
                       mutate=lambda s: s["process"].update(consoleSize={"height": 33,
                                                                         "width": 101}))
    proc = subprocess.Popen(rt.cmd + ["--root", str(rt.root), "create", "--bundle", bundle,
                                      "--console-socket", path, "tty1"])
    rt.ids.append("tty1")
    conn, _ = server.accept()
    fds = array.array("i")
    msg, ancdata, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(4))
    for level, kind, data in ancdata:
        fds.frombytes(data[:4])
    assert proc.wait(timeout=30) == 0
    master = fds[0]
    assert rt("start", "tty1").returncode == 0
    output = b""
    deadline = time.time() + 10
    while time.time() < deadline and b"101" not in output:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        output += chunk
    os.close(master)
    lines = output.decode().split()
    assert lines[0].startswith("/dev/pts/") and lines[1:3] == ["33", "101"]


def test_preserve_fds_passes_extra_files(rt, tmp_path):
    # after `exec`, ls holds exactly what the runtime passed plus its own directory fd (4)
    bundle = rt.bundle(["sh", "-c", "cat <&3; exec ls -1 /proc/self/fd"])
    read_end, write_end = os.pipe()
    os.write(write_end, b"through fd 3\n")
    os.close(write_end)
    command = rt.cmd + ["--root", str(rt.root), "run", "--preserve-fds", "1", "--bundle", bundle,
                        "pfd"]
    # sh moves the pipe to fd 3, as conmon does for podman run --preserve-fds
    result = subprocess.run(["sh", "-c", 'exec "$@" 3<&0 </dev/null', "sh"] + command,
                            stdin=read_end, capture_output=True, text=True)
    os.close(read_end)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "through fd 3"
    assert sorted(result.stdout.split()[3:], key=int) == ["0", "1", "2", "3", "4"]


def test_new_session_keyring_unless_asked_not_to(rt):
    def unmask(spec):
        spec["linux"]["maskedPaths"] = [p for p in spec["linux"]["maskedPaths"]
                                        if p != "/proc/keys"]
    fresh = rt.run(["cat", "/proc/keys"], mutate=unmask, container_id="keys1")
    assert fresh.returncode == 0, fresh.stderr
    assert " keys1: " in fresh.stdout
    bundle = rt.bundle(["cat", "/proc/keys"], name="b2", mutate=unmask)
    shared = rt("run", "--no-new-keyring", "--bundle", bundle, "keys2")
    assert shared.returncode == 0, shared.stderr
    assert " keys2: " not in shared.stdout


def test_pidfd_socket_receives_the_init(rt, tmp_path):
    path = str(tmp_path / "pidfd.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    bundle = rt.bundle(["sleep", "30"])
    proc = subprocess.Popen(rt.cmd + ["--root", str(rt.root), "create", "--bundle", bundle,
                                      "--pidfd-socket", path, "pfd2"], stdout=subprocess.DEVNULL)
    rt.ids.append("pfd2")
    conn, _ = server.accept()
    fds = array.array("i")
    msg, ancdata, _, _ = conn.recvmsg(16, socket.CMSG_SPACE(4))
    for level, kind, data in ancdata:
        fds.frombytes(data[:4])
    assert proc.wait(timeout=30) == 0
    pid = json.loads(rt("state", "pfd2").stdout)["pid"]
    with open("/proc/self/fdinfo/%d" % fds[0]) as info:
        assert "Pid:\t%d" % pid in info.read()
    os.close(fds[0])


def test_foreground_terminal_without_console_socket(rt):
    """`run` in a terminal relays a pty of the container (needs script(1)): the container sees a
    tty of its own devpts, the caller's window size, and the exit status comes back.

    Known flake, under investigation: about one run in twenty inside a long pytest session (never
    reproduced alone, 100+ tries under load), `stty size` in the container fails with "standard
    input: No child processes". One retry keeps CI meaningful; every attempt's output is kept in
    the assertion message for the next look."""
    import shlex
    import shutil
    if not shutil.which("script"):
        pytest.skip("script(1) from util-linux is not installed")
    bundle = rt.bundle(["sh", "-c", "tty; stty size; readlink /proc/self/fd/1; exit 5"],
                       terminal=True)
    attempts = []
    for attempt in range(2):
        name = "ttyrun%d" % attempt
        rt.ids.append(name)
        command = shlex.join(rt.cmd + ["--root", str(rt.root), "run", "--bundle", bundle, name])
        result = subprocess.run(["script", "-qec", "stty rows 40 cols 132; " + command,
                                 "/dev/null"], stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=60)
        lines = result.stdout.replace("\r", "").split()
        attempts.append(repr(result.stdout))
        if result.returncode == 5 and lines[1:3] == ["40", "132"]:
            break
    assert result.returncode == 5, attempts
    assert lines[0].startswith("/dev/pts/") and lines[1:3] == ["40", "132"], attempts


def test_process_starts_with_default_signal_dispositions(rt):
    """Python ignores SIGPIPE/SIGXFSZ; an ignored signal survives execve, so the runtime must
    reset them: the container's process shows no ignored and no blocked signal."""
    result = rt.run(["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"], container_id="sigs")
    assert result.returncode == 0, result.stderr
    values = dict(line.split(":\t") for line in result.stdout.splitlines())
    assert values == {"SigBlk": "0000000000000000", "SigIgn": "0000000000000000"}
    bundle = rt.bundle(["sh", "-c", "echo x; sleep 100"], name="b2")
    assert rt("run", "-d", "--bundle", bundle, "sigs2").returncode == 0
    rt.ids.append("sigs2")
    execd = rt("exec", "sigs2", "grep", "-E", "^SigIgn", "/proc/self/status")
    assert execd.stdout.split() == ["SigIgn:", "0000000000000000"], execd.stderr


def test_tiny_memory_limit_starts_or_fails_in_one_line(rt):
    """The runtime charges almost nothing to the container (mounts happen before the cgroup
    join): busybox starts under a 2 MiB limit even from a fresh copy whose page cache is
    charged to it (runc needs 3 MiB here with a warm cache); far below that, the OOM kill
    during setup is one clear line and nothing is left behind."""
    def limit(kib):
        return lambda spec: spec["linux"].setdefault("resources", {}).update(
            memory={"limit": kib * 1024})
    small = rt.run(["echo", "ok"], mutate=limit(2048), name="small", container_id="mem2m")
    assert (small.returncode, small.stdout) == (0, "ok\n"), small.stderr
    tiny = rt.run(["echo", "ok"], mutate=limit(64), name="tiny", container_id="mem64")
    if tiny.returncode != 0:
        assert tiny.stderr.count("\n") == 1 and "Traceback" not in tiny.stderr
        assert "died during setup" in tiny.stderr
    assert rt("list", "-q").stdout == ""


def test_exec_into_a_sub_cgroup(rt):
    bundle = rt.bundle(["sleep", "100"])
    assert rt("run", "-d", "--bundle", bundle, "subcg").returncode == 0
    rt.ids.append("subcg")
    record = json.loads((rt.root / "subcg" / "state.json").read_text())
    pids_dir = record["cgroup"]["paths"]["pids"]
    os.mkdir(os.path.join(pids_dir, "sub"))
    try:
        result = rt("exec", "--cgroup", "pids:sub", "subcg", "cat", "/proc/self/cgroup")
        assert result.returncode == 0, result.stderr
        line = [l for l in result.stdout.splitlines() if ":pids:" in l][0]
        assert line.endswith("/sub")
        bad = rt("exec", "--cgroup", "pids:../../escape", "subcg", "true")
        assert bad.returncode != 0 and "below the container's cgroup" in bad.stderr
        missing = rt("exec", "--cgroup", "memory:nope", "subcg", "true")
        assert missing.returncode != 0 and "does not exist" in missing.stderr
    finally:
        rt("delete", "--force", "subcg")
        if os.path.isdir(os.path.join(pids_dir, "sub")):
            os.rmdir(os.path.join(pids_dir, "sub"))


def test_missing_cwd_is_created_inside_the_root(rt, tmp_path):
    """As runc: a cwd missing from the image is created (inside the root, never through a
    symlink out of it) before the process starts."""
    outside = tmp_path / "outside"
    outside.mkdir()

    def mutate(spec):
        spec["root"]["readonly"] = False
        spec["process"]["cwd"] = "/work/dir"
    bundle = rt.bundle(["pwd"], mutate=mutate)
    result = rt.run_bundle(bundle, "cwd1")
    assert (result.returncode, result.stdout) == (0, "/work/dir\n"), result.stderr
    bundle2 = rt.bundle(["pwd"], name="b2", mutate=mutate)
    os.symlink(str(outside), os.path.join(bundle2, "rootfs", "work"))
    rt.run_bundle(bundle2, "cwd2")
    assert os.listdir(outside) == []


def test_host_init_annotation_runs_a_host_program(rt, tmp_path):
    """minimal_containers' init=@/path: the program is opened on the host before pivot_root and
    run with execveat; it never appears in the rootfs."""
    import shutil
    host_program = tmp_path / "host-echo"
    shutil.copy("/bin/busybox", host_program)

    def mutate(spec):
        spec["annotations"] = {"org.capsa.init.host-path": str(host_program)}
        spec["process"]["args"] = ["echo", "from the host binary"]
    result = rt.run(["true"], mutate=mutate, container_id="hostinit")
    assert (result.returncode, result.stdout) == (0, "from the host binary\n"), result.stderr
    bad = rt.run(["true"], name="b2", container_id="hostinit2", mutate=lambda s: s.update(
        annotations={"org.capsa.init.host-path": "relative"}))
    assert bad.returncode != 0 and "annotations.org.capsa.init.host-path" in bad.stderr


def test_sysctl_applied_in_the_container_namespaces_only(rt):
    """Namespaced sysctls reach the container's own network and ipc namespaces (with the
    default read-only /proc/sys), and the host's values stay as they were."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
        host_range = handle.read()

    def mutate(spec):
        spec["linux"]["sysctl"] = {"net.ipv4.ip_local_port_range": "40000 40100",
                                   "kernel.shmmni": "1234"}
    result = rt.run(["sh", "-c", "cat /proc/sys/net/ipv4/ip_local_port_range "
                                 "/proc/sys/kernel/shmmni"], mutate=mutate, container_id="sysctl")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["40000", "40100", "1234"]
    with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
        assert handle.read() == host_range


def test_debug_writes_a_debug_line_to_the_log(rt, tmp_path):
    log = tmp_path / "log.json"
    bundle = rt.bundle(["true"])
    rt.ids.append("debug-log")
    # global flags after --root are still global: runc takes them anywhere before the command
    result = rt("--debug", "--log", log, "--log-format", "json", "run", "--bundle", bundle,
                "debug-log")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(line["level"] == "debug" and "parked on exec.fifo" in line["msg"]
               for line in lines)


def test_network_sysctls_in_the_hosts_namespace_joined_by_path_are_refused(rt):
    """A joined network namespace may take net.* sysctls (rootless podman's slirp4netns one),
    but not when it is the host's own: that would retune the host."""
    def mutate(spec):
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"]
                                       if ns["type"] != "network"]
        spec["linux"]["namespaces"].append({"type": "network",
                                            "path": "/proc/%d/ns/net" % os.getpid()})
        spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    with open("/proc/sys/net/ipv4/ip_forward") as handle:
        before = handle.read()
    result = rt.run(["true"], mutate=mutate, name="hostnet")
    assert result.returncode != 0
    assert "linux.sysctl.net.ipv4.ip_forward" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
    with open("/proc/sys/net/ipv4/ip_forward") as handle:
        assert handle.read() == before
