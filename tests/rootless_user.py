"""Test helpers: a throwaway unprivileged user for the rootless tests, and running as it.

Owns the user `capsa-rootless` (made by the fixture, removed after) and its 0755 work folder.
Used by tests/integration/test_rootless.py and test_engine_rootless.py; never by capsa.
"""
import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

USER = "capsa-rootless"


def _userns_missing():
    if os.geteuid() != 0:
        return "needs root to create the test user"
    try:
        with open("/proc/sys/user/max_user_namespaces") as handle:
            if int(handle.read()) == 0:
                return "user namespaces are disabled (user.max_user_namespaces = 0)"
    except OSError:
        return "no /proc/sys/user/max_user_namespaces: kernel without user namespaces"
    try:
        with open("/proc/sys/kernel/unprivileged_userns_clone") as handle:
            if handle.read().strip() == "0":
                return "unprivileged user namespaces are off (kernel.unprivileged_userns_clone)"
    except OSError:
        pass
    if not shutil.which("useradd"):
        return "no useradd on this host"
    return None


def skip_without_userns():
    """The module mark of a rootless test file."""
    reason = _userns_missing()
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def make_user(name=USER, system=False):
    """A throwaway unprivileged user, and a 0755 work folder it owns (its HOME in run_as).
    A normal user gets Debian's default /etc/subuid and /etc/subgid ranges; a system user
    (system=True) gets none."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin"]
                       + (["--system"] if system else []) + [name], check=True)
    entry = pwd.getpwnam(name)
    work = tempfile.mkdtemp(prefix="capsa-rootless-")
    os.chmod(work, 0o755)
    os.chown(work, entry.pw_uid, entry.pw_gid)
    try:
        yield {"uid": entry.pw_uid, "gid": entry.pw_gid, "work": work, "name": name}
    finally:
        # the user's rootless engine leaves its pause process (and conmon's) behind, as
        # podman's does; they are this test user's, made by the tests
        subprocess.run(["pkill", "-KILL", "-U", str(entry.pw_uid)], check=False)
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["userdel", name], check=False)


def run_as(user, argv, timeout=60, env=None):
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                              timeout=timeout, cwd=user["work"], user=user["uid"],
                              group=user["gid"], extra_groups=[],
                              env=dict({"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                        "HOME": user["work"], "XDG_RUNTIME_DIR": user["work"]},
                                       **(env or {})))
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, proc.returncode, out.read().decode(),
                                           err.read().decode())




def is_gone(pid):
    """Gone, or a zombie waiting for whichever process adopted it."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
