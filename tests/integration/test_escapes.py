"""The escape regression suite: one test per class of runc's published container escapes, each
set up the way a hostile image or bundle would, run through the real capsa-runtime command line,
asserting that the attack fails and the host is untouched.

Each docstring names the CVE class and the protection it checks; "shown by hand" records that
the test failed when that protection was removed from the code.
"""
import contextlib
import hashlib
import json
import os
import stat
import subprocess

import pytest

from tests.integration.test_runtime import add_user_namespace
from tests.integration.test_runtime import rt  # noqa: F401  (the fixture: private root, cleanup)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, mounts)")


def _digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _interpreter():
    """The interpreter binary capsa-runtime runs on (its launcher's #! line)."""
    from tests.bundles import capsa_runtime_command
    command = capsa_runtime_command()
    with open(command[0], "rb") as handle:
        first = handle.readline()
    if first.startswith(b"#!"):
        return os.path.realpath(first[2:].split()[0].decode())
    return os.path.realpath(command[0])


def _writable(spec):
    spec["root"]["readonly"] = False


@contextlib.contextmanager
def _host_value_kept(path):
    """Assert that the host-global procfs value at `path` is unchanged by the block; if an
    attack changed it, put it back whatever happens."""
    with open(path) as handle:
        before = handle.read()
    try:
        yield
        with open(path) as handle:
            assert handle.read() == before, "the container changed the host's " + path
    finally:
        with open(path) as handle:
            changed = handle.read() != before
        if changed:
            with open(path, "w") as handle:
                handle.write(before)


def _swap_proc_hook(rootfs):
    """A createRuntime hook that swaps the mounted /proc for a symlink to the image's /fakeproc,
    standing in for a second container racing on a shared volume (runs while the init waits
    between its mounts and pivot_root; touches only files inside the rootfs)."""
    swap = "mv %s/proc %s/proc.real && ln -s /fakeproc %s/proc" % (rootfs, rootfs, rootfs)
    return {"path": "/bin/sh", "args": ["sh", "-c", swap]}


@pytest.mark.parametrize("how", ["args", "shebang", "shebang-through-symlink"])
def test_cve_2019_5736_runtime_binary_not_reachable(rt, how):
    """CVE-2019-5736: the container makes the runtime execute its own binary inside the
    container (args /proc/self/exe, or a #! line pointing at it, directly or through a symlink)
    and then writes to it through /proc/self/exe. capsa refuses any program whose interpreter
    chain reaches a /proc magic link (check_interpreters, openat2 RESOLVE_NO_MAGICLINKS), so the
    host interpreter never runs in the container and stays byte-identical. Shown by hand: with
    check_interpreters removed, the "args" case starts the host's python3 inside the container."""
    interpreter = _interpreter()
    before = _digest(interpreter)
    attack = "/proc/self/exe"

    def mutate(spec):
        _writable(spec)
        if how == "args":
            spec["process"]["args"] = [attack, "-c", "open('/proc/self/exe', 'r+b')"]
        else:
            spec["process"]["args"] = ["/evil"]
    bundle = rt.bundle(["true"], mutate=mutate)
    rootfs = os.path.join(bundle, "rootfs")
    if how == "shebang-through-symlink":
        os.symlink("/proc/self/exe", os.path.join(rootfs, "bin", "innocent"))
        attack = "/bin/innocent"
    if how != "args":
        with open(os.path.join(rootfs, "evil"), "w") as handle:
            handle.write("#!%s\nopen('/proc/self/exe', 'r+b').write(b'pwned')\n" % attack)
        os.chmod(os.path.join(rootfs, "evil"), 0o755)
    rt.ids.append("exe")
    result = rt("run", "--bundle", bundle, "exe")
    assert result.returncode != 0
    assert "magic link" in result.stderr and "Traceback" not in result.stderr
    assert _digest(interpreter) == before


def test_cve_2019_5736_init_not_dumpable_during_setup(rt):
    """CVE-2019-5736 (second path): while the init waits inside a user-namespaced container, a
    process that is root of that namespace (all capabilities there) must not reach the init's
    /proc/<pid>/exe, which is the host interpreter: the init is non-dumpable until execve, so
    the kernel asks for CAP_SYS_PTRACE in the initial namespace. Two things make it so: the
    child's explicit PR_SET_DUMPABLE 0, and the kernel resetting dumpability when the child
    becomes root of the new user namespace (setresuid). Shown by hand: with the child made
    dumpable again after that setresuid, readlink succeeds and this test fails."""
    import ctypes
    rt.traversable("capsa-dumpable-")
    bundle = rt.bundle(["true"], mutate=lambda spec: add_user_namespace(spec, 210000))
    rt.ids.append("dump")
    created = rt("create", "--bundle", bundle, "dump")
    assert created.returncode == 0, created.stderr
    pid = json.loads(rt("state", "dump").stdout)["pid"]
    child = os.fork()
    if child == 0:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open("/proc/%d/ns/user" % pid, os.O_RDONLY)
            if libc.setns(fd, 0x10000000) != 0:
                os._exit(3)
            try:
                os.readlink("/proc/%d/exe" % pid)
                os._exit(1)
            except PermissionError:
                os._exit(0)
        except BaseException:
            os._exit(2)
    _, code = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(code) == 0


@pytest.mark.parametrize("target", ["/proc", "/sys"])
def test_proc_or_sys_replaced_by_symlink(rt, tmp_path, target):
    """CVE-2019-16884 / CVE-2019-19921 / CVE-2023-27561 / CVE-2025-52881 class: the image makes
    /proc (or /sys) a symlink to a folder it controls, so that the runtime's later procfs writes
    (labels, sysctls, oom_score_adj) land in attacker files or on the host. The mount must be
    refused (or land inside the rootfs) and the host folder stays empty. Shown by hand: with
    the strict check (_check_strict in capsa.runtime.apply.rootfs._attach) skipped, the mount
    followed the symlink (inside the rootfs) and the container started: the test failed."""
    decoy = tmp_path / "decoy"
    decoy.mkdir()

    def mutate(spec):
        spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    bundle = rt.bundle(["true"], mutate=mutate)
    rootfs = os.path.join(bundle, "rootfs")
    os.rmdir(os.path.join(rootfs, target.lstrip("/")))
    os.symlink(str(decoy), os.path.join(rootfs, target.lstrip("/")))
    rt.ids.append("symproc")
    result = rt("run", "--bundle", bundle, "symproc")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "real directory" in result.stderr
    assert os.listdir(decoy) == []


def test_proc_swapped_for_symlink_after_it_was_mounted(rt):
    """CVE-2019-19921 / CVE-2025-52881 (the race): /proc is a real directory when the runtime
    mounts procfs on it, and is then swapped for a symlink to a fake procfs the attacker
    controls (what a second container sharing a volume does by racing). A createRuntime hook
    makes the swap deterministic: it runs while the init waits between its mounts and
    pivot_root, and only touches files inside the rootfs. The runtime's procfs write (the
    sysctl) must never reach the attacker's file: capsa writes sysctls through the host's own
    procfs (checked PROC_SUPER_MAGIC) before pivot_root, never through the container's /proc.
    Shown by hand (when sysctls were written through the container's /proc after pivot_root):
    without the PROC_SUPER_MAGIC check, "1" was written into the image's
    /fakeproc/sys/net/ipv4/ip_forward and the run succeeded."""
    bundle_dir = rt.tmp / "bundle"
    rootfs = bundle_dir / "rootfs"

    def mutate(spec):
        _writable(spec)  # else the read-only root alone would stop the write
        spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
        spec["hooks"] = {"createRuntime": [_swap_proc_hook(rootfs)]}
    bundle = rt.bundle(["true"], mutate=mutate)
    assert bundle == str(bundle_dir)
    fake = rootfs / "fakeproc" / "sys" / "net" / "ipv4"
    fake.mkdir(parents=True)
    (fake / "ip_forward").write_text("0\n")
    result = rt.run_bundle(bundle, "procswap")
    assert (fake / "ip_forward").read_text() == "0\n"
    assert os.path.islink(rootfs / "proc"), "the hook did not swap /proc: the test proves nothing"
    assert "Traceback" not in result.stderr


def test_cve_2021_30465_mount_destination_symlink_out_of_rootfs(rt, tmp_path):
    """CVE-2021-30465: a mount destination that is (or becomes) a symlink leading out of the
    rootfs must not mount over a host path: destinations resolve inside the root. The host cannot
    see the container's mounts, so a createRuntime hook records the init's mountinfo before
    pivot_root. Shown by hand: with RESOLVE_IN_ROOT taken out of capsa.runtime.apply.paths.IN_ROOT,
    the bind was attached on the host folder in the container's namespace (the mountinfo
    assertion failed) and the container's cat found nothing."""
    host_target = tmp_path / "host-target"
    host_target.mkdir()
    (host_target / "keep").write_text("host file")
    source = tmp_path / "source"
    source.mkdir()
    (source / "marker").write_text("from bind")

    mountinfo = tmp_path / "mountinfo"

    def mutate(spec):
        _writable(spec)
        spec["mounts"].append({"destination": "/escape", "type": "bind", "source": str(source),
                               "options": ["bind"]})
        spec["hooks"] = {"createRuntime": [_mountinfo_hook(mountinfo)]}
    bundle = rt.bundle(["cat", "/escape/marker"], mutate=mutate)
    os.symlink("../../../../../../../../.." + str(host_target),
               os.path.join(bundle, "rootfs", "escape"))
    result = rt.run_bundle(bundle, "sym30465")
    assert sorted(os.listdir(host_target)) == ["keep"]
    assert (host_target / "keep").read_text() == "host file"
    # the bind landed where the symlink leads inside the rootfs, never on the host folder
    assert str(host_target) not in _mount_points(mountinfo)
    assert (result.returncode, result.stdout) == (0, "from bind"), result.stderr


def test_cve_2024_21626_cwd_through_leaked_fd(rt):
    """CVE-2024-21626: process.cwd = /proc/self/fd/N reaches a host directory through an fd the
    runtime leaked. capsa marks every fd above stdio close-on-exec and proves the cwd is inside
    the root after chdir: the container either fails to start or sees only its own tree. The
    attack climbs from the leaked directory to the host's / and reads /etc/debian_version, which
    the busybox rootfs lacks. Shown by hand: with the getcwd check in
    capsa.runtime.apply.process.apply_cwd skipped (and check_interpreters no longer calling
    getcwd, which fails outside the root), fd 4 (the init's O_PATH fd on the state folder) was
    accepted as the cwd and the container printed the host's Debian version."""
    for fd in range(3, 12):
        bundle = rt.bundle(["sh", "-c", "cd ../../../../../../../../..; cat etc/debian_version"],
                           name="b%d" % fd,
                           mutate=lambda s, fd=fd: s["process"].update(cwd="/proc/self/fd/%d" % fd))
        result = rt.run_bundle(bundle, "fd%d" % fd)
        assert "Traceback" not in result.stderr
        if result.returncode == 0:
            pytest.fail("cwd /proc/self/fd/%d was accepted: %r" % (fd, result.stdout))
        assert "process.cwd" in result.stderr


def test_cve_2024_21626_no_fds_leak_into_container(rt, tmp_path):
    """CVE-2024-21626 (second half): the container's process holds only stdio, even when the
    runtime itself was started holding a host directory fd (a caller that leaks one, as the
    runc bug leaked its own /sys/fs/cgroup fd): through it the container would reach the host's
    tree. The runtime's own fds are close-on-exec already (Python opens them so), so the
    inherited fd is what apply_fd_sweep is for. Shown by hand: with the close_range call in
    capsa.runtime.apply.process.apply_fd_sweep removed, the inherited fd reached the container
    and the test failed."""
    leaked = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    os.set_inheritable(leaked, True)
    bundle = rt.bundle(["sh", "-c", "ls -1 /proc/self/fd; ls /proc/self/fd/%d/ 2>&1" % leaked])
    rt.ids.append("fds")
    try:
        result = subprocess.run(rt.cmd + ["--root", str(rt.root), "run", "--bundle", bundle,
                                          "fds"], stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, pass_fds=(leaked,), timeout=60)
    finally:
        os.close(leaked)
    assert result.returncode != 0 or "state" not in result.stdout, result.stdout
    # the first ls itself holds one more: the directory it lists
    fds = [line for line in result.stdout.split() if line.isdigit()]
    assert sorted(fds, key=int) == ["0", "1", "2", "3"], result.stdout + result.stderr


def test_cve_2024_45310_mkdir_through_symlink_stays_inside(rt, tmp_path):
    """CVE-2024-45310: a volume's mount destination whose parents the runtime must create goes
    through a symlink the image planted; the runtime's mkdir must not create on the host.
    Shown by hand: with RESOLVE_IN_ROOT taken out of capsa.runtime.apply.paths.IN_ROOT, the
    runtime created made/ in the host folder and the test failed."""
    host = tmp_path / "host-side"
    host.mkdir()
    source = tmp_path / "vol"
    source.mkdir()

    def mutate(spec):
        _writable(spec)
        spec["mounts"].append({"destination": "/link/made/here", "type": "bind",
                               "source": str(source), "options": ["bind"]})
    bundle = rt.bundle(["true"], mutate=mutate)
    os.symlink(str(host), os.path.join(bundle, "rootfs", "link"))
    rt.run_bundle(bundle, "mk45310")
    assert os.listdir(host) == []


@pytest.mark.parametrize("when", ["in-image", "raced"])
def test_cve_2025_31133_dev_null_symlink_before_masking(rt, tmp_path, when):
    """CVE-2025-31133: with no /dev mount in the spec, the image's /dev/null is a symlink to a
    host-global procfs file. Masking binds "/dev/null" over masked paths: if the runtime
    followed the symlink, the masked /proc/keys would become that file, writable from the
    container (the published exploit used core_pattern; this test uses the harmless, equally
    global fs.lease-break-time and puts it back if it changed). "in-image": the link is in the
    image; "raced": the runtime made a real /dev/null and the link replaces it afterwards, as an
    attacker racing on a shared /dev would (a createRuntime hook does it, deterministically,
    while the init waits before pivot_root and masking). Either the runtime refuses, or the
    container has a real null device and the write through the masked path goes nowhere: the
    host value is unchanged. Shown by hand: with the char 1:3 check in
    capsa.runtime.apply.rootfs.open_dev_null skipped, "raced" wrote 7 into the host's
    fs.lease-break-time and failed; "in-image" failed the same way only when, in addition, the
    device step (rootfs._step_device) left an existing /dev/null of the image in place."""
    target = "/proc/sys/fs/lease-break-time"

    null = rt.tmp / "bundle" / "rootfs" / "dev" / "null"
    swap = "rm -f %s && ln -s %s %s" % (null, target, null)

    def mutate(spec):
        _writable(spec)
        _without_dev_mounts(spec)
        if when == "raced":
            spec["hooks"] = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", swap]}]}
    bundle = rt.bundle(["sh", "-c", "stat -c '%F %t:%T' /dev/null; "
                                    "echo 7 > /proc/keys; echo wrote"], mutate=mutate)
    assert os.path.exists("/proc/keys"), "the masked file the attack goes through"
    if os.path.lexists(null):
        os.unlink(null)
    os.symlink(target, null)
    with _host_value_kept(target):
        result = rt.run_bundle(bundle, "null31133")
    assert "Traceback" not in result.stderr
    if result.returncode == 0:
        assert result.stdout.splitlines()[0] == "character special file 1:3"
    else:
        assert "/dev/null" in result.stderr


def test_cve_2022_29162_no_inheritable_or_ambient_capabilities(rt):
    """CVE-2022-29162: processes must not get inheritable capabilities (which would survive
    into a file-capability binary) unless the spec asks: CapInh and CapAmb are all zero, even
    when the runtime itself was started holding inheritable and ambient capabilities (setpriv
    gives it CAP_SYS_ADMIN and CAP_NET_ADMIN in both). Shown by hand: with
    capsa.runtime.apply.security.apply_after_identity passing the runtime's own inheritable set
    through (inheritable = held_inheritable), CapInh was 0000000000201000 and the test failed."""
    bundle = rt.bundle(["grep", "-E", "^Cap(Inh|Amb)", "/proc/self/status"])
    rt.ids.append("inh")
    result = subprocess.run(["/usr/bin/setpriv", "--inh-caps", "+sys_admin,+net_admin",
                             "--ambient-caps", "+sys_admin,+net_admin", "--"] + rt.cmd +
                            ["--root", str(rt.root), "run", "--bundle", bundle, "inh"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    values = dict(line.split(":\t") for line in result.stdout.splitlines())
    assert values == {"CapInh": "0000000000000000", "CapAmb": "0000000000000000"}


def test_cve_2023_25809_cgroup_tree_read_only(rt):
    """CVE-2023-25809: /sys/fs/cgroup must be read-only in the container when the spec mounts
    it read-only: no mkdir of a child cgroup in any hierarchy (each is the container's own
    cgroup on the host), no write to release-agent-style files, no mkdir in the top folder.
    Whatever got through is undone at once. Shown by hand: with MOUNT_ATTR_RDONLY dropped from
    the cgroup binds and the final setattr step (capsa.runtime.mounts.build_cgroup_steps), the
    container created child cgroups and wrote notify_on_release on the host: the test failed."""
    script = ("for d in /sys/fs/cgroup/*/; do "
              "if mkdir $d/evil 2>/dev/null; then echo WROTE $d; rmdir $d/evil; fi; "
              "if [ -e $d/notify_on_release ] && { echo 0 > $d/notify_on_release; } 2>/dev/null; "
              "then echo WROTE $d/notify_on_release; fi; done; "
              "mkdir /sys/fs/cgroup/x 2>&1 && echo WROTE top; ls -d /sys/fs/cgroup/*/ | wc -l; "
              "echo done")
    result = rt.run(["sh", "-c", script], container_id="cg25809")
    assert result.returncode == 0, result.stderr
    assert "WROTE" not in result.stdout and result.stdout.strip().endswith("done"), result.stdout
    assert "Read-only file system" in result.stdout
    assert int(result.stdout.split()[-2]) > 0, "no hierarchy mounted: the test proves nothing"


def _runtime_sys_path():
    """The folders capsa-runtime's interpreter imports from (its own sys.path and the checkout)."""
    from tests.bundles import REPO
    code = "import sys; print(chr(10).join(sys.path))"
    out = subprocess.run([_interpreter(), "-I", "-S", "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return sorted(set(line for line in out.splitlines() if line.startswith("/")) | {REPO})


@pytest.mark.parametrize("terminal", [False, True])
def test_planted_python_module_is_never_imported(rt, terminal):
    """A Python module planted in the image at every path the runtime's interpreter searches,
    and over every capsa module at the checkout's own path, must not run: the runtime imports
    everything before fork and seals imports in the child. The planted modules would write
    /PWNED inside the rootfs. The terminal case goes through the console code (tty), the one
    module a lazy import would most naturally bring in after pivot_root. Shown by hand: with
    tty taken out of launch._PRELOAD and imported lazily in _init_main's terminal branch, and
    _seal_imports() no longer called, the planted capsa/runtime/apply/tty.py ran as root in the
    container and wrote /PWNED (terminal case failed); with the seal kept, the import was
    refused and the run failed with one clear line instead."""
    from tests.bundles import REPO
    bundle = rt.bundle(["true"], mutate=_writable, terminal=terminal)
    rootfs = os.path.join(bundle, "rootfs")
    payload = "open('/PWNED', 'w').write(__name__)\n"
    names = ["sitecustomize", "usercustomize", "fcntl", "select", "termios", "struct", "_signal",
             "encodings/idna", "json/__init__", "capsa/__init__"]
    for top, _, files in os.walk(os.path.join(REPO, "capsa")):
        names.extend(os.path.relpath(os.path.join(top, name), REPO)[:-3] for name in files
                     if name.endswith(".py"))
    for directory in _runtime_sys_path():
        for name in names:
            path = os.path.join(rootfs, directory.lstrip("/"), name + ".py")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as handle:
                handle.write(payload)
    if terminal:
        status, _, stderr = _run_with_console(rt, bundle, "plantedt")
    else:
        result = rt.run_bundle(bundle, "planted")
        status, stderr = result.returncode, result.stderr
    assert not os.path.exists(os.path.join(rootfs, "PWNED"))
    assert status == 0, stderr


@pytest.mark.parametrize("userns", [True, False])
def test_host_device_nodes_unchanged_after_userns_and_exec_user(rt, userns):
    """Host device nodes must keep owner and mode after containers (with and without a user
    namespace) and `exec --user` (a widely used runtime once chowned the host's /dev/null in
    exactly this case: it chowned the exec'd process's stdio to the user). The exec's stdin is
    a null device node of the test's own, so a runtime that chowns stdio shows here without the
    host's /dev/null being touched. Shown by hand: with capsa.runtime.execution._process
    chowning fds 0-2 to the exec user before the uid switch (runc's fixStdioPermissions without
    its /dev/null exception), the node became 1000:1000 in the case without a user namespace
    and the test failed (inside a user namespace the kernel refuses that chown: EPERM)."""
    nodes = ["/dev/null", "/dev/zero", "/dev/tty", "/dev/full", "/dev/random", "/dev/urandom"]
    rt.traversable("capsa-devnodes-")
    own = str(rt.tmp / "null")
    os.mknod(own, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(own, 0o666)
    nodes.append(own)
    before = dict((node, (os.stat(node).st_uid, os.stat(node).st_gid, os.stat(node).st_mode))
                  for node in nodes)
    bundle = rt.bundle(["sleep", "30"],
                       mutate=(lambda spec: add_user_namespace(spec, 300000)) if userns else None)
    rt.ids.append("devs")
    assert rt("run", "-d", "--bundle", bundle, "devs").returncode == 0
    with open(own, "rb") as stdin:
        result = subprocess.run(rt.cmd + ["--root", str(rt.root), "exec", "--user",
                                          "1000:1000", "devs", "sh", "-c",
                                          "echo x > /dev/null; head -c 1 /dev/zero >/dev/null;"
                                          " echo ok"],
                                stdin=stdin, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
    after = dict((node, (os.stat(node).st_uid, os.stat(node).st_gid, os.stat(node).st_mode))
                 for node in nodes)
    rt("delete", "--force", "devs")
    assert after == before


# ---------------------------------------------------------------- helpers for the tests below

def _mountinfo_hook(out):
    """A createRuntime hook (run on the host while the init waits, its mounts made and before
    pivot_root) that copies the init's mountinfo to `out`: where every mount really landed."""
    import sys
    code = ("import json, shutil, sys; "
            "shutil.copy('/proc/%%d/mountinfo' %% json.load(sys.stdin)['pid'], %r)" % str(out))
    return {"path": sys.executable, "args": [sys.executable, "-I", "-c", code]}


def _mount_points(mountinfo):
    with open(mountinfo) as handle:
        return [line.split(" ")[4] for line in handle]


def _without_dev_mounts(spec):
    """The image's own /dev is used (no tmpfs over it), as with runc when the spec has none."""
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] not in ("/dev", "/dev/shm",
                                                                            "/dev/mqueue")]


def _run_with_console(rt, bundle, container_id, timeout=20):
    """create with --console-socket, receive the pty master, start, and read the terminal until
    the process ends. -> (create exit status, terminal output, create's stderr)."""
    import array
    import select
    import socket
    import time
    path = str(rt.tmp / ("%s.sock" % container_id))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    err_path = rt.tmp / ("%s.create-err" % container_id)
    with open(err_path, "w") as err:
        proc = subprocess.Popen(rt.cmd + ["--root", str(rt.root), "create", "--bundle", bundle,
                                          "--console-socket", path, container_id],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    rt.ids.append(container_id)
    master = None
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if select.select([server], [], [], 0.1)[0]:
                conn, _ = server.accept()
                fds = array.array("i")
                _, ancdata, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(4))
                for _, _, data in ancdata:
                    fds.frombytes(data[:4])
                conn.close()
                master = fds[0]
                break
            if proc.poll() is not None:
                break
        status = proc.wait(timeout=timeout)
        if status != 0 or master is None:
            return status, "", err_path.read_text()
        started = rt("start", container_id)
        assert started.returncode == 0, started.stderr
        output = b""
        while time.time() < deadline:
            if not select.select([master], [], [], 0.2)[0]:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every slave fd is closed, the process has ended
                break
            if not chunk:
                break
            output += chunk
        return status, output.decode(errors="replace").replace("\r\n", "\n"), err_path.read_text()
    finally:
        server.close()
        if master is not None:
            os.close(master)


# ---------------------------------------------------------------- CVE-2025-52565, /dev symlinks

@pytest.mark.parametrize("target", ["host", "procfs"])
def test_cve_2025_52565_dev_console_symlink(rt, tmp_path, target):
    """CVE-2025-52565: the image's /dev/console is a symlink (to a host-side path, or to a procfs
    file), the process has a terminal and a --console-socket. The runtime binds the pty slave
    onto /dev/console: that bind must stay inside the container (never on the host file, never
    over procfs), and the host file must stay untouched. Either the runtime refuses with one
    clear line, or the container's /dev/console is its pty and the target is what it was.
    "host" holds because the bind is made after pivot_root, when no host path is reachable at
    all: shown by hand, taking RESOLVE_IN_ROOT out of capsa.runtime.apply.paths.IN_ROOT did not
    change it (the ordering in launch._init_main is the protection). "procfs" was a real hole,
    found by this test: the pty was bound over the container's /proc/sys/kernel/core_pattern
    through the image's symlink; apply_console now unlinks whatever is at /dev/console and binds
    onto a fresh file opened O_NOFOLLOW."""
    host_file = tmp_path / "host-file"
    host_file.write_text("host file\n")
    link = str(host_file) if target == "host" else "/proc/sys/kernel/core_pattern"
    bundle = rt.bundle(["sh", "-c", "stat -L -c 'console %F %t' /dev/console; "
                                    "stat -f -c 'target %T' " + link + "; "
                                    "echo pwned > /dev/console; echo end"],
                       terminal=True, mutate=_without_dev_mounts)
    console = os.path.join(bundle, "rootfs", "dev", "console")
    if os.path.lexists(console):
        os.unlink(console)
    os.symlink(link, console)
    with open("/proc/sys/kernel/core_pattern") as handle:
        pattern = handle.read()
    status, output, stderr = _run_with_console(rt, bundle, "con52565" + target[0])
    assert host_file.read_text() == "host file\n"
    with open("/proc/sys/kernel/core_pattern") as handle:
        assert handle.read() == pattern
    assert "Traceback" not in stderr
    if status != 0:
        assert "/dev/console" in stderr and len(stderr.strip().splitlines()) == 1, stderr
        return
    lines = output.splitlines()
    assert "console character special file 88" in lines, output
    if target == "procfs":
        assert "target proc" in lines, output
    assert lines[-1] == "end", output


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_dev_symlink_in_image(rt, tmp_path, where):
    """The image's /dev is a symlink, to a folder of its own (/somewhere) or out of the rootfs
    (../../..): the runtime's /dev tmpfs, device nodes and links must land inside the rootfs
    (or the run is refused with one clear line); no mount of the container lands outside its
    rootfs and nothing is created on the host. A createRuntime hook records the init's
    mountinfo before pivot_root. Shown by hand: with RESOLVE_IN_ROOT taken out of
    capsa.runtime.apply.paths.IN_ROOT, "outside" mounted the /dev tmpfs, /dev/pts and
    /dev/mqueue on the host folder in the container's namespace and the test failed; "inside"
    checks that such an image still gets a working /dev."""
    host = tmp_path / "host-dev"
    host.mkdir()
    mountinfo = tmp_path / "mountinfo"

    def mutate(spec):
        spec["hooks"] = {"createRuntime": [_mountinfo_hook(mountinfo)]}
    bundle = rt.bundle(["sh", "-c", "stat -c '%F %t:%T' /dev/null; echo x > /dev/null; "
                                    "ls /dev/pts/ptmx; echo end"], mutate=mutate)
    rootfs = os.path.join(bundle, "rootfs")
    shutil_rmtree_dev(rootfs)
    if where == "inside":
        os.symlink("/somewhere", os.path.join(rootfs, "dev"))
    else:
        os.symlink("../../../../../../../../.." + str(host), os.path.join(rootfs, "dev"))
    result = rt.run_bundle(bundle, "devlink" + where[0])
    assert os.listdir(host) == []
    assert "Traceback" not in result.stderr
    if mountinfo.exists():
        outside = [point for point in _mount_points(mountinfo)
                   if point.startswith(str(tmp_path)) and not point.startswith(rootfs + "/")
                   and point != rootfs]
        assert outside == []
    if result.returncode != 0:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        return
    assert result.stdout.splitlines() == ["character special file 1:3", "/dev/pts/ptmx", "end"]


def shutil_rmtree_dev(rootfs):
    import shutil
    shutil.rmtree(os.path.join(rootfs, "dev"))


def test_cve_2025_52565_console_through_raced_proc(rt):
    """CVE-2025-52565 (the procfs half): the runtime names the pty slave it binds onto
    /dev/console; if it read that name through a /proc the attacker swapped for a fake one
    (raced as in test_proc_swapped_for_symlink_after_it_was_mounted, no sysctl to notice it),
    the fake /proc/self/fd/N could name a host-global procfs file, bound onto /dev/console and
    written by the container. The host value must stay (the harmless fs.lease-break-time
    stands in for core_pattern), and /dev/console is the pty or the run is refused. capsa now
    binds the slave from its own fd (open_tree with AT_EMPTY_PATH in apply_console): no name is
    looked up at all. Shown by hand (before that fix): with capsa.runtime.apply.tty naming the
    slave by readlink of /proc/self/fd/N (runc's way before its fix), /dev/console became the
    host's fs.lease-break-time, the container wrote 7 into it and the test failed."""
    target = "/proc/sys/fs/lease-break-time"
    bundle_dir = rt.tmp / "bundle"
    rootfs = bundle_dir / "rootfs"

    def mutate(spec):
        _writable(spec)
        spec["linux"]["readonlyPaths"] = []
        spec["hooks"] = {"createRuntime": [_swap_proc_hook(rootfs)]}
    bundle = rt.bundle(["sh", "-c", "stat -L -c 'console %F %t' /dev/console; "
                                    "echo 7 > /dev/console; echo end"],
                       terminal=True, mutate=mutate)
    assert bundle == str(bundle_dir)
    for self_dir in ("self", "thread-self"):
        fds = rootfs / "fakeproc" / self_dir / "fd"
        fds.mkdir(parents=True)
        for fd in range(64):
            os.symlink("/proc.real" + target[len("/proc"):], str(fds / str(fd)))
    with _host_value_kept(target):
        status, output, stderr = _run_with_console(rt, bundle, "con52565r")
    assert os.path.islink(rootfs / "proc"), "the hook did not swap /proc: the test proves nothing"
    assert "Traceback" not in stderr
    if status == 0:
        assert output.splitlines()[0] == "console character special file 88", output
    else:
        assert len(stderr.strip().splitlines()) == 1, stderr
