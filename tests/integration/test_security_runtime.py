"""The security plan through the real `capsa-runtime run` (root): a hardened container seen from
inside, a NOTIFY agent answering a syscall of a container, and bad security input that fails
with one line and leaves nothing behind (the `rt` fixture checks state, cgroups and mounts).
"""
import errno
import json
import os
import socket
import struct
import threading

import pytest

from capsa.runtime.apply import security
from capsa.runtime.security import defaults
from capsa.syscalls import seccomp as libseccomp
from tests.integration.test_runtime import rt  # noqa: F401 (the fixture, with its leftover checks)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="host facility missing: root (namespaces)"),
    pytest.mark.skipif(libseccomp.read_libseccomp_version() is None,
                       reason="host facility missing: libseccomp.so.2"),
]
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101


def _hardened(spec):
    spec["process"]["capabilities"] = defaults.build_hardened_process_caps()
    spec["linux"]["seccomp"] = defaults.build_hardened_seccomp()
    spec["linux"]["maskedPaths"] = list(defaults.HARDENED_MASKED_PATHS)
    spec["linux"]["readonlyPaths"] = list(defaults.HARDENED_READONLY_PATHS)


def test_hardened_container_seen_from_inside(rt):
    result = rt.run(["sh", "-c", "grep -E '^(Cap|Seccomp|NoNewPrivs)' /proc/self/status; "
                     "unshare -u true 2>/dev/null || echo unshare-refused"], mutate=_hardened)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(":\t") for line in result.stdout.splitlines() if ":\t" in line)
    expected = security.build_caps_plan(defaults.build_hardened_process_caps(),
                                        security.read_security_facts())["permitted"]
    assert int(lines["CapBnd"], 16) == int(lines["CapEff"], 16) == expected
    assert int(lines["CapInh"], 16) == int(lines["CapAmb"], 16) == 0
    assert lines["Seccomp"] == "2"
    assert "unshare-refused" in result.stdout


def test_notify_agent_answers_a_container_syscall(rt, tmp_path):
    path = str(tmp_path / "agent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(30)
    seen = {}

    def agent():
        import fcntl
        import select
        try:
            conn, _ = server.accept()
            data, ancillary, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(4))
            conn.close()
            seen["message"] = json.loads(data)
            fd = struct.unpack("i", ancillary[0][2][:4])[0]
            try:
                if not select.select([fd], [], [], 30)[0]:
                    return
                request = bytearray(80)
                fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, request)
                ident = struct.unpack_from("<Q", request, 0)[0]
                fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND,
                            bytearray(struct.pack("<QqiI", ident, 0, -errno.EXDEV, 0)))
                seen["answered"] = True
            finally:
                os.close(fd)
        except OSError as err:
            seen["error"] = err

    def notify(spec):
        spec["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW", "listenerPath": path, "listenerMetadata": "m=1",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]}
    thread = threading.Thread(target=agent)
    thread.start()
    try:
        result = rt.run(["sh", "-c", "mkdir /tmp/made; echo rc=$?"], mutate=notify)
    finally:
        thread.join(60)
        server.close()
    assert seen.get("answered"), (seen, result.stderr)
    assert seen["message"]["metadata"] == "m=1" and seen["message"]["fds"] == ["seccompFd"]
    assert seen["message"]["state"]["id"] == "c-bundle"
    assert os.strerror(errno.EXDEV) in result.stderr
    assert "rc=1" in result.stdout


def _unknown_arch():
    known = set(libseccomp.read_known_arches(["loongarch64", "m68k"]))
    for name, lib in (("SCMP_ARCH_LOONGARCH64", "loongarch64"), ("SCMP_ARCH_M68K", "m68k")):
        if lib not in known:
            return name
    pytest.skip("host facility missing: a libseccomp that lacks some architecture")


@pytest.mark.parametrize("case", ["capability", "apparmor", "arch"])
def test_bad_security_input_is_one_line_and_leaves_nothing(rt, case):
    if case == "apparmor" and "apparmor" in security.read_active_lsms():
        pytest.skip("host facility missing: a host without AppArmor")
    arch = _unknown_arch() if case == "arch" else None

    def bad(spec):
        if case == "capability":
            spec["process"]["capabilities"]["bounding"].append("CAP_TELEPORT")
        elif case == "apparmor":
            spec["process"]["apparmorProfile"] = "capsa-test"
        else:
            # refused only by libseccomp, after the state folder and cgroup exist
            spec["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                                        "architectures": [arch]}
    result = rt.run(["true"], mutate=bad)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    field = {"capability": "process.capabilities.bounding[",
             "apparmor": "process.apparmorProfile", "arch": "linux.seccomp.architectures"}[case]
    assert field in lines[0]
