"""`capsa` run by an unprivileged user: the engine works as root of a user namespace of its own
(its /etc/subuid range mapped through newuidmap, or its own id alone), keeps its store under
~/.local/share/capsa, runs containers in the foreground, and refuses in one line what a rootless
engine cannot do yet. Nothing is left in the store or mounted on the host afterwards.
"""
import os
import socket
import subprocess
import threading
import time

import pytest

from tests.rootless_user import is_gone, make_user, run_as, skip_without_userns

pytestmark = skip_without_userns()
CAPSA = os.environ.get("CAPSA_ENGINE", "/usr/local/bin/capsa")


@pytest.fixture(scope="module")
def user():
    yield from make_user()


@pytest.fixture(scope="module")
def system_user():
    """No /etc/subuid range: the engine maps the user's own id only."""
    yield from make_user("capsa-rootless-sys", system=True)


def _store(user):
    return os.path.join(user["work"], ".local", "share", "capsa")


def _host_mounts_under(path):
    with open("/proc/self/mountinfo") as handle:
        return [line for line in handle if path in line]


def _chown_tree(top, user):
    for folder, dirs, files in os.walk(top):
        for item in [folder] + [os.path.join(folder, f) for f in files]:
            os.lchown(item, user["uid"], user["gid"])


def test_rootless_run_in_the_foreground(user):
    probe = "id -u; cat /proc/self/uid_map; stat -c '%u %g' /bin/busybox /dev/null"
    result = run_as(user, [CAPSA, "run", "--rm", "busybox", "sh", "-c", probe])
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[0] == "0"
    # root inside is the caller; ids 1… come from its subordinate range
    assert words[1:4] == ["0", str(user["uid"]), "1"]
    assert words[4] == "1" and int(words[5]) >= 65536
    images = run_as(user, [CAPSA, "images"])
    assert "busybox" in images.stdout
    assert os.listdir(os.path.join(_store(user), "containers")) == []
    assert _host_mounts_under(user["work"]) == []


def test_rootless_layered_image_with_whiteouts(user, tmp_path):
    """overlayfs in a user namespace keeps its opaque marks as user.overlay.* (userxattr)."""
    from tests.integration.test_images import layer_tars
    from tests.integration.test_images_support import build_layout
    top = os.path.join(user["work"], "layers")
    layout = build_layout(top, layer_tars(str(tmp_path)), name="two")
    _chown_tree(top, user)
    script = "cd /data && echo *; cd old && echo *; test -e /bin/ls || echo no-ls"
    result = run_as(user, [CAPSA, "run", "--rm", "oci:%s:two" % layout, "sh", "-c", script])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "new old\nc\nno-ls\n"
    assert _host_mounts_under(user["work"]) == []


@pytest.mark.parametrize("argv, field", [
    (["run", "--rm", "--network", "none", "-p", "8080:80", "busybox", "true"], "--publish"),
    (["run", "--rm", "--network", "bridge", "busybox", "true"], "--network"),
    (["run", "--rm", "--memory", "16m", "busybox", "true"], "linux.resources"),
])
def test_what_rootless_cannot_do_is_one_clear_line(user, argv, field):
    result = run_as(user, [CAPSA] + argv)
    assert result.returncode in (125, 126), result.stderr
    assert result.stderr.count("\n") == 1 and field in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(os.path.join(_store(user), "containers")) == []


def test_rootless_detached_container_lifecycle(user):
    """Every command joins the user's one rootless namespace, kept by a pause process, so a
    detached container's mounts and namespaces stay reachable from later commands."""
    def capsa(*argv):
        result = run_as(user, [CAPSA] + list(argv))
        assert result.returncode == 0, "%s: %s" % (argv, result.stderr)
        return result.stdout
    assert capsa("run", "-d", "--name", "web", "busybox", "sh", "-c",
                 "echo started; exec sleep 300").strip()
    try:
        listed = capsa("ps", "--format", "{{.Names}} {{.Status}}")
        assert listed.startswith("web Up"), listed
        assert capsa("exec", "web", "sh", "-c", "id -u; cat /proc/1/cmdline") == \
            "0\nsleep\x00300\x00"
        assert "started" in capsa("logs", "web")
        assert capsa("create", "--name", "later", "busybox", "echo", "from create").strip()
        assert capsa("start", "-a", "later") == "from create\n"
        capsa("rm", "later")
    finally:
        capsa("rm", "-f", "web")
    assert os.listdir(os.path.join(_store(user), "containers")) == []
    with open(os.path.join(_store(user), "pause.pid")) as handle:
        pause = int(handle.read().split()[0])
    # the pause process holds the namespace: one per user, reused by every command
    with open("/proc/%d/status" % pause) as handle:
        assert "Uid:\t%d" % user["uid"] in handle.read()


def test_rootless_without_subordinate_ids_maps_the_own_id_only(system_user):
    result = run_as(system_user, [CAPSA, "run", "--rm", "busybox", "sh", "-c",
                                  "id -u; cat /proc/self/uid_map /proc/self/setgroups"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0", str(system_user["uid"]), "1", "deny"]


def test_root_keeps_the_system_store(tmp_path):
    """The rootless defaults apply to unprivileged callers only: root's capsa, whatever its
    HOME, neither makes a store there nor starts a pause process."""
    env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"))
    listed = subprocess.run([CAPSA, "images"], capture_output=True, text=True, timeout=60,
                            env=env)
    assert listed.returncode == 0, listed.stderr
    assert "busybox" in listed.stdout          # the system store's default image
    assert os.listdir(tmp_path) == []


def _tun_missing():
    try:
        mode = os.stat("/dev/net/tun").st_mode
    except OSError:
        return "no /dev/net/tun on this host (slirp4netns needs a tap device)"
    if not mode & 0o006 == 0o006:
        return "/dev/net/tun is not open to unprivileged users (Debian's udev rule makes it 0666)"
    if not os.access("/usr/bin/slirp4netns", os.X_OK):
        return "slirp4netns is not installed"
    return None


def _host_address():
    """An address of the host that is not loopback (slirp4netns refuses the host's lo)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            return probe.getsockname()[0]
        except OSError:
            return None


@pytest.mark.skipif(_tun_missing() is not None, reason=_tun_missing() or "")
def test_rootless_network_is_slirp4netns_out_and_in(user):
    address = _host_address()
    if not address or address.startswith("127."):
        pytest.skip("the host has no non-loopback IPv4 address to be reached at")
    server = socket.socket()
    server.bind((address, 0))
    server.listen(1)
    port = server.getsockname()[1]

    def answer():
        conn, _ = server.accept()
        conn.recv(1024)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nfrom-the-host")
        conn.close()
    threading.Thread(target=answer, daemon=True).start()
    try:
        out = run_as(user, [CAPSA, "run", "--rm", "busybox", "sh", "-c",
                            "ip -4 -o addr show tap0 | cut -d' ' -f7; cat /etc/resolv.conf; "
                            "wget -q -O- http://%s:%d/" % (address, port)])
    finally:
        server.close()
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["10.0.2.100/24", "nameserver", "10.0.2.3", "from-the-host"]
    # -p publishes through slirp4netns' API: the host reaches the container's port
    started = run_as(user, [CAPSA, "run", "-d", "--name", "pub", "-p", "18181:80", "busybox",
                            "httpd", "-f", "-p", "80", "-h", "/etc"])
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", 18181), timeout=2) as conn:
                    conn.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
                    reply = conn.recv(4096)
                if reply:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the published port never answered"
            time.sleep(0.1)
        assert b"200 OK" in reply
    finally:
        removed = run_as(user, [CAPSA, "rm", "-f", "pub"])
    assert removed.returncode == 0, removed.stderr
    slirp = os.path.join(_store(user), "network", "slirp")
    assert os.listdir(slirp) == []
    alive = subprocess.run(["pgrep", "-U", str(user["uid"]), "-x", "slirp4netns"],
                           capture_output=True, text=True).stdout.split()
    assert [pid for pid in alive if not is_gone(int(pid))] == []


def test_rootless_declared_container_lives_under_the_users_home(user):
    """minimal_containers-style config files: ~/containers for a user, /containers for root."""
    configs = os.path.join(user["work"], "containers", "configs")
    os.makedirs(configs)
    with open(os.path.join(configs, "decl"), "w") as handle:
        handle.write('image=busybox\ncommand=sh -c "echo declared-hi; sleep 30"\n')
    _chown_tree(os.path.join(user["work"], "containers"), user)
    started = run_as(user, [CAPSA, "start", "decl"])
    assert started.returncode == 0, started.stderr
    log = os.path.join(user["work"], "containers", "logs", "decl")
    deadline = time.monotonic() + 10
    while not (os.path.exists(log) and "declared-hi" in open(log).read()):
        assert time.monotonic() < deadline, "the declared container never wrote its log"
        time.sleep(0.1)
    assert "decl" in run_as(user, [CAPSA, "list", "-r"]).stdout
    stopped = run_as(user, [CAPSA, "kill", "decl"])
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 10
    while "decl" in run_as(user, [CAPSA, "list", "-r"]).stdout:
        assert time.monotonic() < deadline, "the declared container did not stop"
        time.sleep(0.2)
