"""Declared containers written the way minimal_containers' README describes, run for real:
start (detached, -d, -s under a pty), kill, list -r, start-all with three containers, `@` init,
id_map_start with `u`, `t` uptime reset, mount warning vs mount_ro abort, malformed configs.
Needs root."""
import os
import pty
import select
import signal
import subprocess
import time

import pytest

from tests.integration.test_engine_support import REPO, Engine, make_fixtures, runtimes_under_test

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, cgroups)")

base_rootfs, rootfs, _eng = make_fixtures()


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "containers"
    for sub in ("configs", "logs", "pids"):
        (path / sub).mkdir(parents=True)
    return path


@pytest.fixture(params=runtimes_under_test())
def eng(request, tmp_path, home):
    engine = Engine(tmp_path, request.param, home=str(home))
    yield engine
    for name in os.listdir(home / "configs"):
        engine.run("kill", name)
    engine.cleanup()


def declare(home, name, text):
    (home / "configs" / name).write_text(text)


def log_of(home, name):
    try:
        return (home / "logs" / name).read_text()
    except FileNotFoundError:
        return ""


def running(eng):
    lines = eng.out("list", "-r").splitlines()
    assert lines[0].split() == ["NAME", "RUNNING"]
    return [line.split()[0] for line in lines[1:]]


def test_start_detached_list_kill(eng, home, rootfs):
    declare(home, "web", "# a test container\nroot=%s\ninit=/bin/sh\nnamespaces=phi\n"
                         "command=-c 'echo hello from $(hostname); exec sleep 60'\n"
                         "max_processes=30\nmax_physical_memory=64M\n" % rootfs)
    eng.out("start", "web")
    eng.wait_for(lambda: "hello from web" in log_of(home, "web"), what="web's output")
    pid = int((home / "pids" / "web").read_text())
    assert os.path.exists("/proc/%d" % pid)
    assert running(eng) == ["web"]
    listing = eng.out("list")
    assert listing.splitlines()[1] == "web".ljust(32) + "Yes"
    with open("/proc/%d/cgroup" % pid) as f:
        pids_cg = [l.split(":")[2].strip() for l in f if ":pids:" in l][0]
    assert open("/sys/fs/cgroup/pids%s/pids.max" % pids_cg).read().strip() == "30"
    eng.out("kill", "web")
    eng.wait_for(lambda: not os.path.exists("/proc/%d" % pid) or
                 open("/proc/%d/stat" % pid).read().split(") ")[1][0] == "Z", what="kill")
    eng.wait_for(lambda: running(eng) == [], what="list -r empty")
    assert not (home / "pids" / "web").exists()
    assert eng.out("list").splitlines()[1] == "web".ljust(32) + "No"


def test_foreground_d_and_restart_of_running_instance(eng, home, rootfs):
    declare(home, "fg", "root=%s\ninit=/bin/sh\nnamespaces=p\ncommand=-c 'echo once; exit 3'\n"
            % rootfs)
    # -d stays in the foreground until the container ends; output goes to logs/NAME
    proc = eng.run("start", "-d", "fg", check=3)
    assert proc.stdout == "" and log_of(home, "fg") == "once\n"
    declare(home, "again", "root=%s\ninit=/bin/sh\nnamespaces=p\ncommand=-c 'sleep 60'\n" % rootfs)
    eng.out("start", "again")
    first = int((home / "pids" / "again").read_text())
    eng.out("start", "again")
    second = int((home / "pids" / "again").read_text())
    assert first != second
    eng.wait_for(lambda: not os.path.exists("/proc/%d/cmdline" % first) or
                 not open("/proc/%d/cmdline" % first).read(), what="old instance killed")
    assert running(eng) == ["again"]


def test_host_init_with_at(eng, home, rootfs, tmp_path):
    script = tmp_path / "host-init.sh"
    script.write_text("#!/bin/sh\necho init from the host, inside $(cat /etc/hostname)\n")
    script.chmod(0o755)
    declare(home, "at", "root=%s\ninit=@%s\nnamespaces=ph\n" % (rootfs, script))
    eng.run("start", "-d", "at", check=0)
    assert log_of(home, "at") == "init from the host, inside capsa\n"
    # the host program never lands in the rootfs
    assert not os.path.exists(os.path.join(rootfs, "dev", ".capsa-init"))


@pytest.fixture
def open_rootfs(rootfs):
    """A copy on a path every uid can traverse (pytest's tmp folders are 0700 for root only)."""
    import shutil
    import tempfile
    folder = tempfile.mkdtemp(prefix="capsa-declared-")
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "rootfs")
    shutil.copytree(rootfs, path, symlinks=True)
    yield path
    shutil.rmtree(folder)


def test_user_namespace_with_id_map_start(eng, home, open_rootfs):
    start = 200000
    rootfs = open_rootfs
    subprocess.run(["chown", "-R", "-h", "%d:%d" % (start, start), rootfs], check=True)
    declare(home, "userns", "root=%s\ninit=/bin/sh\nnamespaces=up\nid_map_start=%d\n"
            "command=-c 'id -u; cat /proc/self/uid_map; sleep 60'\n" % (rootfs, start))
    eng.out("start", "userns")
    eng.wait_for(lambda: "sleep" not in log_of(home, "userns") and
                 len(log_of(home, "userns").splitlines()) >= 2, what="userns output")
    lines = log_of(home, "userns").split()
    assert lines[0] == "0" and lines[1:4] == ["0", str(start), "65536"]
    pid = int((home / "pids" / "userns").read_text())
    with open("/proc/%d/status" % pid) as f:
        uid_line = [l for l in f if l.startswith("Uid:")][0]
    assert uid_line.split()[1] == str(start)


def test_time_namespace_resets_uptime(eng, home, rootfs):
    with open("/proc/uptime") as f:
        host_uptime = float(f.read().split()[0])
    if host_uptime < 30:
        pytest.skip("host uptime too short to tell a reset apart")
    declare(home, "tns", "root=%s\ninit=/bin/cat\nnamespaces=pt\ncommand=/proc/uptime\n" % rootfs)
    eng.run("start", "-d", "tns", check=0)
    inside = float(log_of(home, "tns").split()[0])
    assert inside < 10 < host_uptime


def test_mount_warns_and_goes_on_mount_ro_fails(eng, home, rootfs, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "f").write_text("shared file\n")
    declare(home, "mw", "root=%s\ninit=/bin/sh\nnamespaces=p\nmount=/does/not/exist:/gone\n"
            "mount_ro=%s:/ro\ncommand=-c 'cat /ro/f; echo x > /ro/g || echo read-only'\n"
            % (rootfs, shared))
    proc = eng.run("start", "-d", "mw", check=0)
    assert "/does/not/exist" in proc.stderr and "going on" in proc.stderr
    log = log_of(home, "mw")
    assert "going on" in log and "shared file" in log and "read-only" in log
    assert not (shared / "g").exists()
    declare(home, "mf", "root=%s\ninit=/bin/true\nnamespaces=p\nmount_ro=/does/not/exist:/ro\n"
            % rootfs)
    proc = eng.run("start", "-d", "mf", check=1)
    assert "line 4" in proc.stderr and "/does/not/exist" in proc.stderr
    assert "line 4" in log_of(home, "mf")
    assert eng.out("ps", "-aq") == ""


@pytest.mark.parametrize("text,expect", [
    ("root=/r\r\ninit=/i\nnamespaces=p\n", "configs/bad line 1: Windows line break"),
    ("root=/r\ninit=/i\nnamespaces=p\nflavour=x\n", "configs/bad line 4: unknown key 'flavour'"),
    ("root=/r\ninit=/i\ninit=/j\nnamespaces=p\n", "configs/bad line 3: duplicate key 'init'"),
    ("root=/r\ninit=/i\n", "missing key namespaces"),
    ("root=/r\ninit=/i\nnamespaces=p\n" + "#" * 5000 + "\n", "too long"),
])
def test_malformed_configs_through_the_cli(eng, home, text, expect):
    declare(home, "bad", text)
    proc = eng.run("start", "bad", check=1)
    assert expect in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert expect in log_of(home, "bad")
    assert eng.out("ps", "-aq") == ""


def test_start_shell_under_a_pty(eng, home, rootfs):
    declare(home, "sh1", "root=%s\ninit=/sbin/init-not-used\nnamespaces=ph\n" % rootfs)
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=REPO, SHELL="/bin/sh", TERM="dumb")
    proc = subprocess.Popen(eng.argv("start", "-s", "sh1"), stdin=slave, stdout=slave,
                            stderr=slave, cwd=REPO, env=env, start_new_session=True)
    os.close(slave)
    out = b""
    sent = False
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        if not sent and b"# " in out:
            # type only after the prompt: ash asks the terminal for the cursor position first
            os.write(master, b"echo $((6*7)) $(hostname) $(tty); exit 5\n")
            sent = True
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                out += os.read(master, 4096)
            except OSError:
                break
    proc.wait(timeout=20)
    os.close(master)
    assert b"42 sh1 /dev/pts/0" in out
    assert proc.returncode == 5


def test_start_all_three_then_sigterm(eng, home, rootfs):
    for name in ("a1", "a2", "a3"):
        declare(home, name, "root=%s\ninit=/bin/sh\nnamespaces=ph\n"
                            "command=-c 'echo %s up; exec sleep 60'\n" % (rootfs, name))
    sup = eng.popen("start-all", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    eng.wait_for(lambda: running(eng) == ["a1", "a2", "a3"], timeout=30, what="three running")
    for name in ("a1", "a2", "a3"):
        eng.wait_for(lambda: name + " up" in log_of(home, name), what=name + " output")
    eng.out("kill", "a2")
    eng.wait_for(lambda: running(eng) == ["a1", "a3"], what="a2 killed")
    assert sup.poll() is None
    sup.send_signal(signal.SIGTERM)
    out, err = sup.communicate(timeout=30)
    assert sorted(out.split()) == ["a1", "a2", "a3"], err
    assert running(eng) == []


def test_created_containers_are_listed_and_started_by_start_all(eng, home, rootfs):
    eng.out("create", "--name", "made", "--rootfs", rootfs, "sh", "-c", "echo made ran")
    assert eng.out("list").splitlines()[1] == "made".ljust(32) + "No"
    sup = eng.popen("start-all", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = sup.communicate(timeout=30)
    assert out.split() == ["made"], err
    assert eng.out("logs", "made") == "made ran\n"


def test_start_all_restarts_per_policy(eng, home, rootfs):
    declare(home, "flaky", "root=%s\ninit=/bin/sh\nnamespaces=p\nrestart=on-failure:2\n"
                           "command=-c 'echo run; exit 1'\n" % rootfs)
    sup = eng.popen("start-all", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = sup.communicate(timeout=30)
    assert out.split() == ["flaky"], err
    assert log_of(home, "flaky") == "run\nrun\nrun\n"


def test_kill_reaches_every_process_without_a_pid_namespace(eng, home, rootfs):
    declare(home, "nopid", "root=%s\ninit=/bin/sh\nnamespaces=none\n"
                           "command=-c 'sleep 61 & echo $! > /tmp/child; exec sleep 62'\n" % rootfs)
    eng.out("start", "nopid")
    eng.wait_for(lambda: (home / "pids" / "nopid").exists(), what="pid file")
    init = int((home / "pids" / "nopid").read_text())

    def child():
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open("/proc/%s/cmdline" % pid, "rb") as f:
                        if f.read() == b"sleep\x0061\x00":
                            return int(pid)
                except OSError:
                    pass
        return None
    other = eng.wait_for(child, what="the background child")
    eng.out("kill", "nopid")

    def gone(pid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().split(") ")[1][0] == "Z"
        except OSError:
            return True
    eng.wait_for(lambda: gone(init) and gone(other), what="both processes killed")


def test_capsa_keys_image_command_env_volume(eng, home, tmp_path):
    shared = tmp_path / "vol"
    shared.mkdir()
    declare(home, "img", "image=busybox\nnetwork=none\nenv=GREETING=hello\n"
                         "volume=%s:/shared\n"
                         "command=sh -c 'echo $GREETING from $(hostname) > /shared/out; "
                         "tail -n +3 /proc/net/dev | cut -d: -f1'\n" % shared)
    eng.run("start", "-d", "img", check=0)
    assert (shared / "out").read_text() == "hello from img\n"
    assert log_of(home, "img").split() == ["lo"]
    assert eng.out("ps", "-aq") == ""
