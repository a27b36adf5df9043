"""The escape regression suite: one test per class of runc's published container escapes, each
set up the way a hostile image or bundle would, run through the real capsa-runtime command line,
asserting that the attack fails and the host is untouched.

Each docstring names the CVE class and the protection it checks; "shown by hand" records that
the test failed when that protection was removed from the code.
"""
import hashlib
import json
import os
import stat
import subprocess

import pytest

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
    import shutil
    import tempfile
    rt.tmp = type(rt.tmp)(tempfile.mkdtemp(prefix="capsa-dumpable-"))
    os.chmod(rt.tmp, 0o755)

    def mutate(spec):
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 210000, "size": 65536}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 210000, "size": 65536}]
    try:
        bundle = rt.bundle(["true"], mutate=mutate)
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
        rt("delete", "--force", "dump")
    finally:
        shutil.rmtree(rt.tmp, ignore_errors=True)
    assert os.waitstatus_to_exitcode(code) == 0


@pytest.mark.parametrize("target", ["/proc", "/sys"])
def test_proc_or_sys_replaced_by_symlink(rt, tmp_path, target):
    """CVE-2019-16884 / CVE-2019-19921 / CVE-2023-27561 / CVE-2025-52881 class: the image makes
    /proc (or /sys) a symlink to a folder it controls, so that the runtime's later procfs writes
    (labels, sysctls, oom_score_adj) land in attacker files or on the host. The mount must be
    refused (or land inside the rootfs) and the host folder stays empty."""
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
    assert os.listdir(decoy) == []


def test_cve_2021_30465_mount_destination_symlink_out_of_rootfs(rt, tmp_path):
    """CVE-2021-30465: a mount destination that is (or becomes) a symlink leading out of the
    rootfs must not mount over a host path: destinations resolve inside the root."""
    host_target = tmp_path / "host-target"
    host_target.mkdir()
    (host_target / "keep").write_text("host file")
    source = tmp_path / "source"
    source.mkdir()
    (source / "marker").write_text("from bind")

    def mutate(spec):
        _writable(spec)
        spec["mounts"].append({"destination": "/escape", "type": "bind", "source": str(source),
                               "options": ["bind"]})
    bundle = rt.bundle(["cat", "/escape/marker"], mutate=mutate)
    os.symlink("../../../../../../../../.." + str(host_target),
               os.path.join(bundle, "rootfs", "escape"))
    result = rt.run_bundle(bundle, "sym30465")
    assert sorted(os.listdir(host_target)) == ["keep"]
    assert (host_target / "keep").read_text() == "host file"
    if result.returncode == 0:
        assert result.stdout == "from bind"


def test_cve_2024_21626_cwd_through_leaked_fd(rt):
    """CVE-2024-21626: process.cwd = /proc/self/fd/N reaches a host directory through an fd the
    runtime leaked. capsa marks every fd above stdio close-on-exec and proves the cwd is inside
    the root after chdir: the container either fails to start or sees only its own tree."""
    for fd in range(3, 12):
        bundle = rt.bundle(["sh", "-c", "cd ../../..; ls /; cat etc/hostname 2>/dev/null"],
                           name="b%d" % fd,
                           mutate=lambda s, fd=fd: s["process"].update(cwd="/proc/self/fd/%d" % fd))
        result = rt.run_bundle(bundle, "fd%d" % fd)
        assert "Traceback" not in result.stderr
        if result.returncode == 0:
            pytest.fail("cwd /proc/self/fd/%d was accepted: %r" % (fd, result.stdout))
        assert "process.cwd" in result.stderr


def test_cve_2024_21626_no_fds_leak_into_container(rt):
    """CVE-2024-21626 (second half): the container's process holds only stdio."""
    result = rt.run(["ls", "-1", "/proc/self/fd"], container_id="fds")
    assert result.returncode == 0, result.stderr
    # ls itself holds one more: the directory it lists
    assert sorted(result.stdout.split(), key=int) == ["0", "1", "2", "3"]


def test_cve_2024_45310_mkdir_through_symlink_stays_inside(rt, tmp_path):
    """CVE-2024-45310: a volume's mount destination whose parents the runtime must create goes
    through a symlink the image planted; the runtime's mkdir must not create on the host."""
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


def test_cve_2025_31133_dev_null_symlink_before_masking(rt, tmp_path):
    """CVE-2025-31133: with no /dev mount in the spec, the image's /dev/null is a symlink to a
    host-sensitive procfs file. Masking binds "/dev/null" over masked paths: if the runtime
    followed the symlink, the masked /proc/kcore would become the host's core_pattern, writable
    from the container. Either the runtime refuses, or it replaced the link with a real null
    device and the write through the masked path goes nowhere: the host file is unchanged."""
    def mutate(spec):
        _writable(spec)
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] not in ("/dev", "/dev/pts",
                                                                                "/dev/shm",
                                                                                "/dev/mqueue")]
    bundle = rt.bundle(["sh", "-c", "stat -c '%F %t:%T' /dev/null; "
                                    "echo '|/bin/pwned' > /proc/kcore; echo wrote"],
                       mutate=mutate)
    dev = os.path.join(bundle, "rootfs", "dev")
    os.symlink("/proc/sys/kernel/core_pattern", os.path.join(dev, "null"))
    with open("/proc/sys/kernel/core_pattern") as handle:
        before = handle.read()
    result = rt.run_bundle(bundle, "null31133")
    with open("/proc/sys/kernel/core_pattern") as handle:
        assert handle.read() == before
    assert "Traceback" not in result.stderr
    if result.returncode == 0:
        assert result.stdout.splitlines()[0] == "character special file 1:3"


def test_cve_2022_29162_no_inheritable_or_ambient_capabilities(rt):
    """CVE-2022-29162: processes must not get inheritable capabilities (which would survive
    into a file-capability binary) unless the spec asks: CapInh and CapAmb are all zero."""
    result = rt.run(["grep", "-E", "^Cap(Inh|Amb)", "/proc/self/status"], container_id="inh")
    assert result.returncode == 0, result.stderr
    values = dict(line.split(":\t") for line in result.stdout.splitlines())
    assert values == {"CapInh": "0000000000000000", "CapAmb": "0000000000000000"}


def test_cve_2023_25809_cgroup_tree_read_only(rt):
    """CVE-2023-25809: /sys/fs/cgroup must be read-only in the container when the spec mounts
    it read-only: no write to release_agent-style files, no mkdir."""
    result = rt.run(["sh", "-c", "mkdir /sys/fs/cgroup/x 2>&1; "
                                 "for d in /sys/fs/cgroup/*; do touch $d/evil 2>/dev/null && "
                                 "echo WROTE $d; done; echo done"], container_id="cg25809")
    assert result.returncode == 0, result.stderr
    assert "WROTE" not in result.stdout and result.stdout.strip().endswith("done")
    assert "Read-only file system" in result.stdout or "Permission denied" in result.stdout


def test_planted_python_module_is_never_imported(rt, tmp_path):
    """A Python module planted in the image at every path the runtime's interpreter searches
    must not run: the runtime imports everything before fork and seals imports in the child.
    The planted modules would write /PWNED inside the rootfs."""
    import sys
    bundle = rt.bundle(["true"], mutate=_writable)
    rootfs = os.path.join(bundle, "rootfs")
    payload = "open('/PWNED', 'w').write(__name__)\n"
    names = ["sitecustomize", "usercustomize", "fcntl", "select", "termios", "_signal_helper",
             "encodings/idna", "json/__init__", "capsa/__init__"]
    for directory in set(sys.path + ["/usr/lib/python3.11", "/usr/lib/python3/dist-packages"]):
        if not directory.startswith("/"):
            continue
        for name in names:
            path = os.path.join(rootfs, directory.lstrip("/"), name + ".py")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as handle:
                handle.write(payload)
    result = rt.run_bundle(bundle, "planted")
    assert result.returncode == 0, result.stderr
    assert not os.path.exists(os.path.join(rootfs, "PWNED"))


def test_host_device_nodes_unchanged_after_userns_and_exec_user(rt):
    """Host device nodes must keep owner and mode after containers with user namespaces and
    `exec --user` (a widely used runtime once chowned the host's /dev/null in exactly this
    case)."""
    nodes = ["/dev/null", "/dev/zero", "/dev/tty", "/dev/full", "/dev/random", "/dev/urandom"]
    before = dict((node, (os.stat(node).st_uid, os.stat(node).st_gid, os.stat(node).st_mode))
                  for node in nodes)
    import shutil
    import tempfile
    rt.tmp = type(rt.tmp)(tempfile.mkdtemp(prefix="capsa-devnodes-"))
    os.chmod(rt.tmp, 0o755)
    try:
        def mutate(spec):
            spec["linux"]["namespaces"].append({"type": "user"})
            spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 300000, "size": 65536}]
            spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 300000, "size": 65536}]
        bundle = rt.bundle(["sleep", "30"], mutate=mutate)
        rt.ids.append("devs")
        assert rt("run", "-d", "--bundle", bundle, "devs").returncode == 0
        result = rt("exec", "--user", "1000:1000", "devs", "sh", "-c",
                    "echo x > /dev/null; cat /dev/zero | head -c 1 >/dev/null; echo ok")
        assert result.stdout.strip() == "ok", result.stderr
        rt("delete", "--force", "devs")
    finally:
        shutil.rmtree(rt.tmp, ignore_errors=True)
    after = dict((node, (os.stat(node).st_uid, os.stat(node).st_gid, os.stat(node).st_mode))
                 for node in nodes)
    assert after == before
